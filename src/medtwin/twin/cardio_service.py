"""The cardiovascular twin's use case, shared by the API's ``/twins/{id}/cardio`` and the
dashboard's cardio panel: personalise the twin to the patient's stored cuff BP, HR, echo EF and
CO, run it to its periodic steady state, and forecast the next minutes with the parameters'
uncertainty, unchanged and under a what-if scenario (:data:`~medtwin.twin.cardio.SCENARIOS`).

The forecast band is the spread over draws from the personalised posterior (log-normal around
the MAP estimate, Laplace covariance), each run heartbeat by heartbeat; the posterior mode is
the twin's current state. Nothing here checks access: each front end checks the service's
policy and audits under :data:`CARDIO_RESOURCE` (as for the other twins, :mod:`.service`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd

from medtwin.core.cohort import Cohort
from medtwin.core.errors import NotFoundError, SimulationError, ValidationError
from medtwin.core.records import SNOMED, Condition, Observation
from medtwin.interop.codes import BLOOD_PRESSURE_PANELS
from medtwin.models.cardio.beats import BEAT_NAMES, BEAT_OUTPUTS, BeatResult, run_beats
from medtwin.models.cardio.parameters import default_parameters
from medtwin.models.cardio.smith_ursino import SmithUrsino
from medtwin.store.event_store import EventStore
from medtwin.store.snapshots import latest_snapshot, save_snapshot
from medtwin.twin import cardio_sync
from medtwin.twin.cardio import (
    OBSERVABLES,
    SCENARIOS,
    CardioFit,
    Scenario,
    apply_factors,
    get_scenario,
    observed_values,
)
from medtwin.twin.service import TwinNotReadyError

log = logging.getLogger(__name__)

CARDIO_RESOURCE = "cardio-twin"
MODEL_NAME, MODEL_VERSION = SmithUrsino.name, SmithUrsino.version
#: the what-ifs offered (every shipped scenario but the unchanged baseline)
WHAT_IFS: tuple[str, ...] = tuple(n for n in SCENARIOS if n != "baseline")
#: Diagnoses that give a patient a cardio twin on the dashboard: SNOMED CT concept ids
#: (code system http://snomed.info/sct, International Edition), the general concept and the
#: more specific ones that records (and Synthea) carry.
CARDIAC_CONDITIONS: dict[str, str] = {
    "84114007": "Heart failure (disorder)",
    "88805009": "Chronic congestive heart failure (disorder)",
    "703272007": "Heart failure with reduced ejection fraction (disorder)",
    "38341003": "Hypertensive disorder, systemic arterial (disorder)",
    "59621000": "Essential hypertension (disorder)",
    "414545008": "Ischemic heart disease (disorder)",
    "53741008": "Coronary arteriosclerosis (disorder)",
    "22298006": "Myocardial infarction (disorder)",
    "49436004": "Atrial fibrillation (disorder)",
}
#: stored codes the twin reads: the fitted observables and the blood-pressure panels
CARDIO_CODES: tuple[str, ...] = (*OBSERVABLES, *sorted(BLOOD_PRESSURE_PANELS))
#: beat outputs forecast with a band (each a cycle value: per beat, then on a 1-s grid)
FORECAST_OUTPUTS: tuple[str, ...] = ("MAP", "SBP", "DBP", "HR", "SV", "CO", "EF", "CVP")
UNITS: dict[str, str] = {v.name: v.unit for v in BEAT_OUTPUTS}
N_DRAWS = 40  # posterior draws in the forecast band (plus the mode)
WARMUP = 30.0  # s to the periodic steady state before the forecast starts
MAX_HORIZON = 300.0  # s
MAX_DRAWS = 100
#: at most this many simulated seconds of draws (draws x horizon) per request: a forecast
#: stays a few seconds of work on a shared service
DRAW_BUDGET = 12_000.0
SET_POINT, SET_POINT_RUN = "P_n [mmHg]", 12.0  # the reflex's set point; s of open loop to it
_UNIT = re.compile(r"^(?P<name>.*?)\s*\[(?P<unit>[^\]]*)\]$")


def cardiac_conditions(store: EventStore, patient_id: str) -> list[Condition]:
    """The patient's recorded cardiac diagnoses (:data:`CARDIAC_CONDITIONS`, SNOMED CT)."""
    return [c for c in store.timeline(patient_id, kinds=["condition"])
            if isinstance(c, Condition) and c.code in CARDIAC_CONDITIONS
            and c.system in (SNOMED, "", None)]


