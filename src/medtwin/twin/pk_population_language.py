"""Population fits (FOCE-I and SAEM) of a model-language model (a file with ``odes:``).

The thetas named in ``estimate`` (default: all of the file's thetas) are estimated with
Omega (diagonal or full) and the residual error of every observed quantity; the others stay
at the file's values.

**Estimation scale.** A theta whose value in the file is > 0 is estimated on the log scale
(it stays positive), any other as it is; except that a positive theta the model uses as the
*location* of an eta on its natural scale (``exp(TV + ETA)``, ``expit(LOGITEMAX + ETA)``,
``TV + ETA``: the nlmixr2 style, where the theta is already a log or logit) is estimated as it
is, so that its eta is mu-referenced (below). The schema has no per-theta option for it: the
sign of the file's value and that check decide (the report of the fit lists each theta's
scale).

**Mu-referencing** (for SAEM's closed-form M-step): eta ``j`` is mu-referenced to theta ``i``
when the model's predictions depend on them only through ``x_i + eta_j`` (``x_i`` the theta on
its estimation scale), e.g. ``CL: TVCL * (WT / 70) ** 0.75 * exp(ECL)`` or
``exp(log(TVCL) + ECL)`` with TVCL on the log scale. :func:`mu_reference` finds the pairs:
candidates from the generated code of the individual parameters (the thetas an individual
parameter using eta ``j`` depends on, directly or through other individual parameters), each
checked numerically on the solved model: shifting ``x_i`` by +d and ``eta_j`` by -d must
leave every prediction of a few subjects unchanged (to 1e-7 relative) at random etas, while
shifting ``x_i`` alone changes them. Thetas without such an eta get SAEM's Newton steps.

Standard errors are FOCE-I's (2 x inverse Hessian of its -2LL on the estimation scale), for
SAEM evaluated at the SAEM estimates (also with several observed quantities).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medtwin.core.cluster import dask_mapper
from medtwin.core.errors import ValidationError
from medtwin.core.estimate.focei import FOCEI
from medtwin.core.estimate.residual import AnyError, ResidualErrors
from medtwin.core.estimate.saem import SAEM
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.language.model import LanguageModel
from medtwin.twin.pk_language import check_solved, prepare_language

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

_SHIFT = 0.3  # the shift of the numerical mu-reference check
_CHECK_TOL = 1e-7  # relative change of a prediction that still counts as unchanged
_CHECK_SUBJECTS = 4


@dataclass
class LanguagePredictor:
    """``predict(x, eta (S, k, q)) -> (S, k, M)`` of a model-language model, ``x`` the
    estimated thetas on their estimation scale (the others at ``base``). Failed solves are
    NaN (an infinite objective)."""

    model: LanguageModel
    events: dict[str, np.ndarray]
    n_out: int
    base: np.ndarray
    index: np.ndarray
    log_scale: np.ndarray

    def thetas(self, x: np.ndarray) -> np.ndarray:
        """The full theta vector (natural scale) for estimation-scale ``x``."""
        th = self.base.copy()
        x = np.asarray(x, float)
        th[self.index] = np.where(self.log_scale, np.exp(np.clip(x, -700, 700)), x)
        return th

    def __call__(self, x: np.ndarray, eta: np.ndarray) -> np.ndarray:
        S, k = eta.shape[0], eta.shape[1]
        rows = np.repeat(np.arange(S), k)
        out, _ = self.model.solve(eta.reshape(S * k, -1), rows, self.events, self.n_out,
                                  theta=self.thetas(x))
        return out.reshape(S, k, -1)

    def take(self, rows: np.ndarray) -> LanguagePredictor:
        """The predictor of the subjects at ``rows``."""
        return replace(self, events={k: v[rows] for k, v in self.events.items()})


@dataclass(frozen=True)
class LanguageFit:
    """A fitted model-language model (``model``: the file's model with the estimates), the
    estimator (``estimator.se_`` etc.), the estimated thetas (``estimated``, as named in the
    file) with their estimation scale, the mu-referenced eta of each (or None) and the
    subjects."""

    model: LanguageModel
    estimator: FOCEI | SAEM
    estimated: tuple[str, ...]
    log_scale: tuple[bool, ...]
    mu_index: tuple[int | None, ...]
    subjects: tuple[str, ...]

    @property
    def ofv(self) -> float:
        """-2LL: FOCE-I's, or SAEM's by importance sampling."""
        return float(self.estimator.ofv_)

    def fixed_effects(self) -> pd.DataFrame:
        """Thetas with standard errors (delta method from the log scale for log-scale ones)
        and RSE %, the scale each was estimated on, and the eta mu-referenced to it."""
        est = self.estimator
        se_x = getattr(est, "se_", None)
        mu = {i: self.model.etas[j] for j, i in enumerate(self.mu_index) if i is not None}
        rows = []
        for i, name in enumerate(self.estimated):
            x = float(est.theta_[i])
            s = float(se_x[i]) if se_x is not None else math.nan
            if self.log_scale[i]:
                v = math.exp(x)
                se, rse = v * s, 100 * s
            else:
                v = x
                se, rse = s, (100 * s / abs(x) if x else math.nan)
            rows.append({"parameter": name, "unit": self.model.theta_units.get(name, "1"),
                         "estimate": v, "se": se, "rse %": rse,
                         "scale": "log" if self.log_scale[i] else "linear",
                         "eta": mu.get(i, "")})
        return pd.DataFrame(rows)

    def random_effects(self) -> pd.DataFrame:
        """Omega (variances, sds; covariances with a full Omega) and each observed
        quantity's residual sds."""
        om = self.estimator.omega_
        etas = self.model.etas
        rows = [{"parameter": f"omega {e}", "variance": om[i, i], "sd": math.sqrt(om[i, i])}
                for i, e in enumerate(etas)]
        for i in range(len(etas)):
            for j in range(i):
                if om[i, j]:
                    rows.append({"parameter": f"omega {etas[j]},{etas[i]}",
                                 "variance": om[i, j], "sd": math.nan})
        for o in self.model.observations:
            for comp in ("additive_sd", "proportional_sd"):
                v = getattr(o.error, comp)
                if v:
                    label = ("exponential sd" if o.error.log_scale
                             else comp.replace("_sd", " sd"))
                    rows.append({"parameter": f"{o.name} {label}", "variance": v * v,
                                 "sd": v})
        return pd.DataFrame(rows)

    def etas(self) -> pd.DataFrame:
        """Per-subject conditional modes (EBEs)."""
        return pd.DataFrame(self.estimator.eta_, columns=list(self.model.etas),
                            index=pd.Index(self.subjects, name="ID"))


def with_estimates(model: LanguageModel, thetas: dict[str, float], omega: np.ndarray,
                   error: AnyError) -> LanguageModel:
    """``model`` with new theta values (some or all), Omega and residual errors (one per
    observed quantity, in order): the compiled kernels take the thetas as arguments, so the
    result computes at once."""
    unknown = sorted(set(thetas) - set(model.thetas))
    if unknown:
        raise ValidationError(f"unknown theta(s) {unknown}; the model has "
                              f"{list(model.thetas)}", where="thetas")
    errs = error.errors if isinstance(error, ResidualErrors) else (error,)
    if len(errs) != len(model.observations):
        raise ValidationError(f"{len(errs)} residual errors for "
                              f"{len(model.observations)} observed quantities", where="error")
    om = np.asarray(omega, float)
    if om.shape != model.omega.shape:
        raise ValidationError(f"Omega of shape {om.shape}; the model has "
                              f"{len(model.etas)} etas", where="omega")
    obs = tuple(replace(o, error=e) for o, e in zip(model.observations, errs, strict=True))
    return replace(model, thetas={**model.thetas, **{k: float(v) for k, v in thetas.items()}},
                   omega=om.copy(), observations=obs)


# --- mu-referencing ------------------------------------------------------------------------
_LINE = re.compile(r"^\s+v_(\w+) = (.*)$")


def _candidates(model: LanguageModel) -> list[list[int]]:
    """For each eta, the thetas (indices in ``model.thetas``) the individual parameters
    using it depend on, directly or through other individual parameters (read from the
    generated ``params`` kernel)."""
    body = model.source_text.split("def rhs(")[0]
    th_of: dict[str, set[int]] = {}
    eta_of: dict[str, set[int]] = {}
    for line in body.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        name, expr = m.groups()
        th = {int(v) for v in re.findall(r"theta\[(\d+)\]", expr)}
        et = {int(v) for v in re.findall(r"\beta\[(\d+)\]", expr)}
        for dep in re.findall(r"\bv_(\w+)", expr):
            th |= th_of.get(dep, set())
            et |= eta_of.get(dep, set())
        th_of[name], eta_of[name] = th, et
    out: list[list[int]] = []
    for j in range(len(model.etas)):
        found: set[int] = set()
        for name, et in eta_of.items():
            if j in et:
                found |= th_of[name]
        out.append(sorted(found))
    return out


def mu_reference(predict: LanguagePredictor, x0: np.ndarray, omega: np.ndarray,
                 names: Sequence[str], *, seed: int = 0
                 ) -> tuple[list[int | None], np.ndarray]:
    """For each eta, the estimated theta (index in ``names``) it is mu-referenced to, or
    None; and the estimation scale of each theta (True: log), a positive theta switched to
    its natural scale where that (and not the log scale) makes it the location of an eta.
    ``predict`` is the predictor of a few subjects at the file's scales."""
    model = predict.model
    order = list(model.thetas)
    pos = {order.index(n): k for k, n in enumerate(names)}
    cands = _candidates(model)
    S = predict.events["n"].shape[0]
    q = omega.shape[0]
    rng = np.random.default_rng(seed)
    eta = rng.standard_normal((S, 2, q)) * np.sqrt(np.diag(omega)) * 0.5
    log_scale = predict.log_scale.copy()

    def invariant(k: int, j: int, log: bool) -> bool:
        p = replace(predict, log_scale=np.where(np.arange(len(names)) == k, log, log_scale))
        x = x0.copy()
        if log != bool(log_scale[k]):  # the same (positive) value on its natural scale
            x[k] = math.exp(x0[k])
        f0 = p(x, eta)
        xs = x.copy()
        xs[k] += _SHIFT
        es = eta.copy()
        es[..., j] -= _SHIFT
        f1, f2 = p(xs, es), p(xs, eta)
        if not (np.all(np.isfinite(f0)) and np.all(np.isfinite(f1))):
            return False
        scale = float(np.max(np.abs(f0))) or 1.0
        same = np.all(np.abs(f1 - f0) <= _CHECK_TOL * (np.abs(f0) + 1e-3 * scale))
        moves = bool(np.max(np.abs(f2 - f0)) > 1e-4 * scale) if np.all(np.isfinite(f2)) \
            else True
        return bool(same and moves)

    out: list[int | None] = []
    used: set[int] = set()
    for j in range(q):
        ref = None
        for t in cands[j]:
            k = pos.get(t)
            if k is None or k in used:
                continue
            if invariant(k, j, bool(log_scale[k])):
                ref = k
                break
            if log_scale[k] and invariant(k, j, False):
                x0[k] = math.exp(x0[k])
                log_scale[k] = False
                ref = k
                break
        if ref is not None:
            used.add(ref)
        out.append(ref)
    return out, log_scale


# --- fitting -------------------------------------------------------------------------------
def fit_language_population(
    model: LanguageModel,
    table: EventTable,
    *,
    estimate: Sequence[str] | None = None,
    omega_structure: str = "diagonal",
    standard_errors: bool = True,
    client: Client | None = None,
    on_batch: Callable[[int], None] | None = None,
    method: str = "focei",
    saem: SAEM | None = None,
) -> LanguageFit:
    """Fit ``model``'s thetas (``estimate``: default all), Omega and residual errors from
    the file's values by FOCE-I or SAEM (see :func:`medtwin.twin.pk_population.fit_population`,
    which calls this for a model-language model)."""
    if method not in ("focei", "saem"):
        raise ValidationError(f"unknown method {method!r}: 'focei' or 'saem'", where="method")
    names = tuple(estimate if estimate is not None else model.thetas)
    unknown = [n for n in names if n not in model.thetas]
    if unknown or len(set(names)) != len(names):
        raise ValidationError(f"unknown or repeated theta(s) {unknown or list(names)}; the "
                              f"model has {list(model.thetas)}", where="estimate")
    if model.kappas:
        raise ValidationError("population fits of models with inter-occasion variability "
                              "(iov) are not supported yet", where="iov")
    if not model.etas:
        raise ValidationError("a population fit needs random effects (omega)", where="omega")
    data = prepare_language(model, table)
    check_solved(model, data, np.zeros((len(data.subjects), len(model.etas))))
    order = list(model.thetas)
    values = np.array([model.thetas[n] for n in names], float)
    log_scale = values > 0
    predict = LanguagePredictor(model, data.events, data.n_out, model.theta_vector(),
                                np.array([order.index(n) for n in names], np.int64),
                                log_scale)
    x0 = np.where(log_scale, np.log(np.where(log_scale, values, 1.0)), values)
    few = predict.take(np.arange(min(_CHECK_SUBJECTS, len(data.subjects))))
    mu, log_scale = mu_reference(few, x0.copy(), model.omega, names)
    predict = replace(predict, log_scale=log_scale)
    x0 = np.where(log_scale, np.log(np.where(log_scale, values, 1.0)), values)
    log.info("population fit of %s: thetas %s, scales %s, mu-referenced %s", model.name,
             names, ["log" if s else "linear" for s in log_scale], mu)
    errors = model.error
    error0: AnyError = errors.errors[0] if len(errors.errors) == 1 else errors
    mapper = dask_mapper(client) if client is not None else None
    if on_batch is not None:
        from medtwin.twin.pk_population import _signalling

        mapper = _signalling(mapper, on_batch)
    if method == "saem":
        from medtwin.twin.pk_population import saem_estimator

        est = saem_estimator(saem, omega_structure, standard_errors, client, on_batch)
        est.fit(predict, data.observed, x0, model.omega, error0, mu_index=mu,
                subset=predict.take)
        if standard_errors and not hasattr(est, "se_"):
            # several observed quantities: FOCE-I's covariance at the SAEM estimates here
            foce = FOCEI(omega_structure=omega_structure, max_iter=0, standard_errors=True,
                         mapper=dask_mapper(client) if client is not None else None).fit(
                predict, data.observed, est.theta_, est.omega_, est.error_)
            est.cov_, est.se_, est.ofv_focei_ = foce.cov_, foce.se_, foce.ofv_
            est.parameter_names_ = foce.parameter_names_
    else:
        est = FOCEI(omega_structure=omega_structure, standard_errors=standard_errors,
                    mapper=mapper).fit(predict, data.observed, x0, model.omega, error0)
    natural = predict.thetas(est.theta_)
    fitted = with_estimates(model, {n: float(natural[order.index(n)]) for n in names},
                            est.omega_, est.error_)
    return LanguageFit(fitted, est, names, tuple(bool(v) for v in log_scale), tuple(mu),
                       data.subjects)


__all__ = ["LanguageFit", "LanguagePredictor", "fit_language_population", "mu_reference",
           "with_estimates"]
