"""The cardiovascular twin: scenarios (what-if), personalisation to cuff BP, HR, echo EF and CO,
and trials of a drug scenario over a virtual population on Dask.

The model is :mod:`medtwin.models.cardio` (Smith 2004 circulation, Ursino 1998 baroreflex);
runs are heartbeat-resolved (:func:`~medtwin.models.cardio.beats.run_beats`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medtwin.core import codes
from medtwin.core.cohort import Cohort
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.records import Observation
from medtwin.models.cardio.beats import BeatResult, run_beats
from medtwin.models.cardio.parameters import cardio_cohort, check_parameters, default_parameters

log = logging.getLogger(__name__)


# --- scenarios -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A what-if: parameters multiplied by ``factors`` (by label) and a volume ``fluid`` [mL]
    given (negative: lost) evenly over ``fluid_over`` seconds from the scenario's start."""

    name: str
    description: str
    rationale: str
    factors: Mapping[str, float] = field(default_factory=dict)
    fluid: float = 0.0
    fluid_over: float = 60.0


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("baseline", "resting adult, no change", "reference", {}),
    Scenario(
        "hfref", "heart failure with reduced ejection fraction",
        "systolic dysfunction as a lower LV end-systolic elastance with fluid retention (more "
        "stressed volume), as Burkhoff & Tyberg, Am J Physiol 265:H1819, 1993 model LV "
        "failure; LV Ees x 0.4, +300 mL",
        {"E_es_lvf [mmHg/mL]": 0.4}, fluid=300.0, fluid_over=30.0),
    Scenario(
        "haemorrhage", "blood loss of 300 mL over 60 s",
        "loss of stressed volume from the venous reservoir (Smith 2004 lumps only the "
        "stressed 1.5 L; ATLS class II is 15-30% of total volume)", {}, fluid=-300.0,
        fluid_over=60.0),
    Scenario(
        "fluid-bolus", "250 mL crystalloid bolus over 60 s",
        "volume added to the venous reservoir; the model has no capillary leak, so all of it "
        "stays stressed (an upper bound of the response)", {}, fluid=250.0, fluid_over=60.0),
    Scenario(
        "vasodilator", "arterial vasodilator (e.g. nitroprusside)",
        "systemic resistance x 0.7 and arterial elastance x 0.9: arteriolar dilation lowers "
        "SVR, the larger arteries relax less", {"R_sys [mmHg*s/mL]": 0.7, "E_ao [mmHg/mL]": 0.9}),
    Scenario(
        "inotrope", "positive inotrope (e.g. dobutamine)",
        "end-systolic elastance of both ventricles x 1.4 (beta-1 agonism raises contractility) "
        "and systemic resistance x 0.9 (beta-2 vasodilation)",
        {"E_es_lvf [mmHg/mL]": 1.4, "E_es_rvf [mmHg/mL]": 1.4, "R_sys [mmHg*s/mL]": 0.9}),
    Scenario(
        "beta-blocker", "beta-1 blocker (e.g. metoprolol)",
        "heart period x 1.2 (about -17% heart rate) and end-systolic elastances x 0.85 "
        "(negative chronotropy and inotropy)",
        {"T_ref [s]": 1.2, "E_es_lvf [mmHg/mL]": 0.85, "E_es_rvf [mmHg/mL]": 0.85}),
    Scenario(
        "diuretic", "loop diuretic, 200 mL net volume removed",
        "natriuresis removes plasma volume over hours; here its effect on the stressed volume, "
        "compressed to 120 s", {}, fluid=-200.0, fluid_over=120.0),
)}


def scenario_names() -> list[str]:
    """Names of the shipped scenarios."""
    return list(SCENARIOS)