@dataclass(frozen=True)
class ParameterEstimate:
    """One personalised parameter: its MAP estimate and 95% interval, in ``unit``."""

    label: str  # as in the parameter data, unit in brackets
    name: str
    unit: str
    estimate: float
    low: float
    high: float
    log_sd: float


@dataclass(frozen=True)
class Posterior:
    """The personalised parameter subset: log-deviations ``eta`` from ``base`` (labels in
    order) with covariance ``cov``; what it was fitted to and how well."""

    labels: tuple[str, ...]
    eta: np.ndarray
    cov: np.ndarray
    observed: dict[str, float]
    predicted: dict[str, float]
    converged: bool
    method: str
    base: dict[str, float] = field(default_factory=default_parameters)

    def estimates(self) -> list[ParameterEstimate]:
        """Each parameter's mode and 95% interval (log-normal Laplace approximation)."""
        sd = np.sqrt(np.clip(np.diag(self.cov), 0.0, None))
        out = []
        for label, e, s in zip(self.labels, self.eta, sd, strict=True):
            v = self.base[label] * math.exp(float(e))
            m = _UNIT.match(label)
            name, unit = (m["name"], m["unit"]) if m else (label, "")
            out.append(ParameterEstimate(label, name, unit, v, v * math.exp(-1.96 * s),
                                         v * math.exp(1.96 * s), float(s)))
        return out

    def cohort(self, etas: np.ndarray, ids: Sequence[str]) -> Cohort:
        """Subjects with the fitted labels at ``theta0 exp(eta)`` (reflex on)."""
        table = pd.DataFrame([dict(self.base, **{"baroreflex [1]": 1.0})] * len(ids),
                             index=list(ids))
        for j, label in enumerate(self.labels):
            table[label] = self.base[label] * np.exp(etas[:, j])
        return Cohort(table)

    def payload(self, cutoff: datetime) -> dict[str, object]:
        """As stored in a twin snapshot."""
        return {"kind": "cardio-map", "method": self.method, "labels": list(self.labels),
                "eta": [float(x) for x in self.eta], "cov": self.cov.tolist(),
                "observed": self.observed, "predicted": self.predicted,
                "converged": self.converged, "cutoff": cutoff.isoformat()}

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> Posterior:
        """Back from :meth:`payload`."""
        return cls(tuple(payload["labels"]), np.asarray(payload["eta"], dtype=float),  # type: ignore[arg-type]
                   np.asarray(payload["cov"], dtype=float), dict(payload["observed"]),  # type: ignore[call-overload]
                   dict(payload["predicted"]), bool(payload["converged"]),  # type: ignore[call-overload]
                   str(payload["method"]))


def map_posterior(observations: Sequence[Observation]) -> Posterior:
    """MAP fit of the default parameter subset to the latest of each observable
    (:class:`~medtwin.twin.cardio.CardioFit`)."""
    fit = CardioFit().fit(observations)
    return Posterior(tuple(fit.parameters_), np.asarray(fit.eta_), np.asarray(fit.cov_),
                     {k: float(v) for k, v in fit.observed_.items()},
                     {k: float(v) for k, v in fit.predicted_.items()}, fit.converged_,
                     "MAP (trust-region Gauss-Newton, Laplace covariance)")


@dataclass(frozen=True)
class CardioView:
    """The cardio twin brought up to date: its state now, its parameters, the forecast band
    and, given a scenario, the what-if's. Band frames: ``output, seconds, time, mean, p05,
    p95`` (seconds after ``twin_time``)."""

    patient_id: str
    twin_time: datetime
    observed: dict[str, float]
    current: dict[str, float]
    steady_state: bool
    parameters: list[ParameterEstimate]
    forecast: pd.DataFrame
    posterior: Posterior
    horizon: float
    draws: int
    collapsed: int
    scenario: Scenario | None = None
    what_if: dict[str, float] | None = None
    what_if_forecast: pd.DataFrame | None = None
    what_if_collapsed: int = 0
    snapshot_version: int | None = None
    model: str = MODEL_NAME
    model_version: str = MODEL_VERSION


