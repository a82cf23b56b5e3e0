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
quantiles of each eta's prior). The covariance of the estimate is ``2 x inverse Hessian of
OFV`` (Laplace).

**Zero predictions.** A prediction of exactly 0 (a sample at the time of an oral dose) gets
the variance of a prediction of 1, as mapbayr's ``h()`` does (``pred[pred == 0] <- 1``; see
:mod:`~medtwin.core.estimate.residual`): a structural zero adds a constant to the OFV and the
estimate is that of the data without the sample. On a log-scale (exponential) error a
quantified sample predicted exactly 0 has no finite objective (mapbayr takes ``log(0)``;
NONMEM stops): it is refused with a typed error naming the sample.

**Resets** follow mapbayr's ``do_optimization()`` (R/mapbayest_optimization.R, mapbayr 0.10.2;
``mapbayest(reset = 50)``: "maximum allowed reset of the optimizer with new initial eta values
if numerical difficulties, or with new bounds (L-BFGS-B) if estimate equal to a bound"). After
each run, a subject is re-run

* with **new initial values** when the run did not converge, or its final OFV equals the OFV
  at its start (R's ``all.equal``: relative difference <= 1.5e-8), or (with more than one eta)
  all its etas have the same absolute value. The new start is, of ``1 + q^2`` draws from the
  prior N(0, Omega) (components outside the bounds set to 0), the one with the lowest OFV,
  rounded to 6 decimals (mapbayr's ``new_ini3()``; seeded by ``seed`` and the reset number);
* with **wider bounds** when an eta ends on a bound: the tail probability of the bound
  quantile is divided by 10 (0.1% -> 0.01% -> ...; mapbayr's ``new_bounds()``), from the same
  start.

The result is that of the last run, as in mapbayr, except when the resets are used up and
the last run still fails a rule: then the run with the lowest OFV is kept (mapbayr keeps the
last). Subjects without observations are not reset (their MAP is the prior mode, eta = 0,
exactly). ``converged`` means first-order optimality (zero gradient) inside the final bounds:
an estimate still on a bound after the allowed resets is reported as not converged.
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
    """Newton step where ``H`` is positive definite, else the Gauss-Newton step (batched
    over subjects: one LAPACK call each, not one per subject)."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(H).all(axis=(1, 2))
        pd_ = np.zeros(len(g), bool)
        if finite.any():
            pd_[finite] = np.linalg.eigvalsh(H[finite]).min(axis=1) > 0
    A = np.where(pd_[:, None, None], H, gn)
    step = np.zeros_like(g)
    try:
        step = -np.linalg.solve(A, g[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a singular system somewhere: solve one by one
        for s in range(len(g)):
            try:
                step[s] = -np.linalg.solve(A[s], g[s])
            except np.linalg.LinAlgError:
                step[s] = 0.0
    return step


def _optimise(
    predict: Predict, eta: np.ndarray, data: ObservedData, oi: np.ndarray, error: AnyError,
    lo: np.ndarray, hi: np.ndarray, max_iter: int, tol: float, *, gauss_newton: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Bounded damped Newton for all subjects at once (bounds ``(q,)`` or ``(S, q)``); returns
    eta, ofv, the exact and expected Hessians, whether first-order optimality holds, and the
    iterations."""
    S, q = eta.shape
    lo, hi = np.broadcast_to(lo, eta.shape), np.broadcast_to(hi, eta.shape)
    eta = np.clip(eta, lo, hi)
    # Gauss-Newton steps first (1 + 2q predictions each, against (1 + 2q)^2 for Newton's
    # Hessian by differences), then Newton to finish: the same optimum, fewer model runs
    # (FOCE-I's inner fits start next to their optimum: Newton alone is quicker there)
    eta, it_gn = (_gauss_newton(predict, eta, data, oi, error, lo, hi, max_iter)
                  if gauss_newton else (eta, 0))
    done = np.zeros(S, bool)
    it = 0
    for it in range(1, max_iter - it_gn + 1):  # noqa: B007 - reported (one budget for both)
        ofv, g, gn, H = _newton_parts(predict, eta, data, oi, error)
        step = _descent_step(g, H, gn)
        cand, better = _line_search(predict, eta, step, ofv, data, oi, error, lo, hi)
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
    converged = ok.all(axis=1) & np.isfinite(ofv)
    return eta, ofv, H, converged, it + it_gn


def _line_search(
    predict: Predict, eta: np.ndarray, step: np.ndarray, ofv: np.ndarray, data: ObservedData,
    oi: np.ndarray, error: AnyError, lo: np.ndarray, hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Backtracking candidates ``eta + alpha step`` within the bounds (a component pushing
    out of a bound it sits on is dropped) and which of them lower each subject's OFV."""
    step = np.where(((eta <= lo) & (step < 0)) | ((eta >= hi) & (step > 0)), 0.0, step)
    cand = np.clip(eta[:, None] + _ALPHAS[None, :, None] * step[:, None],
                   lo[:, None], hi[:, None])
    ofv_c = _ofv(predict(cand), cand, data, oi, error)
    return cand, ofv_c < ofv[:, None] - 1e-12 * np.abs(ofv[:, None])


def _gauss_newton(
    predict: Predict, eta: np.ndarray, data: ObservedData, oi: np.ndarray, error: AnyError,
    lo: np.ndarray, hi: np.ndarray, max_iter: int, near: float = 1e-4,
) -> tuple[np.ndarray, int]:
    """Bounded Gauss-Newton steps with a backtracking line search until every subject's step
    is below ``near`` (or stops improving); returns eta and the iterations used."""
    S = eta.shape[0]
    active = np.ones(S, bool)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - reported
        ofv, g, gn, _ = _derivatives(predict, eta[:, None], data, oi, error)
        ofv, g, gn = ofv[:, 0], g[:, 0], gn[:, 0]
        active &= np.isfinite(ofv) & np.isfinite(gn).all(axis=(1, 2))
        step = _descent_step(g, np.full_like(gn, np.nan), np.where(active[:, None, None], gn,
                                                                   np.eye(gn.shape[-1])))
        step[~active] = 0.0
        cand, better = _line_search(predict, eta, step, ofv, data, oi, error, lo, hi)
        for s in np.flatnonzero(active):
            if not better[s].any():
                active[s] = False
                continue
            new = cand[s, int(better[s].argmax())]
            if np.max(np.abs(new - eta[s])) < near:
                active[s] = False
            eta[s] = new
        if not active.any():
            break
    return eta, it


def _all_equal(target: np.ndarray, current: np.ndarray, tol: float = 1.5e-8) -> np.ndarray:
    """R's ``all.equal`` on numbers, elementwise: relative difference (absolute when
    ``|target| <= tol``) at most ``tol``; two infinities of the same sign are equal."""
    with np.errstate(invalid="ignore"):
        diff = np.abs(target - current)
        scaled = np.where(np.abs(target) > tol, diff / np.abs(target), diff)
        return (target == current) | (scaled <= tol)


def reset_needed(
    eta: np.ndarray, ofv: np.ndarray, ofv_start: np.ndarray, converged: np.ndarray,
    lo: np.ndarray, hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """mapbayr's reset rules for each subject (module docstring): ``(new_start, new_bounds)``.

    ``new_start``: not converged, or the OFV did not change from the start, or (``q > 1``)
    all ``|eta|`` equal; ``new_bounds``: an eta on its bound."""
    q = eta.shape[1]
    same_abs = np.all(np.abs(eta) == np.abs(eta[:, :1]), axis=1) if q > 1 else np.zeros(
        eta.shape[0], bool)
    new_start = ~converged | _all_equal(ofv_start, ofv) | same_abs
    new_bounds = np.any((eta <= lo) | (eta >= hi), axis=1)
    return new_start, new_bounds


def _bounds(tail: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric bounds ``(S, q)``: the ``tail`` and ``1 - tail`` quantiles of each prior."""
    half = -ndtri(tail)[:, None] * sd[None, :]
    return -half, half


def _check_log_zero(f: np.ndarray, data: ObservedData, error: AnyError) -> None:
    """Refuse a quantified log-scale observation whose prediction is exactly 0."""
    log_scale = np.broadcast_to(np.asarray(data.error(error).log_scale), f.shape)
    bad = log_scale & (f == 0.0) & (data.mask & ~data.blq)[:, None]
    if bad.any():
        s, _, j = np.argwhere(bad)[0]
        raise ValidationError(
            "the model predicts exactly 0 for this sample (before the first dose or within "
            "the lag time) but its residual error is on the log scale, where log(0) has no "
            "finite objective; drop the sample, or mark it below the LLOQ",
            where=f"subject {s}, observation {j}")


def map_estimate(
    predict: Predict,
    data: ObservedData,
    omega: np.ndarray,
    error: AnyError,
    *,
    eta0: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-9,
    restarts: int = 50,
    seed: int = 0,
    bound_quantile: float = 0.999,
) -> MapResult:
    """MAP etas of every subject, with their Laplace covariance; see the module docstring.

    ``restarts`` is mapbayr's ``reset`` (at most that many resets per subject),
    ``bound_quantile`` the upper quantile of the first bounds (mapbayr's ``quantile_bound``
    is its complement, 0.001)."""
    omega = check_omega(omega)
    if not 0.5 < bound_quantile < 1.0:
        raise ValidationError(f"must be in (0.5, 1), got {bound_quantile}",
                              where="bound_quantile")
    if max_iter < 1 or restarts < 0:
        raise ValidationError(f"need max_iter >= 1 and restarts >= 0, got {max_iter} and "
                              f"{restarts}", where="map_estimate")
    oi = np.linalg.inv(omega)
    S, q = data.y.shape[0], omega.shape[0]
    sd = np.sqrt(np.diag(omega))
    tail = np.full(S, 1.0 - bound_quantile)
    lo, hi = _bounds(tail, sd)
    start = np.zeros((S, q)) if eta0 is None else np.array(eta0, float).reshape(S, q)
    start = np.clip(start, lo, hi)
    f0 = predict(start[:, None])
    _check_log_zero(f0, data, error)
    ofv_start = _ofv(f0, start[:, None], data, oi, error)[:, 0]
    eta, ofv, H, conv, it = _optimise(predict, start.copy(), data, oi, error, lo, hi,
                                      max_iter, tol)
    informed = data.mask.any(axis=1)
    n_restart = np.zeros(S, np.int64)
    at_bound = np.any((eta <= lo) | (eta >= hi), axis=1)
    best = [eta.copy(), ofv.copy(), H.copy(), conv.copy(), at_bound.copy()]
    for reset in range(1, restarts + 1):
        new_start, new_bounds = reset_needed(eta, ofv, ofv_start, conv, lo, hi)
        new_start &= informed
        new_bounds &= informed
        rows = np.flatnonzero(new_start | new_bounds)
        if not rows.size:
            break
        log.info("MAP: reset %d of %d subject(s) (%d new start, %d wider bounds)", reset,
                 rows.size, int(new_start.sum()), int(new_bounds.sum()))
        sub = data.take(rows)

        def sub_predict(e: np.ndarray, rows: np.ndarray = rows) -> np.ndarray:
            full = np.zeros((S,) + e.shape[1:])
            full[rows] = e
            return predict(full)[rows]

        ini = rows[new_start[rows]]
        if ini.size:
            draws = np.random.default_rng([seed, reset]).multivariate_normal(
                np.zeros(q), omega, size=1 + q * q)  # one set for all, as mapbayr's seed
            cand = np.where(np.abs(draws)[None] > hi[ini][:, None], 0.0, draws[None])
            pick = np.flatnonzero(new_start[rows])
            full = np.zeros((rows.size,) + cand.shape[1:])
            full[pick] = cand
            o_c = _ofv(sub_predict(full), full, sub, oi, error)[pick]
            start[ini] = np.round(cand[np.arange(ini.size), np.argmin(o_c, axis=1)], 6)
        widen = rows[new_bounds[rows]]
        tail[widen] /= 10.0
        lo, hi = _bounds(tail, sd)
        st = np.clip(start[rows], lo[rows], hi[rows])
        o0 = _ofv(sub_predict(st[:, None]), st[:, None], sub, oi, error)[:, 0]
        e2, o2, H2, c2, _ = _optimise(sub_predict, st, sub, oi, error, lo[rows], hi[rows],
                                      max_iter, tol)
        eta[rows], ofv[rows], H[rows], conv[rows], ofv_start[rows] = e2, o2, H2, c2, o0
        at_bound = np.any((eta <= lo) | (eta >= hi), axis=1)
        n_restart[rows] += 1
        gain = ofv < best[1]
        for b, now in zip(best, (eta, ofv, H, conv, at_bound), strict=True):
            b[gain] = now[gain]
    # resets used up and the last run still fails a rule: keep the run with the lowest OFV
    # (mapbayr keeps the last); its own optimality and bound decide ``converged``
    new_start, new_bounds = reset_needed(eta, ofv, ofv_start, conv, lo, hi)
    back = (new_start | new_bounds) & informed & (best[1] < ofv)
    for b, now in zip(best, (eta, ofv, H, conv, at_bound), strict=True):
        now[back] = b[back]
    conv = conv & ~at_bound
    cov = np.full((S, 2, q, q), np.nan)
    for s in range(S):
        for j in range(2):
            try:
                cov[s, j] = 2.0 * np.linalg.inv(H[s, j])
            except np.linalg.LinAlgError:
                log.warning("MAP: singular Hessian for subject %d; covariance left NaN", s)
    return MapResult(eta, ofv, cov[:, 0], cov[:, 1], conv, n_restart, it)