def get_scenario(name: str) -> Scenario:
    """A shipped scenario by name; :class:`NotFoundError` lists the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise NotFoundError(f"unknown cardio scenario {name!r}; known: "
                            f"{', '.join(SCENARIOS)}") from None


def apply_factors(cohort: Cohort, factors: Mapping[str, float]) -> Cohort:
    """A new cohort with each parameter multiplied by its factor (each factor > 0)."""
    table = cohort.table
    for label, f in factors.items():
        if label not in table.columns:
            raise ValidationError("unknown parameter", where=label)
        if not (math.isfinite(f) and f > 0):
            raise ValidationError(f"factor must be > 0, got {f}", where=label)
        table[label] = table[label] * f
    return Cohort(table)


@dataclass(frozen=True)
class WhatIf:
    """Baseline and scenario runs of the same subjects, each summarised over its last beats."""

    scenario: Scenario
    baseline: BeatResult
    result: BeatResult

    def summary(self, n_beats: int = 5) -> pd.DataFrame:
        """Rows: subjects x {baseline, scenario}; columns: beat outputs (last-beat means)."""
        rows = []
        for tag, r in (("baseline", self.baseline), (self.scenario.name, self.result)):
            last = r.last(n_beats)
            for i, s in enumerate(r.subjects):
                rows.append({"subject": s, "run": tag,
                             **{k: float(v[i]) for k, v in last.items() if k != "t_end"}})
        return pd.DataFrame(rows)


def run_scenario(
    scenario: str | Scenario,
    cohort: Cohort | None = None,
    *,
    duration: float = 90.0,
    warmup: float = 30.0,
    dt: float = 0.008,
) -> WhatIf:
    """Run ``cohort`` (default: one resting adult) to steady state for ``warmup`` s, then
    ``duration`` s unchanged (baseline) and under the scenario, from the same state."""
    sc = get_scenario(scenario) if isinstance(scenario, str) else scenario
    cohort = cohort or cardio_cohort(1)
    if not (duration > 0 and warmup >= 0):
        raise ValidationError(f"duration {duration} must be > 0 and warmup {warmup} >= 0 s",
                              where="run_scenario")
    x0 = run_beats(cohort, warmup, dt=dt).final_state if warmup > 0 else None
    base = run_beats(cohort, duration, dt=dt, x0=x0)
    changed = apply_factors(cohort, sc.factors)
    n_steps = int(round(duration / dt))
    fluid = np.zeros((len(cohort), n_steps))
    if sc.fluid:
        k = min(n_steps, int(round(sc.fluid_over / dt)))
        fluid[:, :k] = sc.fluid / (k * dt)
    res = run_beats(changed, duration, dt=dt, x0=x0, fluid=fluid)
    return WhatIf(sc, base, res)


# --- personalisation -----------------------------------------------------------------------
#: LOINC code -> beat output fitted, with the unit expected and the plausible range
OBSERVABLES: dict[str, tuple[str, str, float, float]] = {
    codes.SYSTOLIC_BP: ("SBP", "mm[Hg]", 40.0, 300.0),
    codes.DIASTOLIC_BP: ("DBP", "mm[Hg]", 20.0, 200.0),
    codes.HEART_RATE: ("HR", "/min", 20.0, 250.0),
    codes.EJECTION_FRACTION: ("EF", "1", 0.05, 0.9),
    codes.CARDIAC_OUTPUT: ("CO", "L/min", 0.5, 20.0),
}
#: the parameters fitted by default, with their prior log-scale standard deviations
DEFAULT_FIT: dict[str, float] = {
    "R_sys [mmHg*s/mL]": 0.3,
    "E_ao [mmHg/mL]": 0.3,
    "E_es_lvf [mmHg/mL]": 0.3,
    "V_stressed [mL]": 0.2,
    "T_ref [s]": 0.2,
}


def observed_values(observations: Sequence[Observation]) -> dict[str, float]:
    """The latest value of each fitted observable (by output name), checked: a negative or
    implausible pressure, HR 0 or EF > 1 is a :class:`ValidationError` naming the field.
    EF in % is converted to a fraction; blood-pressure panels give their components."""
    latest: dict[str, tuple[Any, float]] = {}
    flat: list[tuple[str, Any, float | None, str | None]] = []
    for o in observations:
        if not isinstance(o, Observation):
            raise ValidationError(f"expected an Observation, got {type(o).__name__}",
                                  where="observations")
        flat.append((o.code, o.time, o.value, o.unit))
        flat.extend((c.code, o.time, c.value, c.unit) for c in o.components)
    for code, time, value, unit in flat:
        if code not in OBSERVABLES or value is None:
            continue
        name, want, lo, hi = OBSERVABLES[code]
        v = float(value)
        if code == codes.EJECTION_FRACTION and unit == "%":
            v /= 100.0
        elif unit not in (None, want) and not (code == codes.CARDIAC_OUTPUT and unit == "L/min"):
            raise ValidationError(f"unit {unit!r}; expected {want!r}", where=f"{name} ({code})")
        if not (lo <= v <= hi):
            raise ValidationError(f"is {value} {unit or ''}; a plausible {name} lies in "
                                  f"[{lo:g}, {hi:g}] {want}", where=f"{name} ({code})")
        if name not in latest or time >= latest[name][0]:
            latest[name] = (time, v)
    if not latest:
        raise ValidationError(f"none of the fitted codes {sorted(OBSERVABLES)} has a value",
                              where="observations")
    out = {k: v for k, (_, v) in latest.items()}
    if "SBP" in out and "DBP" in out and out["DBP"] >= out["SBP"]:
        raise ValidationError(f"diastolic {out['DBP']:g} >= systolic {out['SBP']:g} mmHg",
                              where="DBP (8462-4)")
    return out


def _checked_mapping(values: Mapping[str, float]) -> dict[str, float]:
    """Output name -> value, checked against the same ranges as the records."""
    by_name = {v[0]: (code, v) for code, v in OBSERVABLES.items()}
    out = {}
    for name, value in values.items():
        if name not in by_name:
            raise ValidationError(f"not a fitted output; use {sorted(by_name)}", where=name)
        code, (_, unit, lo, hi) = by_name[name]
        v = float(value)
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ValidationError(f"is {value}; a plausible {name} lies in [{lo:g}, {hi:g}] "
                                  f"{unit}", where=f"{name} ({code})")
        out[name] = v
    if "SBP" in out and "DBP" in out and out["DBP"] >= out["SBP"]:
        raise ValidationError(f"diastolic {out['DBP']:g} >= systolic {out['SBP']:g} mmHg",
                              where="DBP (8462-4)")
    return out


@dataclass
class CardioFit:
    """MAP estimate of a parameter subset of one patient from steady-state observations.

    Log-normal priors around the resting adult (``prior_sd`` on the log scale), proportional
    residual error ``error_sd``; the reflex is kept open (``baroreflex [1] = 0``) so that the
    fitted values are the patient's resting operating point. ``fit`` returns ``self``; fitted
    attributes end in ``_`` (scikit-learn's contract).
    """

    prior_sd: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FIT))
    error_sd: float = 0.05
    duration: float = 12.0
    base: Mapping[str, float] | None = None

    def _predict(self, names: list[str]) -> Any:
        labels = list(self.prior_sd)
        theta0 = np.array([self.base_[k] for k in labels])

        def predict(eta: np.ndarray) -> np.ndarray:
            """Steady-state outputs ``(k, m)`` for log-deviations ``eta`` ``(k, q)``, all
            candidates in one vectorised run."""
            eta = np.atleast_2d(eta)
            rows = theta0[None, :] * np.exp(eta)
            table = pd.DataFrame([self.base_] * len(rows))
            table.index = [f"c{i}" for i in range(len(rows))]
            for j, lab in enumerate(labels):
                table[lab] = rows[:, j]
            last = run_beats(Cohort(table), self.duration).last(3)
            return np.stack([last[n] for n in names], axis=1)

        return predict

    def fit(self, observations: Sequence[Observation] | Mapping[str, float]) -> CardioFit:
        """Fit to observations (records, or a mapping output name -> value).

        Objective ``sum(((y - f) / (error_sd y))^2) + eta' Omega^-1 eta`` (MAP with a
        proportional error scaled by the observation), minimised by trust-region Gauss-Newton
        (``scipy.optimize.least_squares``) with 1% finite-difference steps: beat extremes are
        sampled, so tiny steps would differentiate sampling noise. Laplace covariance
        ``(J'J)^-1`` of the whitened residuals at the mode.
        """
        from scipy.optimize import least_squares

        base = dict(self.base or default_parameters())
        base["baroreflex [1]"] = 0.0
        check_parameters(base)
        for k, sd in self.prior_sd.items():
            if k not in base:
                raise ValidationError("unknown parameter", where=k)
            if not (math.isfinite(sd) and sd > 0):
                raise ValidationError(f"prior sd must be > 0, got {sd}", where=k)
        if not (math.isfinite(self.error_sd) and self.error_sd > 0):
            raise ValidationError(f"must be > 0, got {self.error_sd}", where="error_sd")
        self.base_ = base
        obs = (_checked_mapping(observations) if isinstance(observations, Mapping)
               else observed_values(observations))
        names = [n for n in ("SBP", "DBP", "HR", "EF", "CO") if n in obs]
        y = np.array([obs[n] for n in names])
        sig = self.error_sd * y
        prior = np.array(list(self.prior_sd.values()))
        predict = self._predict(names)

        def residuals(eta: np.ndarray) -> np.ndarray:
            return np.concatenate([(y - predict(eta)[0]) / sig, eta / prior])

        def jacobian(eta: np.ndarray) -> np.ndarray:
            h = 1e-2
            pts = np.vstack([eta + h * np.eye(len(eta)), eta - h * np.eye(len(eta))])
            f = predict(pts)
            q = len(eta)
            J = np.empty((len(names) + q, q))
            J[: len(names)] = -((f[:q] - f[q:]) / (2 * h)).T / sig[:, None]
            J[len(names):] = np.diag(1.0 / prior)
            return J

        sol = least_squares(residuals, np.zeros(len(prior)), jac=jacobian, method="trf",
                            xtol=1e-6, ftol=1e-8, max_nfev=60)
        J = jacobian(sol.x)
        cov = np.linalg.inv(J.T @ J)
        labels = list(self.prior_sd)
        theta0 = np.array([base[k] for k in labels])
        self.observed_ = dict(zip(names, y, strict=True))
        self.eta_ = sol.x
        self.cov_ = cov
        self.parameters_ = dict(zip(labels, theta0 * np.exp(sol.x), strict=True))
        sd = np.sqrt(np.diag(cov))
        #: 95% interval of each parameter (log-normal Laplace approximation)
        self.interval_ = {k: (v * math.exp(-1.96 * s), v * math.exp(1.96 * s))
                          for (k, v), s in zip(self.parameters_.items(), sd, strict=True)}
        self.log_sd_ = dict(zip(labels, sd, strict=True))
        self.converged_ = bool(sol.success)
        self.predicted_ = dict(zip(names, predict(sol.x)[0], strict=True))
        return self

    def cohort(self) -> Cohort:
        """The fitted patient as a one-subject cohort (reflex back on)."""
        values = dict(self.base_, **self.parameters_)
        values["baroreflex [1]"] = 1.0
        return Cohort(pd.DataFrame([values], index=["patient"]))


# --- cohorts and trials --------------------------------------------------------------------
def virtual_population(
    n: int,
    *,
    cv: Mapping[str, float] | None = None,
    seed: int = 0,
) -> Cohort:
    """``n`` virtual adults: each parameter in ``cv`` log-normal around the resting adult with
    that coefficient of variation (default: resistance, arterial elastance, both ventricles'
    contractility, stressed volume and heart period 15%, 15%, 20%, 10%, 10%)."""
    if not isinstance(n, int) or n < 1:
        raise ValidationError(f"must be an int >= 1, got {n!r}", where="n")
    cv = dict(cv or {"R_sys [mmHg*s/mL]": 0.15, "E_ao [mmHg/mL]": 0.15,
                     "E_es_lvf [mmHg/mL]": 0.2, "E_es_rvf [mmHg/mL]": 0.2,
                     "V_stressed [mL]": 0.1, "T_ref [s]": 0.1})
    base = default_parameters()
    rng = np.random.default_rng(seed)
    table = pd.DataFrame([base] * n, index=[f"virtual#{i + 1:04d}" for i in range(n)])
    for label, c in cv.items():
        if label not in base:
            raise ValidationError("unknown parameter", where=label)
        if not (math.isfinite(c) and c >= 0):
            raise ValidationError(f"cv must be >= 0, got {c}", where=label)
        s = math.sqrt(math.log1p(c * c))
        table[label] = base[label] * np.exp(rng.normal(-0.5 * s * s, s, n))
    return Cohort(table)


def _trial_chunk(scenario: Scenario, cohort: Cohort, duration: float, warmup: float
                 ) -> pd.DataFrame:
    try:  # on a Dask worker, one numba thread: the cluster already uses every core
        from distributed import get_worker

        get_worker()
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    return run_scenario(scenario, cohort, duration=duration, warmup=warmup).summary()


def run_cardio_trial(
    scenario: str | Scenario,
    cohort: Cohort,
    *,
    duration: float = 60.0,
    warmup: float = 30.0,
    chunk_size: int | None = None,
    scheduler: str | None = None,
    n_workers: int = 2,
    processes: bool = True,
) -> pd.DataFrame:
    """A drug (or any) scenario over a cohort, in chunks on Dask like the glucose trials:
    ``scheduler`` ``None`` starts a ``LocalCluster``, ``"tcp://host:port"`` uses one,
    ``"serial"`` runs here. Returns :meth:`WhatIf.summary` rows for every subject."""
    sc = get_scenario(scenario) if isinstance(scenario, str) else scenario
    ids = list(cohort.ids)
    size = chunk_size or max(1, math.ceil(len(ids) / max(1, 2 * n_workers)))
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValidationError(f"must be an int >= 1, got {chunk_size!r}", where="chunk_size")
    parts = [cohort.select(ids[a:a + size]) for a in range(0, len(ids), size)]
    if scheduler == "serial":
        frames = [_trial_chunk(sc, c, duration, warmup) for c in parts]
    else:
        from distributed import Client, LocalCluster

        def gather(client: Client) -> list[pd.DataFrame]:
            futures = [client.submit(_trial_chunk, sc, c, duration, warmup, pure=False)
                       for c in parts]
            return client.gather(futures)

        if scheduler:
            with Client(scheduler) as client:
                frames = gather(client)
        else:
            with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes,
                              dashboard_address=":0", silence_logs=logging.WARNING) as cluster, \
                    Client(cluster) as client:
                frames = gather(client)
    return pd.concat(frames, ignore_index=True)