def reset_set_point(cohort: Cohort) -> Cohort:
    """The cohort with each subject's baroreflex set point ``P_n`` at the MAP it has with the
    reflex open (the operating point the fit personalised), so that closing the reflex keeps
    the fitted state and the reflex acts only on changes from it: the arterial baroreflex
    resets to a sustained pressure (Chapleau, Hajduczok & Abboud, Am J Med Sci 295:327, 1988).
    """
    table = cohort.table
    open_loop = table.assign(**{"baroreflex [1]": 0.0})
    table[SET_POINT] = run_beats(Cohort(open_loop), SET_POINT_RUN).last(3)["MAP"]
    table["baroreflex [1]"] = 1.0
    return Cohort(table)


def _grid_values(res: BeatResult, grid: np.ndarray) -> np.ndarray:
    """Beat outputs of each subject interpolated in time onto ``grid``: ``(n, outputs, g)``.
    The first beat of a run started mid-cycle is partial (its HR and volumes are not a
    beat's): it is left out, the grid before the first whole beat takes that beat's values."""
    t = res["t_end"]
    cols = [BEAT_NAMES.index(o) for o in FORECAST_OUTPUTS]
    out = np.full((len(res.subjects), len(cols), len(grid)), np.nan)
    for i in range(len(res.subjects)):
        nb = int(res.n_beats[i])
        if nb < 2:
            raise SimulationError(f"subject {res.subjects[i]!r} made fewer than two beats in "
                                  f"{grid[-1]:g} s: no cycle values to forecast")
        for k, c in enumerate(cols):
            out[i, k] = np.interp(grid, t[i, 1:nb], res.beats[i, 1:nb, c])
    return out


@dataclass(frozen=True)
class _Runs:
    """Per subject: whether it ran (unchanged, under the scenario), periodic steady state,
    grid series ``(n, outputs, g)`` and last-beat means, unchanged and under the scenario
    (NaN where it did not run; the scenario's all NaN without one)."""

    ok: np.ndarray
    alt_ok: np.ndarray
    steady: np.ndarray
    base: np.ndarray
    alt: np.ndarray
    base_last: dict[str, np.ndarray]
    alt_last: dict[str, np.ndarray]

    @classmethod
    def failed(cls, n: int, g: int) -> _Runs:
        """``n`` subjects that did not run."""
        k = len(FORECAST_OUTPUTS)
        return cls(np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool),
                   np.full((n, k, g), np.nan), np.full((n, k, g), np.nan),
                   {v: np.full(n, np.nan) for v in BEAT_NAMES},
                   {v: np.full(n, np.nan) for v in BEAT_NAMES})

    @classmethod
    def concat(cls, parts: Sequence[_Runs]) -> _Runs:
        """The subjects of ``parts`` in order."""
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(r, name) for r in parts])
        return cls(cat("ok"), cat("alt_ok"), cat("steady"), cat("base"), cat("alt"),
                   {v: np.concatenate([r.base_last[v] for r in parts]) for v in BEAT_NAMES},
                   {v: np.concatenate([r.alt_last[v] for r in parts]) for v in BEAT_NAMES})


def _run(cohort: Cohort, scenario: Scenario | None, horizon: float, grid: np.ndarray) -> _Runs:
    """Reset each subject's baroreflex set point to its own open-loop MAP, warm up to steady
    state, then ``horizon`` s unchanged and under the scenario, all subjects at once."""
    cohort = reset_set_point(cohort)
    warm = run_beats(cohort, WARMUP)
    base = run_beats(cohort, horizon, x0=warm.final_state)
    n = len(cohort)
    out = _Runs.failed(n, len(grid))
    out = replace(out, ok=np.ones(n, bool), steady=base.steady_beat() >= 0,
                  base=_grid_values(base, grid), base_last=base.last(5))
    if scenario is None:
        return out
    dt = 0.008
    steps = int(round(horizon / dt))
    fluid = np.zeros((n, steps))
    if scenario.fluid:
        k = min(steps, int(round(scenario.fluid_over / dt)))
        fluid[:, :k] = scenario.fluid / (k * dt)
    try:
        res = run_beats(apply_factors(cohort, scenario.factors), horizon, dt=dt,
                        x0=warm.final_state, fluid=fluid)
    except SimulationError:
        if n == 1:  # it runs unchanged; only its what-if collapsed
            return out
        raise
    return replace(out, alt_ok=np.ones(n, bool), alt=_grid_values(res, grid),
                   alt_last=res.last(5))


