"""Bayesian MAP estimation of random effects (etas), batched over subjects, model-agnostic.

The objective is mapbayr's (Le Louedec et al., CPT Pharmacometrics Syst Pharmacol 10:1208,
2021), for each subject independently:

    OFV(eta) = sum_j term_j(f_j(eta)) + eta' Omega^-1 eta,

with ``term_j`` from :func:`~medtwin.core.estimate.residual.observation_terms` (M3 for
samples below the limit of quantification). The model enters only through ``predict``:
``predict(eta)`` maps etas ``(S, k, q)`` to predictions ``(S, k, m)`` for the ``S`` subjects
(``k`` candidate eta vectors each), so gradients by central differences and line searches cost
one vectorised call each. The optimiser is Newton's method on that objective (Hessian by
differences of the analytic gradient; Gauss-Newton when the Hessian is not positive
definite) with a backtracking line search, within mapbayr's bounds (the 0.1% / 99.9%
quantiles of each eta's prior), restarted from seeded prior draws when it ends on a bound or
stuck at its start. The covariance of the estimate is ``2 x inverse Hessian of OFV`` (Laplace).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.residual import (
    AnyError,
    ElementError,
    ResidualError,
    error_for,
    observation_derivatives,
    observation_terms,
)

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]

_H_GRAD = 1e-5  # central-difference step of the prediction Jacobian
_H_HESS = 1e-4  # central-difference step of the gradient (Hessian)
_ALPHAS = 0.5 ** np.arange(10)


@dataclass(frozen=True)
class ObservedData:
    """Observations of ``S`` subjects padded to ``m`` columns.

    ``y`` (values, NaN where unused), ``mask`` (used for estimation), ``blq`` (below the
    limit of quantification: handled by M3), ``lloq`` (the limit, where ``blq``) and ``kind``
    (which observed quantity each is, indexing a :class:`ResidualErrors`; None: one kind).
    """

    y: np.ndarray
    mask: np.ndarray
    blq: np.ndarray
    lloq: np.ndarray
    kind: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> ObservedData:
        """The observations of the subjects at ``rows``."""
        return ObservedData(self.y[rows], self.mask[rows], self.blq[rows], self.lloq[rows],
                            None if self.kind is None else self.kind[rows])

    def error(self, error: AnyError) -> ResidualError | ElementError:
        """The residual error of each observation, shaped to broadcast as ``(S, 1, m)``."""
        return error_for(error, None if self.kind is None else self.kind[:, None])

    @classmethod
    def build(
        cls,
        y: np.ndarray,
        mask: np.ndarray | None = None,
        blq: np.ndarray | None = None,
        lloq: np.ndarray | float | None = None,
        kind: np.ndarray | None = None,
    ) -> ObservedData:
        """Check and complete the arrays; refuse non-finite or negative used values."""
        y = np.atleast_2d(np.asarray(y, float))
        mask = np.isfinite(y) if mask is None else np.asarray(mask, bool)
        blq = np.zeros_like(mask) if blq is None else np.asarray(blq, bool) & mask
        lloq_a = np.broadcast_to(np.asarray(np.nan if lloq is None else lloq, float),
                                 y.shape).copy()
        quant = mask & ~blq
        bad = quant & ~(np.isfinite(y) & (y >= 0))
        if bad.any():
            s, j = np.argwhere(bad)[0]
            raise ValidationError(f"observation is {y[s, j]} (must be a finite number >= 0)",
                                  where=f"subject {s}, observation {j}")
        bad = blq & ~(np.isfinite(lloq_a) & (lloq_a > 0))
        if bad.any():
            s, j = np.argwhere(bad)[0]
            raise ValidationError("sample is below the limit of quantification but no LLOQ > 0 "
                                  "is known for it", where=f"subject {s}, observation {j}")
        y = np.where(quant, y, 1.0)
        lloq_a = np.where(blq, lloq_a, 1.0)
        kind_a = None if kind is None else np.broadcast_to(np.asarray(kind, np.int64),
                                                           y.shape).copy()
        return cls(y, mask, blq, lloq_a, kind_a)


@dataclass(frozen=True)
class MapResult:
    """Posterior modes ``eta`` ``(S, q)``, objective ``ofv`` ``(S,)``, Laplace covariance
    ``cov`` ``(S, q, q)`` (2 x inverse Hessian of OFV, as mapbayr), ``cov_expected`` (the same
    from the expected-information Hessian, as NONMEM's FOCE-I ``.phi`` ETC), ``converged``
    ``(S,)`` and the number of ``restarts`` used."""

    eta: np.ndarray
    ofv: np.ndarray
    cov: np.ndarray
    cov_expected: np.ndarray
    converged: np.ndarray
    restarts: np.ndarray
    iterations: int


def check_omega(omega: np.ndarray, names: list[str] | tuple[str, ...] | None = None) -> np.ndarray:
    """Return ``omega`` as a symmetric positive-definite float matrix, or a typed error."""
    om = np.atleast_2d(np.asarray(omega, float))
    if om.ndim != 2 or om.shape[0] != om.shape[1]:
        raise ValidationError(f"must be a square matrix, got shape {om.shape}", where="omega")
    if not np.all(np.isfinite(om)):
        raise ValidationError("has non-finite entries", where="omega")
    if not np.allclose(om, om.T, rtol=1e-10, atol=1e-12):
        i, j = np.argwhere(~np.isclose(om, om.T))[0]
        raise ValidationError(f"is not symmetric: [{i},{j}] = {om[i, j]} but [{j},{i}] = "
                              f"{om[j, i]}", where="omega")
    w = np.linalg.eigvalsh(om)
    if w.min() <= 0:
        label = f" over {list(names)}" if names else ""
        raise ValidationError(f"is not positive definite{label} (smallest eigenvalue "
                              f"{w.min():.3g}); check variances > 0 and |correlations| < 1",
                              where="omega")
    return om


def map_objective(
    predict: Predict,
    eta: np.ndarray,
    data: ObservedData,
    omega: np.ndarray,
    error: AnyError,
) -> np.ndarray:
    """OFV of the candidate etas ``(S, k, q)`` -> ``(S, k)``."""
    oi = np.linalg.inv(omega)
    return _ofv(predict(eta), eta, data, oi, error)


def _ofv(f: np.ndarray, eta: np.ndarray, data: ObservedData, oi: np.ndarray,
         error: AnyError) -> np.ndarray:
    terms = observation_terms(data.error(error), data.y[:, None], f, data.mask[:, None],
                              data.blq[:, None], data.lloq[:, None])
    out = terms.sum(axis=-1) + np.einsum("skq,qp,skp->sk", eta, oi, eta)
    return np.where(np.isfinite(out), out, np.inf)


def _derivatives(
    predict: Predict, eta: np.ndarray, data: ObservedData, oi: np.ndarray, error: AnyError
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OFV, gradient, Gauss-Newton Hessian at each of ``eta`` ``(S, k, q)``, and the
    prediction Jacobian ``(S, k, q, m)``."""
    S, k, q = eta.shape
    eye = np.eye(q) * _H_GRAD
    pts = np.concatenate([eta[:, :, None, :], eta[:, :, None, :] + eye,
                          eta[:, :, None, :] - eye], axis=2)  # (S, k, 1+2q, q)
    F = predict(pts.reshape(S, k * (1 + 2 * q), q)).reshape(S, k, 1 + 2 * q, -1)
    f = F[:, :, 0]
    J = (F[:, :, 1 : 1 + q] - F[:, :, 1 + q :]) / (2 * _H_GRAD)  # (S, k, q, m)
    d, w = observation_derivatives(data.error(error), data.y[:, None], f, data.mask[:, None],
                                   data.blq[:, None], data.lloq[:, None])
    ofv = _ofv(f, eta, data, oi, error)
    grad = np.einsum("skqm,skm->skq", J, d) + 2.0 * eta @ oi
    gn = np.einsum("skqm,skm,skpm->skqp", J, w, J) + 2.0 * oi
    return ofv, grad, gn, J


def hessian(
    predict: Predict, eta: np.ndarray, data: ObservedData, omega: np.ndarray,
    error: AnyError,
) -> np.ndarray:
    """Hessian of OFV at ``eta`` ``(S, q)`` -> ``(S, q, q)`` (central differences of the
    analytic gradient)."""
    oi = np.linalg.inv(omega)
    return _newton_parts(predict, eta, data, oi, error)[3]


def _newton_parts(
    predict: Predict, eta: np.ndarray, data: ObservedData, oi: np.ndarray, error: AnyError
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    S, q = eta.shape
    eye = np.eye(q) * _H_HESS
    pts = np.concatenate([eta[:, None], eta[:, None] + eye, eta[:, None] - eye], axis=1)
    ofv, grad, gn, _ = _derivatives(predict, pts, data, oi, error)
    H = (grad[:, 1 : 1 + q] - grad[:, 1 + q :]) / (2 * _H_HESS)
    H = 0.5 * (H + np.swapaxes(H, 1, 2))
    return ofv[:, 0], grad[:, 0], gn[:, 0], H


def _descent_step(g: np.ndarray, H: np.ndarray, gn: np.ndarray) -> np.ndarray:
    """Newton step where ``H`` is positive definite, else the Gauss-Newton step."""
    step = np.empty_like(g)
    for s in range(g.shape[0]):
        try:
            c = np.linalg.cholesky(H[s])
            step[s] = -np.linalg.solve(c.T, np.linalg.solve(c, g[s]))
        except np.linalg.LinAlgError:
            step[s] = -np.linalg.solve(gn[s], g[s])
    return step


def _optimise(
    predict: Predict, eta: np.ndarray, data: ObservedData, oi: np.ndarray, error: AnyError,
    lo: np.ndarray, hi: np.ndarray, max_iter: int, tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Bounded damped Newton for all subjects at once; returns eta, ofv, Hessian, converged."""
    S, q = eta.shape
    eta = np.clip(eta, lo, hi)
    done = np.zeros(S, bool)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - reported
        ofv, g, gn, H = _newton_parts(predict, eta, data, oi, error)
        step = _descent_step(g, H, gn)
        # at a bound, drop the components that push outward
        out = ((eta <= lo) & (step < 0)) | ((eta >= hi) & (step > 0))
        step[out] = 0.0
        cand = np.clip(eta[:, None] + _ALPHAS[None, :, None] * step[:, None], lo, hi)
        ofv_c = _ofv(predict(cand), cand, data, oi, error)
        better = ofv_c < ofv[:, None] - 1e-12 * np.abs(ofv[:, None])
        first = np.where(better.any(axis=1), better.argmax(axis=1), -1)
        moved = np.zeros(S)
        for s in range(S):
            if done[s]:
                continue
            if first[s] >= 0:
                new = cand[s, first[s]]
                moved[s] = np.max(np.abs(new - eta[s]))
                eta[s] = new
            if moved[s] < tol:
                done[s] = True
        if done.all():
            break
    ofv, g, gn, H = _newton_parts(predict, eta, data, oi, error)
    H = np.stack([H, gn], axis=1)  # the exact and the expected (Gauss-Newton) Hessians
    # first-order optimality within the bounds (KKT): zero gradient inside, pointing
    # outward on a bound
    tol_g = 1e-5 * np.maximum(1.0, 1e-2 * np.abs(ofv))[:, None]
    ok = np.where(eta >= hi, g <= tol_g, np.where(eta <= lo, g >= -tol_g, np.abs(g) < tol_g))
    converged = ok.all(axis=1)
    return eta, ofv, H, converged, it


def map_estimate(
    predict: Predict,
    data: ObservedData,
    omega: np.ndarray,
    error: AnyError,
    *,
    eta0: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-9,
    restarts: int = 10,
    seed: int = 0,
    bound_quantile: float = 0.999,
) -> MapResult:
    """MAP etas of every subject, with their Laplace covariance; see the module docstring."""
    omega = check_omega(omega)
    oi = np.linalg.inv(omega)
    S, q = data.y.shape[0], omega.shape[0]
    half = ndtri(bound_quantile) * np.sqrt(np.diag(omega))
    lo, hi = -half, half
    start = np.zeros((S, q)) if eta0 is None else np.array(eta0, float).reshape(S, q)
    eta, ofv, H, conv, it = _optimise(predict, start.copy(), data, oi, error, lo, hi,
                                      max_iter, tol)
    rng = np.random.default_rng(seed)
    n_restart = np.zeros(S, np.int64)
    chol = np.linalg.cholesky(omega)
    for _ in range(restarts):
        at_bound = np.any((eta <= lo + 1e-8) | (eta >= hi - 1e-8), axis=1)
        stuck = np.all(np.abs(eta - start) < 1e-10, axis=1) & np.any(
            data.mask, axis=1) & ~conv
        redo = at_bound | stuck | ~conv
        if not redo.any():
            break
        rows = np.flatnonzero(redo)
        log.info("MAP: restarting %d subject(s) from prior draws", rows.size)
        draw = np.clip(rng.standard_normal((rows.size, q)) @ chol.T, lo, hi)
        sub = data.take(rows)

        def sub_predict(e: np.ndarray, rows: np.ndarray = rows) -> np.ndarray:
            full = np.zeros((S,) + e.shape[1:])
            full[rows] = e
            return predict(full)[rows]

        e2, o2, H2, c2, _ = _optimise(sub_predict, draw, sub, oi, error, lo, hi, max_iter, tol)
        n_restart[rows] += 1
        take = (o2 < ofv[rows] - 1e-9) | (c2 & ~conv[rows] & (o2 <= ofv[rows] + 1e-9))
        idx = rows[take]
        eta[idx], ofv[idx], H[idx], conv[idx] = e2[take], o2[take], H2[take], c2[take]
        start[rows] = draw
        if not at_bound.any() and conv.all():
            break
    cov = np.full((S, 2, q, q), np.nan)
    for s in range(S):
        for j in range(2):
            try:
                cov[s, j] = 2.0 * np.linalg.inv(H[s, j])
            except np.linalg.LinAlgError:
                log.warning("MAP: singular Hessian for subject %d; covariance left NaN", s)
    return MapResult(eta, ofv, cov[:, 0], cov[:, 1], conv, n_restart, it)
