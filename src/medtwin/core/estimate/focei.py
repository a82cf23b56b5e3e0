"""Population fitting by FOCE with interaction (FOCE-I), model-agnostic.

The marginal likelihood of each subject is approximated at its conditional mode (Laplace),
with the expected-information Hessian that NONMEM's FOCE-I uses:

    -2 LL = sum_i [ OFV_i(eta_i) + log|Omega| + log|Omega^-1 + sum_j (J_j J_j' / var_j
            + 1/2 dvar_j dvar_j' / var_j^2)| ] + N log(2 pi),

``OFV_i`` the MAP objective of :mod:`medtwin.core.estimate.map` (the same residual error and
M3 terms), ``J_j`` the gradient of prediction j by eta, ``dvar_j`` that of its variance
(Almquist et al., J Pharmacokinet Pharmacodyn 42:191, 2015; Wang, J Pharmacokinet
Pharmacodyn 34:575, 2007). The conditional modes are found again at every evaluation (warm
started); the outer problem is minimised by BFGS over log typical values, log-Cholesky Omega
and log residual sds (one error, or one per observation kind with
:class:`~medtwin.core.estimate.residual.ResidualErrors`), with central-difference
gradients. Standard errors come from the Hessian of -2LL (``cov = 2 H^-1``) on that
estimation scale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.map import ObservedData, _derivatives, _optimise, check_omega
from medtwin.core.estimate.residual import AnyError, ResidualError, ResidualErrors

log = logging.getLogger(__name__)

PopulationPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]
_BOUND = 8.0  # inner etas are kept within +-8 prior sds


@dataclass
class FOCEI:
    """FOCE-I estimator (scikit-learn's contract: ``fit`` returns self; results end in ``_``).

    ``predict(theta, eta)`` maps fixed effects ``(p,)`` and etas ``(S, k, q)`` to predictions
    ``(S, k, m)``. ``omega_structure`` is ``"diagonal"`` or ``"full"``. ``mapper(estimator,
    points)`` evaluates :meth:`objective_at` at many points at once (the central differences
    of a gradient or a Hessian), e.g. on Dask (:func:`medtwin.core.cluster.dask_mapper`);
    results are the same as the serial default.
    """

    omega_structure: str = "diagonal"
    max_iter: int = 200
    inner_tol: float = 1e-9
    gradient_step: float = 1e-4
    standard_errors: bool = True
    mapper: Callable[[FOCEI, list[np.ndarray]], list[float]] | None = field(
        default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["mapper"] = None  # a mapper holds a cluster client: never shipped to workers
        return state

    def objective_at(self, x: np.ndarray) -> float:
        """-2LL at estimation-scale parameters ``x`` (conditional modes warm started from the
        current ones; the estimator's state is not changed)."""
        return self._objective(x, count=False)

    # --- parameter packing ---------------------------------------------------------------
    def _pack(self, theta: np.ndarray, omega: np.ndarray, error: AnyError) -> np.ndarray:
        if self.omega_structure == "diagonal":
            om = 0.5 * np.log(np.diag(omega))
        else:
            L = np.linalg.cholesky(omega)
            om = np.concatenate([np.log(np.diag(L)), L[np.tril_indices_from(L, -1)]])
        sig = [math.log(getattr(_errors(error)[k], comp)) for k, comp in self._sd_slots()]
        return np.concatenate([theta, om, sig])

    def _sd_slots(self) -> list[tuple[int, str]]:
        """(error index, component) of each estimated residual sd, in ``x_`` order."""
        return [(k, comp) for k, e in enumerate(_errors(self._error0))
                for comp in ("additive_sd", "proportional_sd") if getattr(e, comp) > 0]

    def _unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, AnyError]:
        p, q = self._p, self._q
        theta = x[:p]
        if self.omega_structure == "diagonal":
            omega = np.diag(np.exp(2.0 * x[p : p + q]))
            k = p + q
        else:
            L = np.diag(np.exp(x[p : p + q]))
            n_off = q * (q - 1) // 2
            L[np.tril_indices(q, -1)] = x[p + q : p + q + n_off]
            omega = L @ L.T
            k = p + q + n_off
        errs0 = _errors(self._error0)
        values = [{"additive_sd": 0.0, "proportional_sd": 0.0} for _ in errs0]
        for (i, comp), v in zip(self._sd_slots(), np.exp(x[k:]), strict=True):
            values[i][comp] = float(v)
        errs = tuple(ResidualError(v["additive_sd"], v["proportional_sd"], e.log_scale)
                     for v, e in zip(values, errs0, strict=True))
        if isinstance(self._error0, ResidualErrors):
            return theta, omega, ResidualErrors(errs, self._error0.names)
        return theta, omega, errs[0]

    # --- objective -----------------------------------------------------------------------
    def _objective(self, x: np.ndarray, *, keep: bool = False, count: bool = True) -> float:
        theta, omega, error = self._unpack(x)
        try:
            oi = np.linalg.inv(omega)
            sign, logdet_om = np.linalg.slogdet(omega)
        except np.linalg.LinAlgError:
            return np.inf
        if sign <= 0:
            return np.inf

        def predict(eta: np.ndarray) -> np.ndarray:
            return self._predict(theta, eta)

        half = _BOUND * np.sqrt(np.diag(omega))
        eta, ofv, _, _, _ = _optimise(predict, self._eta.copy(), self._data, oi, error,
                                      -half, half, 50, self.inner_tol, gauss_newton=False)
        _, _, gn, _ = _derivatives(predict, eta[:, None], self._data, oi, error)
        sign, logdet = np.linalg.slogdet(0.5 * gn[:, 0])
        if np.any(sign <= 0) or not np.all(np.isfinite(ofv)):
            return np.inf
        total = float(np.sum(ofv + logdet_om + logdet) + self._n_quant * math.log(2 * math.pi))
        if keep:
            self._eta = eta
            self._ofv_i = ofv + logdet_om + logdet
        if count:
            self._n_eval += 1
        return total

    def _objectives(self, xs: list[np.ndarray]) -> np.ndarray:
        if self.mapper is None:
            return np.array([self._objective(x) for x in xs])
        self._n_eval += len(xs)
        return np.asarray(self.mapper(self, xs), dtype=float)

    def _gradients(self, xs: list[np.ndarray]) -> np.ndarray:
        """Central-difference gradients at every point of ``xs``, all evaluations in one batch."""
        h = self.gradient_step
        n = xs[0].size
        steps = np.eye(n) * h
        pts = [x + s * sign for x in xs for s in steps for sign in (1.0, -1.0)]
        v = self._objectives(pts).reshape(len(xs), n, 2)
        return (v[..., 0] - v[..., 1]) / (2 * h)

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        return self._gradients([x])[0]

    def fit(
        self,
        predict: PopulationPredict,
        data: ObservedData,
        theta0: np.ndarray,
        omega0: np.ndarray,
        error0: AnyError,
    ) -> FOCEI:
        """Estimate theta, Omega and the residual error from ``data``; returns self."""
        if self.omega_structure not in ("diagonal", "full"):
            raise ValidationError("must be 'diagonal' or 'full'", where="omega_structure")
        omega0 = check_omega(omega0)
        self._predict = predict
        self._data = data
        self._p = len(theta0)
        self._q = omega0.shape[0]
        self._error0 = error0
        self._n_quant = int((data.mask & ~data.blq).sum())
        self._eta = np.zeros((data.y.shape[0], self._q))
        self._n_eval = 0
        x0 = self._pack(np.asarray(theta0, float), omega0, error0)
        self._objective(x0, keep=True)
        res = minimize(lambda x: self._objective(x, keep=True), x0, jac=self._gradient,
                       method="BFGS", options={"maxiter": self.max_iter, "gtol": 1e-3})
        x = res.x
        self.ofv_ = self._objective(x, keep=True)
        self.theta_, self.omega_, self.error_ = self._unpack(x)
        self.eta_ = self._eta.copy()
        self.ofv_subjects_ = self._ofv_i.copy()
        self.x_ = x
        self.converged_ = bool(res.success) or float(np.max(np.abs(res.jac))) < 1e-2
        self.message_ = str(res.message)
        self.n_iter_ = int(res.nit)
        if self.standard_errors:
            self.cov_ = self._covariance(x)
            self.se_ = np.sqrt(np.clip(np.diag(self.cov_), 0, None))
        self.n_evaluations_ = self._n_eval
        log.info("FOCE-I: OFV %.4f after %d iterations, %d evaluations (%s)", self.ofv_,
                 self.n_iter_, self._n_eval, self.message_)
        return self

    def _covariance(self, x: np.ndarray) -> np.ndarray:
        """2 x inverse Hessian of -2LL on the estimation scale (R matrix)."""
        h = 10 * self.gradient_step
        n = x.size
        steps = np.eye(n) * h
        G = self._gradients([x + s for s in steps] + [x - s for s in steps])
        H = (G[:n] - G[n:]) / (2 * h)
        H = 0.5 * (H + H.T)
        try:
            return 2.0 * np.linalg.inv(H)
        except np.linalg.LinAlgError:
            log.warning("FOCE-I: singular Hessian; no standard errors")
            return np.full((n, n), np.nan)

    @property
    def parameter_names_(self) -> list[str]:
        """Names of the estimation-scale parameters, in the order of ``x_`` and ``se_``."""
        q = self._q
        names = [f"theta[{i}]" for i in range(self._p)]
        names += [f"log sd eta[{i}]" if self.omega_structure == "diagonal" else
                  f"log L[{i},{i}]" for i in range(q)]
        if self.omega_structure == "full":
            names += [f"L[{i},{j}]" for i, j in zip(*np.tril_indices(q, -1), strict=True)]
        multi = isinstance(self._error0, ResidualErrors)
        for k, comp in self._sd_slots():
            label = comp.replace("_sd", " sd")
            if multi:
                label = f"{self._error0.names[k] if self._error0.names else k} {label}"
            names.append(f"log {label}")
        return names


def _errors(error: AnyError) -> tuple[ResidualError, ...]:
    return error.errors if isinstance(error, ResidualErrors) else (error,)