def _run_split(cohort: Cohort, scenario: Scenario | None, horizon: float, grid: np.ndarray
               ) -> _Runs:
    """As :func:`_run`; when a subject's circulation collapses (or its integration
    diverges), every subject is run alone (as fast at these sizes: the kernels loop over
    subjects) and that one is marked as not run: its numbers are never returned."""
    try:
        return _run(cohort, scenario, horizon, grid)
    except SimulationError:
        if len(cohort) == 1:
            return _Runs.failed(1, len(grid))
    return _Runs.concat([_run_split(cohort.select([sid]), scenario, horizon, grid)
                         for sid in cohort.ids])


def _band(values: np.ndarray, ok: np.ndarray, grid: np.ndarray, t0: datetime) -> pd.DataFrame:
    """Mean and 5th/95th percentiles over the subjects that ran, per output and time."""
    v = values[ok]
    rows = []
    times = [t0 + timedelta(seconds=float(s)) for s in grid]
    for k, name in enumerate(FORECAST_OUTPUTS):
        mean = v[:, k].mean(axis=0)
        lo, hi = np.percentile(v[:, k], [5, 95], axis=0)
        rows.append(pd.DataFrame({"output": name, "seconds": grid, "time": times,
                                  "mean": mean, "p05": lo, "p95": hi}))
    return pd.concat(rows, ignore_index=True)


def _observations(store: EventStore, patient_id: str) -> list[Observation]:
    return [o for o in store.timeline(patient_id, kinds=["observation"], codes=list(CARDIO_CODES))
            if isinstance(o, Observation)]


def _personalise(store: EventStore, patient_id: str, observations: list[Observation],
                 cutoff: datetime, fit: Callable[[Sequence[Observation]], Posterior]
                 ) -> tuple[Posterior, int | None]:
    """The posterior for the data up to ``cutoff``: the last snapshot's when it was fitted to
    the same values, else a new fit (stored as the next snapshot)."""
    snap = latest_snapshot(store, patient_id, model=MODEL_NAME)
    if snap is not None and snap.payload.get("kind") == "cardio-map" \
            and snap.payload.get("cutoff") == cutoff.isoformat() \
            and snap.model_version == MODEL_VERSION:
        try:
            return Posterior.from_payload(snap.payload), snap.version
        except (KeyError, TypeError, ValueError):
            log.warning("an unreadable cardio twin snapshot is refitted")
    posterior = fit(observations)
    snap = save_snapshot(store, patient_id, posterior.payload(cutoff), model=MODEL_NAME,
                         model_version=MODEL_VERSION, twin_time=cutoff)
    return posterior, snap.version


def live_posterior(store: EventStore, patient_id: str) -> tuple[Posterior, int | None] | None:
    """The live cardio twin's posterior (:func:`~medtwin.twin.cardio_sync.personalise_from_store`:
    an ensemble Kalman filter over every trusted vital, snapshotted), as independent
    log-normals from its intervals; None while it has no reading."""
    est = cardio_sync.personalise_from_store(store, patient_id)
    if not est.started:
        return None
    z = NormalDist().inv_cdf(0.5 + est.level / 2.0)
    base = {**default_parameters(), **est.base}
    labels = tuple(est.parameters)
    eta = np.array([math.log(math.sqrt(p.lower * p.upper) / base[k])
                    for k, p in est.parameters.items()])
    log_sd = np.array([math.log(p.upper / p.lower) / (2.0 * z) for p in est.parameters.values()])
    snap = latest_snapshot(store, patient_id, model=cardio_sync.SNAPSHOT_MODEL)
    return Posterior(labels, eta, np.diag(log_sd ** 2), {}, {k: b.mean for k, b in
                                                             est.vitals.items()},
                     True, f"ensemble Kalman filter over {est.n_readings} reading(s)",
                     base), (snap.version if snap else None)


