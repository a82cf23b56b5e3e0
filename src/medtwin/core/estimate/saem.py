"""Population fitting by SAEM (stochastic approximation EM), model-agnostic.

The algorithm of Kuhn & Lavielle (Comput Stat Data Anal 49:1020, 2005) as Monolix, saemix and
nlmixr2 run it. The individual parameters ``phi_i = mu + eta_i`` (``mu`` the log typical
values an eta is *mu-referenced* to, 0 for an eta without one) are the missing data:

- **E-step (simulation)**: a few Metropolis-Hastings sweeps per iteration on each subject's
  chains, with the three kernels of saemix/nlmixr2: (1) independent proposals from the prior
  ``N(mu, Omega)``; (2) a random walk on one component at a time; (3) a random walk on all
  components at once. Random-walk scales adapt towards 40% acceptance.
- **Stochastic approximation** of the sufficient statistics ``mean(phi)`` and
  ``mean(phi phi')`` with step 1 for the first ``n_burn`` iterations, then ``1/k``.
- **M-step**: ``mu`` and ``Omega`` in closed form from those statistics; the residual error
  (additive, proportional, combined, log-scale; one per observation kind with
  :class:`~medtwin.core.estimate.residual.ResidualErrors`, M3 for BLQ samples) by
  minimising the observation part of the complete-data likelihood at the current chains
  (closed form for a single additive or proportional term), then the same stochastic
  approximation on the variances (saemix's rule for the combined error). Fixed effects that
  carry no eta (or share one) get a few Newton steps on that likelihood per iteration (a
  generalised-EM partial M-step) and the same approximation. Simulated annealing
  (variances kept >= ``annealing`` x their last value) in the first half of the burn-in
  keeps the chains exploring.

After the iterations, at the estimates:

- ``ofv_``: -2LL by **importance sampling** (Monolix's method): per subject, draws from a
  Student t (5 df) centred on the conditional mean with the conditional covariance, both
  estimated from extra MCMC sweeps; ``ofv_se_`` its Monte Carlo standard error.
- ``se_``, ``cov_``, ``ofv_focei_``: **FOCE-I's covariance (2 x inverse Hessian of the
  FOCE-I -2LL) evaluated at the SAEM estimates**, on FOCE-I's estimation scale (log typical
  values, log sds of Omega, log residual sds), and FOCE-I's -2LL there (one residual error
  model only: with several, no standard errors).
- ``eta_``: conditional modes (EBEs) at the estimates; ``eta_mean_``: conditional means.
- ``trace_``: theta, diag(Omega) and residual sds after each iteration (convergence plots);
  ``seconds_iterations_`` and ``seconds_final_``: wall time of the iterations and of the
  steps above.

Per-subject random numbers come from one generator per subject (spawned from ``seed``), so a
fit is the same whichever way the subjects are split into blocks; with a Dask ``client`` the
E-step of each block of subjects runs on a worker (results identical to in-process).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import gammaln, logsumexp

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.focei import FOCEI
from medtwin.core.estimate.map import ObservedData, check_omega, map_estimate
from medtwin.core.estimate.residual import (
    AnyError,
    ElementError,
    ResidualError,
    ResidualErrors,
    observation_terms,
)

log = logging.getLogger(__name__)

PopulationPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]
Subset = Callable[[np.ndarray], PopulationPredict]

_TARGET = 0.4  # acceptance rate the random-walk kernels aim at (saemix's proba.mcmc)
_ADAPT = 0.4  # adaptation speed of their scales (saemix's stepsize.rw)
_T_DF = 5.0  # degrees of freedom of the importance-sampling proposal (as Monolix)
_ALPHA_GRID = 0.5 ** np.arange(12)


@dataclass
class _Block:
    """The predictions and data of a block of subjects (shipped to a worker once)."""

    predict: PopulationPredict
    data: ObservedData


def _obs_terms(data: ObservedData, error: AnyError, f: np.ndarray) -> np.ndarray:
    """-2 log p(y | eta) without the 2 pi constant, per subject and chain ``(S, C)``."""
    t = observation_terms(data.error(error), data.y[:, None, :], f, data.mask[:, None, :],
                          data.blq[:, None, :], data.lloq[:, None, :])
    return t.sum(axis=-1)


def _quad(eta: np.ndarray, omega_inv: np.ndarray) -> np.ndarray:
    return np.einsum("...i,ij,...j->...", eta, omega_inv, eta)


def _newton(values: Callable[[np.ndarray], np.ndarray], x: np.ndarray, max_iter: int, *,
            sequential: bool = False) -> np.ndarray:
    """Minimise a smooth function of a few variables by Newton steps with a central-
    difference gradient and Hessian (``values`` maps points ``(K, n)`` to ``(K,)``) and a
    backtracking search (all candidates at once, or one by one when ``sequential``)."""
    n, h = x.size, 1e-3
    eye = np.eye(n) * h
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for _ in range(max_iter):
        pts = [x] + [x + e for e in eye] + [x - e for e in eye]
        pts += [x + eye[i] * a + eye[j] * b for i, j in pairs
                for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
        v = values(np.array(pts))
        f0, fp, fm = v[0], v[1:n + 1], v[n + 1:2 * n + 1]
        if not np.all(np.isfinite(v)):
            break
        g = (fp - fm) / (2 * h)
        H = np.diag((fp - 2 * f0 + fm) / h**2)
        for k, (i, j) in enumerate(pairs):
            c = v[2 * n + 1 + 4 * k: 2 * n + 5 + 4 * k]
            H[i, j] = H[j, i] = (c[0] - c[1] - c[2] + c[3]) / (4 * h * h)
        try:
            step = -np.linalg.solve(H, g) if np.all(np.linalg.eigvalsh(H) > 0) else -g
        except np.linalg.LinAlgError:
            step = -g
        step = np.clip(step, -2.0, 2.0)
        new = None
        if sequential:
            for a in _ALPHA_GRID:
                if values((x + a * step)[None])[0] < f0:
                    new = x + a * step
                    break
        else:
            cand = x + _ALPHA_GRID[:, None] * step
            better = values(cand) < f0
            new = cand[int(np.argmax(better))] if better.any() else None
        if new is None:
            break
        moved = float(np.max(np.abs(new - x)))
        x = new
        if moved < 1e-7:
            break
    return x


def _estep(block: _Block, theta: np.ndarray, omega: np.ndarray, error: AnyError,
           eta: np.ndarray, rngs: list[np.random.Generator], scales: np.ndarray,
           kernels: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                    np.ndarray, list[np.random.Generator]]:
    """Metropolis-Hastings sweeps on the chains ``eta`` ``(S, C, q)`` of one block.

    Returns the new chains, their predictions ``(S, C, m)``, their -2 log p(y | eta) and the
    acceptance counts of the ``q + 1`` random-walk scales, and the generators."""
    S, C, q = eta.shape
    n1, n2, n3 = kernels
    oi = np.linalg.inv(omega)
    chol = np.linalg.cholesky(omega)
    sd = np.sqrt(np.diag(omega))
    n_norm = q * (n1 + n2 + n3)
    n_unif = n1 + n2 * q + n3
    draws = [(g.standard_normal((C, n_norm)), g.random((C, n_unif))) for g in rngs]
    z = np.stack([d[0] for d in draws])  # (S, C, n_norm)
    u = np.log(np.stack([d[1] for d in draws]))
    f = block.predict(theta, eta)
    uy = _obs_terms(block.data, error, f)
    ue = _quad(eta, oi)
    acc = np.zeros(q + 1)
    iz = iu = 0

    def step(prop: np.ndarray, with_prior: bool) -> np.ndarray:
        nonlocal eta, f, uy, ue, iu
        fp = block.predict(theta, prop)
        uyp = _obs_terms(block.data, error, fp)
        uep = _quad(prop, oi)
        delta = uyp - uy + (uep - ue if with_prior else 0.0)
        ok = np.isfinite(uyp) & (-0.5 * delta >= u[..., iu])
        iu += 1
        eta = np.where(ok[..., None], prop, eta)
        f = np.where(ok[..., None], fp, f)
        uy = np.where(ok, uyp, uy)
        ue = np.where(ok, uep, ue)
        return ok

    for _ in range(n1):  # independent proposals from the prior
        prop = z[..., iz:iz + q] @ chol.T
        iz += q
        step(prop, with_prior=False)
    for _ in range(n2):  # one component at a time
        for j in range(q):
            prop = eta.copy()
            prop[..., j] += scales[j] * sd[j] * z[..., iz]
            iz += 1
            acc[j] += step(prop, with_prior=True).sum()
    for _ in range(n3):  # all components at once
        prop = eta + scales[q] * (z[..., iz:iz + q] @ chol.T)
        iz += q
        acc[q] += step(prop, with_prior=True).sum()
    return eta, f, uy, acc, rngs


@dataclass
class SAEM:
    """SAEM estimator (scikit-learn's contract: ``fit`` returns self; results end in ``_``).

    ``predict(theta, eta)`` maps fixed effects ``(p,)`` and etas ``(S, k, q)`` to predictions
    ``(S, k, m)`` (as :class:`~medtwin.core.estimate.focei.FOCEI`). ``mu_index[j]`` is the
    theta eta ``j`` is mu-referenced to (``predict`` depends on them only through
    ``theta[mu_index[j]] + eta[j]``), or None. ``n_chains`` None: enough for 50 subject-chains
    (as Monolix). ``client``: a Dask client that runs the E-step of each block of
    ``block_size`` subjects (default: the subjects split evenly over its workers).
    ``on_iteration(k)`` is called before iteration k (progress; it may raise to stop).
    """

    n_burn: int = 200
    n_em: int = 300
    n_chains: int | None = None
    kernels: tuple[int, int, int] = (2, 2, 2)
    omega_structure: str = "diagonal"
    annealing: float = 0.95
    seed: int = 0
    n_importance: int = 2000
    n_conditional: int = 100
    standard_errors: bool = True
    block_size: int | None = None
    client: Any = field(default=None, repr=False, compare=False)
    on_iteration: Callable[[int], None] | None = field(default=None, repr=False,
                                                        compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["client"] = None  # a client is never shipped to workers
        state["on_iteration"] = None
        return state

    # --- the pieces ----------------------------------------------------------------------
    def _mu(self, theta: np.ndarray) -> np.ndarray:
        return np.array([theta[i] if i is not None else 0.0 for i in self._mu_index])

    def _blocks(self, predict: PopulationPredict, data: ObservedData,
                subset: Subset | None) -> list[tuple[np.ndarray, Any]]:
        S = data.y.shape[0]
        if self.client is None:
            if self.block_size is None or self.block_size >= S:
                return [(np.arange(S), _Block(predict, data))]
        if subset is None:
            raise ValidationError("splitting the subjects into blocks needs subset(rows) -> "
                                  "predict for those subjects", where="subset")
        if self.block_size is not None:
            size = max(1, self.block_size)
        else:
            n_workers = max(1, sum(self.client.nthreads().values()))
            size = math.ceil(S / n_workers)
        rows = [np.arange(s, min(S, s + size)) for s in range(0, S, size)]
        blocks = [_Block(subset(r), data.take(r)) for r in rows]
        if self.client is not None:
            futures = self.client.scatter(blocks, hash=False)
            return list(zip(rows, futures, strict=True))
        return list(zip(rows, blocks, strict=True))

    def _run_estep(self, theta: np.ndarray, omega: np.ndarray, error: AnyError,
                   eta: np.ndarray, scales: np.ndarray, kernels: tuple[int, int, int]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        args = [(b, theta, omega, error, eta[r], [self._rngs[i] for i in r], scales, kernels)
                for r, b in self._block_list]
        if self.client is None:
            out = [_estep(*a) for a in args]
        else:
            futures = [self.client.submit(_estep, *a, pure=False) for a in args]
            out = self.client.gather(futures)
        for (r, _), o in zip(self._block_list, out, strict=True):
            for i, g in zip(r, o[4], strict=True):
                self._rngs[i] = g
        new_eta = np.concatenate([o[0] for o in out])
        f = np.concatenate([o[1] for o in out])
        uy = np.concatenate([o[2] for o in out])
        acc = np.sum([o[3] for o in out], axis=0)
        return new_eta, f, uy, acc

    def _sds(self, error: AnyError) -> np.ndarray:
        """The estimated residual sds of ``error``, in ``_sig_index`` order."""
        errs = error.errors if isinstance(error, ResidualErrors) else (error,)
        return np.array([getattr(errs[k], comp) for k, comp in self._sig_index])

    def _error_from(self, sds: np.ndarray) -> AnyError:
        """The residual error (one, or one per observation kind) with sds ``sds``."""
        values = [{"additive_sd": 0.0, "proportional_sd": 0.0} for _ in self._log_scale]
        for (k, comp), v in zip(self._sig_index, sds, strict=True):
            values[k][comp] = float(v)
        errs = tuple(ResidualError(v["additive_sd"], v["proportional_sd"], lg)
                     for v, lg in zip(values, self._log_scale, strict=True))
        return ResidualErrors(errs, self._error_names) if self._multi else errs[0]

    def _residual_step(self, theta: np.ndarray, phi: np.ndarray, f: np.ndarray,
                       error: AnyError) -> tuple[np.ndarray, AnyError]:
        """Minimise the observation part of the complete-data -2LL over the residual sds
        (and the thetas without an eta) at the current chains."""
        free = self._free
        C = phi.shape[1]

        def unpack(x: np.ndarray) -> tuple[np.ndarray, AnyError]:
            th = theta.copy()
            th[free] = x[:len(free)]
            return th, self._error_from(np.exp(x[len(free):]))

        def objective(x: np.ndarray) -> float:
            if not np.all(np.abs(x[len(free):]) < 30):
                return np.inf
            th, err = unpack(x)
            ff = self._predict(th, phi - self._mu(th)) if free else f
            v = float(np.sum(_obs_terms(self._data, err, ff))) / C
            return v if math.isfinite(v) else np.inf

        x0 = np.concatenate([theta[free], np.log(self._sds(error))])
        data = self._data
        quant = data.mask & ~data.blq
        if (not free and not self._multi and len(self._sig_index) == 1
                and not data.blq.any() and isinstance(error, ResidualError)):
            # one error term, no M3: the minimiser is the mean squared scaled residual
            r = error.transform(data.y)[:, None, :] - error.transform(f)
            if self._sig_index[0][1] == "proportional_sd":
                r = r / np.where(f == 0.0, 1.0, np.maximum(np.abs(f), 1e-12))
            ms = float(np.sum(np.where(quant[:, None, :], r * r, 0.0))) / (C * quant.sum())
            return theta[free], self._error_from(np.array([math.sqrt(max(ms, 1e-24))]))
        if not free:  # predictions fixed: Newton on the log sds, all stencil points at once
            x = _newton(lambda xs: self._sigma_values(xs, f), x0, 30)
        else:  # a few Newton steps from the current values: a partial (generalised EM)
            # M-step; the stochastic approximation averages the rest
            x = _newton(lambda xs: np.array([objective(v) for v in xs]), x0, 3,
                        sequential=True)
        th, err = unpack(x)
        return th[free], err

    def _sigma_values(self, logs: np.ndarray, f: np.ndarray) -> np.ndarray:
        """Observation part of -2LL (per chain) at ``K`` candidate log-sd vectors ``(K, n)``,
        each observation with its own kind's error."""
        d = self._data
        sig = np.exp(np.clip(logs, -30, 30))
        K, nk = len(logs), len(self._log_scale)
        sds = {"additive_sd": np.zeros((K, nk)), "proportional_sd": np.zeros((K, nk))}
        for i, (k, comp) in enumerate(self._sig_index):
            sds[comp][:, k] = sig[:, i]
        kind = d.kind if d.kind is not None else np.zeros(d.y.shape, np.int64)
        err = ElementError(sds["additive_sd"][:, kind][:, :, None, :],
                           sds["proportional_sd"][:, kind][:, :, None, :],
                           np.asarray(self._log_scale)[kind][None, :, None, :])
        t = observation_terms(err, d.y[None, :, None, :], f[None], d.mask[None, :, None, :],
                              d.blq[None, :, None, :], d.lloq[None, :, None, :])
        v = t.sum(axis=(1, 2, 3)) / f.shape[1]
        return np.where(np.isfinite(v), v, np.inf)

    # --- fitting -------------------------------------------------------------------------
    def fit(
        self,
        predict: PopulationPredict,
        data: ObservedData,
        theta0: np.ndarray,
        omega0: np.ndarray,
        error0: AnyError,
        *,
        mu_index: Sequence[int | None] | None = None,
        subset: Subset | None = None,
    ) -> SAEM:
        """Estimate theta, Omega and the residual error from ``data``; returns self.

        ``subset(rows)`` gives ``predict`` for the subjects at ``rows`` only (needed when the
        E-step is split into blocks: ``client`` or ``block_size``)."""
        if self.omega_structure not in ("diagonal", "full"):
            raise ValidationError("must be 'diagonal' or 'full'", where="omega_structure")
        if self.n_burn < 1 or self.n_em < 1:
            raise ValidationError("n_burn and n_em must be >= 1", where="SAEM")
        self._multi = isinstance(error0, ResidualErrors)
        errors0 = error0.errors if isinstance(error0, ResidualErrors) else (error0,)
        if self._multi and data.kind is None and len(errors0) > 1:
            raise ValidationError(f"{len(errors0)} residual errors but the data do not say "
                                  "which observation is which (ObservedData.kind)",
                                  where="error")
        self._log_scale = tuple(bool(e.log_scale) for e in errors0)
        self._error_names = error0.names if isinstance(error0, ResidualErrors) else ()
        self._sig_index = [(k, comp) for k, e in enumerate(errors0)
                           for comp in ("additive_sd", "proportional_sd")
                           if getattr(e, comp) > 0]
        omega = check_omega(omega0)
        theta = np.array(theta0, float)
        p, q = theta.size, omega.shape[0]
        S = data.y.shape[0]
        mu_index = list(mu_index) if mu_index is not None else [None] * q
        if len(mu_index) != q:
            raise ValidationError(f"{len(mu_index)} entries for {q} etas", where="mu_index")
        used = [i for i in mu_index if i is not None]
        if len(set(used)) != len(used) or any(not 0 <= i < p for i in used):
            raise ValidationError("each eta is mu-referenced to a different theta in "
                                  f"0..{p - 1} (or None)", where="mu_index")
        self._mu_index = mu_index
        self._ref = np.array([i is not None for i in mu_index])
        self._free = [i for i in range(p) if i not in used]
        self._predict, self._data = predict, data
        C = self.n_chains or max(1, math.ceil(50 / S))
        self._rngs = [np.random.default_rng(s)
                      for s in np.random.SeedSequence(self.seed).spawn(S)]
        self._block_list = self._blocks(predict, data, subset)
        error = error0
        eta = np.zeros((S, C, q))
        scales = np.ones(q + 1)
        s1 = s2 = None
        n_total = self.n_burn + self.n_em
        n_anneal = self.n_burn // 2
        trace = np.empty((n_total, p + q + len(self._sig_index)))
        start = time.perf_counter()
        for k in range(1, n_total + 1):
            if self.on_iteration is not None:
                self.on_iteration(k)
            eta, f, _, acc = self._run_estep(theta, omega, error, eta, scales, self.kernels)
            n_prop = S * C * np.array([self.kernels[1]] * q + [self.kernels[2]])
            rate = acc / np.maximum(n_prop, 1)
            scales = scales * (1.0 + _ADAPT * (rate - _TARGET))
            gamma = 1.0 if k <= self.n_burn else 1.0 / (k - self.n_burn)
            phi = eta + self._mu(theta)
            m1 = phi.mean(axis=(0, 1))
            m2 = np.einsum("sci,scj->ij", phi, phi) / (S * C)
            s1 = m1 if s1 is None else s1 + gamma * (m1 - s1)
            s2 = m2 if s2 is None else s2 + gamma * (m2 - s2)
            # mu: the Gaussian mean with the non-referenced means held at 0
            old_omega = omega
            m = np.zeros(q)
            ref, non = self._ref, ~self._ref
            m[ref] = s1[ref]
            if non.any() and ref.any() and self.omega_structure == "full":
                m[ref] -= omega[np.ix_(ref, non)] @ np.linalg.solve(omega[np.ix_(non, non)],
                                                                    s1[non])
            new_omega = s2 - np.outer(s1, m) - np.outer(m, s1) + np.outer(m, m)
            new_omega = 0.5 * (new_omega + new_omega.T)
            if self.omega_structure == "diagonal":
                new_omega = np.diag(np.diag(new_omega))
            if k <= n_anneal:
                d = np.maximum(np.diag(new_omega), self.annealing * np.diag(old_omega))
                new_omega = new_omega - np.diag(np.diag(new_omega)) + np.diag(d)
            new_omega += np.eye(q) * 1e-10
            for j, i in enumerate(mu_index):
                if i is not None:
                    theta[i] = m[j]
            omega = new_omega
            # residual error and the thetas without an eta: numerical M-step + SA
            free_new, err_new = self._residual_step(theta, phi, f, error)
            if self._free:
                theta[self._free] += gamma * (free_new - theta[self._free])
            var_old = self._sds(error) ** 2
            var = var_old + gamma * (self._sds(err_new) ** 2 - var_old)
            if k <= n_anneal:
                var = np.maximum(var, self.annealing * var_old)
            error = self._error_from(np.sqrt(var))
            eta = phi - self._mu(theta)
            trace[k - 1] = np.concatenate([theta, np.diag(omega), np.sqrt(var)])
        self.theta_, self.omega_, self.error_ = theta, omega, error
        self.trace_ = trace
        self.n_chains_ = C
        self.seconds_iterations_ = time.perf_counter() - start
        self._final(eta, scales)
        self.seconds_final_ = time.perf_counter() - start - self.seconds_iterations_
        log.info("SAEM: %d+%d iterations, %d chains; -2LL %.3f (importance sampling, "
                 "MC se %.3f)", self.n_burn, self.n_em, C, self.ofv_, self.ofv_se_)
        return self

    def _final(self, eta: np.ndarray, scales: np.ndarray) -> None:
        """Conditional means/covariances, -2LL by importance sampling, EBEs and FOCE-I's
        covariance at the estimates."""
        theta, omega, error, data = self.theta_, self.omega_, self.error_, self._data
        S, C, q = eta.shape
        samples = []
        for _ in range(self.n_conditional):
            eta, _, _, acc = self._run_estep(theta, omega, error, eta, scales, self.kernels)
            samples.append(eta)
        draws = np.concatenate(samples, axis=1)  # (S, n x C, q)
        cmean = draws.mean(axis=1)
        dev = draws - cmean[:, None, :]
        ccov = np.einsum("ski,skj->sij", dev, dev) / (draws.shape[1] - 1)
        ccov += np.eye(q) * 1e-8 * np.trace(omega) / q
        self.eta_mean_ = cmean
        self.eta_cov_ = ccov
        self.ofv_, self.ofv_se_ = self._importance_sampling(cmean, ccov)
        post = map_estimate(lambda e: self._predict(theta, e), data, omega, error,
                            eta0=cmean, seed=self.seed)
        self.eta_ = post.eta
        if self.standard_errors and self._multi:
            log.warning("SAEM: standard errors come from FOCE-I, which takes one residual "
                        "error model; none computed (%d models)", len(self._log_scale))
        elif self.standard_errors:
            foce = FOCEI(omega_structure=self.omega_structure, max_iter=0,
                         standard_errors=True).fit(self._predict, data, theta, omega, error)
            self.cov_ = foce.cov_
            self.se_ = foce.se_
            self.ofv_focei_ = foce.ofv_
            self.parameter_names_ = foce.parameter_names_

    def _importance_sampling(self, cmean: np.ndarray, ccov: np.ndarray) -> tuple[float, float]:
        """-2LL and its Monte Carlo se (delta method): ``n_importance`` draws per subject from
        a t(5) on its conditional distribution, in-process, from a generator seeded by
        ``seed``."""
        theta, omega, error, data = self.theta_, self.omega_, self.error_, self._data
        S, q = cmean.shape
        M = self.n_importance
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1]))
        L = np.linalg.cholesky(ccov)  # (S, q, q)
        z = rng.standard_normal((S, M, q))
        w = rng.chisquare(_T_DF, (S, M)) / _T_DF
        t = z / np.sqrt(w)[..., None]
        eta = cmean[:, None, :] + np.einsum("sij,smj->smi", L, t)
        # log density of the multivariate t proposal
        nu = _T_DF
        logdet_c = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        quad_t = np.sum(t * t, axis=-1)
        log_q = (gammaln((nu + q) / 2) - gammaln(nu / 2) - 0.5 * q * math.log(nu * math.pi)
                 - 0.5 * logdet_c[:, None] - 0.5 * (nu + q) * np.log1p(quad_t / nu))
        uy = _obs_terms(data, error, self._predict(theta, eta))
        sign, logdet_om = np.linalg.slogdet(2 * math.pi * omega)
        log_prior = -0.5 * _quad(eta, np.linalg.inv(omega)) - 0.5 * logdet_om
        logw = -0.5 * uy + log_prior - log_q
        logw = np.where(np.isfinite(logw), logw, -np.inf)
        ll_i = logsumexp(logw, axis=1) - math.log(M)
        n_quant = int((data.mask & ~data.blq).sum())
        ofv = float(-2.0 * ll_i.sum() + n_quant * math.log(2 * math.pi))
        # delta-method se of -2 sum log mean(w)
        wmax = logw.max(axis=1, keepdims=True)
        ww = np.exp(logw - wmax)
        rel = ww.std(axis=1, ddof=1) / (ww.mean(axis=1) * math.sqrt(M))
        return ofv, float(2.0 * math.sqrt(np.sum(rel**2)))