def cardio_view(store: EventStore, patient_id: str, *, scenario: str | None = None,
                horizon: float = 120.0, draws: int = N_DRAWS, seed: int = 0,
                personalise: Literal["live", "map"] = "live") -> CardioView:
    """Personalise the patient's cardio twin to the stored BP, HR, EF and CO, then forecast
    ``horizon`` s with a band from ``draws`` posterior draws, unchanged and, given
    ``scenario``, under it from the same state. Nothing of the scenario is stored.

    ``personalise="live"``: the live twin's filter (:func:`live_posterior`); should it fail
    (its ensemble collapsed) the MAP fit is used and ``method`` says so. ``"map"``: the MAP
    fit of the latest value of each reading (reused from the last snapshot while nothing new
    arrived).

    Raises :class:`NotFoundError` (no such patient, or an unknown scenario),
    :class:`TwinNotReadyError` (no BP, HR, EF or CO stored) or :class:`ValidationError` (an
    implausible stored value, named; a horizon out of range).
    """
    if not (isinstance(horizon, int | float) and 10.0 <= horizon <= MAX_HORIZON):
        raise ValidationError(f"must be 10-{MAX_HORIZON:g} s, got {horizon!r}", where="horizon")
    if isinstance(draws, bool) or not isinstance(draws, int) or not 4 <= draws <= MAX_DRAWS:
        raise ValidationError(f"must be an int 4-{MAX_DRAWS}, got {draws!r}", where="draws")
    if draws * horizon > DRAW_BUDGET:
        raise ValidationError(f"{draws} draws x {horizon:g} s is more than {DRAW_BUDGET:g} "
                              "simulated seconds: use fewer draws or a shorter horizon",
                              where="draws")
    sc = None
    if scenario is not None:
        if scenario not in WHAT_IFS:
            raise ValidationError(f"unknown scenario {scenario!r}; use one of "
                                  f"{', '.join(WHAT_IFS)}", where="scenario")
        sc = get_scenario(scenario)
    if not store.has_patient(patient_id):
        raise NotFoundError(f"no patient {patient_id!r}")
    observations = _observations(store, patient_id)
    usable = [o for o in observations if o.code in OBSERVABLES
              or any(c.code in OBSERVABLES for c in o.components)]
    if not usable:
        raise TwinNotReadyError("no blood pressure, heart rate, ejection fraction or cardiac "
                                "output stored for this patient: the cardio twin has nothing "
                                "to personalise from")
    cutoff = max(o.time for o in usable)
    live = None
    if personalise == "live":
        try:
            live = live_posterior(store, patient_id)
        except SimulationError as exc:
            log.warning("the live cardio twin failed (%s): MAP fit instead", exc)
    if live is not None:
        posterior, version = live
        posterior = replace(posterior, observed=observed_values(usable))
    else:
        posterior, version = _personalise(store, patient_id, usable, cutoff, map_posterior)
        if personalise == "live":
            posterior = replace(posterior, method=posterior.method + " (the live filter "
                                "could not run)")
    rng = np.random.default_rng(seed)
    sd = np.sqrt(np.clip(np.diag(posterior.cov), 0.0, None))
    chol = np.linalg.cholesky(posterior.cov + 1e-12 * np.eye(len(sd)))
    z = np.clip(rng.standard_normal((draws, len(sd))), -3.0, 3.0)
    etas = np.vstack([posterior.eta, posterior.eta + z @ chol.T])
    etas = np.clip(etas, posterior.eta - 3 * sd, posterior.eta + 3 * sd)
    cohort = posterior.cohort(etas, ["mode"] + [f"draw{i}" for i in range(draws)])
    grid = np.arange(0.0, float(horizon) + 1e-9, 1.0)
    runs = _run_split(cohort, sc, float(horizon), grid)
    if not runs.ok[0]:
        raise SimulationError("the personalised cardio twin does not run: its circulation "
                              "collapsed at the fitted parameters (check the stored BP, HR, "
                              "EF and CO)")
    current = {k: float(v[0]) for k, v in runs.base_last.items() if k != "t_end"}
    view = CardioView(
        patient_id=patient_id, twin_time=cutoff, observed=posterior.observed, current=current,
        steady_state=bool(runs.steady[0]), parameters=posterior.estimates(),
        forecast=_band(runs.base, runs.ok, grid, cutoff), posterior=posterior,
        horizon=float(horizon), draws=draws, collapsed=int((~runs.ok).sum()),
        snapshot_version=version)
    if sc is None:
        return view
    alive = runs.ok & runs.alt_ok
    if not alive[0]:
        raise SimulationError(f"under {sc.name!r} the patient's circulation collapses in the "
                              "twin (no numbers are returned for it)")
    what_if = {k: float(v[0]) for k, v in runs.alt_last.items() if k != "t_end"}
    return replace(view, scenario=sc, what_if=what_if,
                   what_if_forecast=_band(runs.alt, alive, grid, cutoff),
                   what_if_collapsed=int((runs.ok & ~runs.alt_ok).sum()))
