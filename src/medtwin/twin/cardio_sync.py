"""Keep each patient's cardiovascular twin in step with live vitals, with its uncertainty.

``personalise_from_store(store, patient_id)`` loads the patient's latest live-twin snapshot
(or starts from the resting adult prior), reads the vitals appended since its data cut-off
through the store's trusted feed (``records_after``: quarantined, future-dated or deleted
readings never reach the twin), assimilates them with the engine's ensemble Kalman filter
(:class:`~medtwin.core.estimate.EnsembleKalmanFilter`), stores a new snapshot and returns a
:class:`CardioEstimate`: each learned parameter's posterior mean, sd and interval, the vitals
the twin now predicts with their band, and a forecast band over the next hours.

What is learned: the parameters of :data:`medtwin.twin.cardio.DEFAULT_FIT` (systemic
resistance, aortic elastance, LV contractility, stressed volume, heart period), log-normal
priors around the resting adult (or a given ``base``, e.g. a MAP fit), each drifting as a slow
random walk (``walk_sd_per_sqrt_h``) so the twin follows a patient who changes. The reflex is
kept open, as in :class:`~medtwin.twin.cardio.CardioFit`: the parameters are the patient's
resting operating point. What is observed: HR, SBP, DBP, MAP, EF, CO (LOINC codes from
:mod:`medtwin.core.codes`; blood-pressure panels give their components), each the twin's
mean over its last three beats, with a Gaussian error (``noise_sd``).

Time policy (documented, not hidden): the circulation forgets its starting state within a few
beats (12 s from rest agree with 40 s within 0.1 mmHg), so each update runs ``settle_s``
seconds of heartbeats from the members' current states, whatever the gap between readings;
the random walk of the parameters uses the real gap. Readings within ``window_s`` of the first
one of a group are one update (each vital's mean over the group). The six volumes of a member
are rescaled to its stressed volume before each run, so a learned ``V_stressed`` acts.

Late readings (dated before the twin's time): the twin is rebuilt from the newest stored
snapshot at or before the oldest new reading (``snapshot_at``) and every record after that
snapshot's cut-off is assimilated again in time order: a late reading lands where it belongs.
A reading with an implausible value or an unknown unit is not assimilated and is listed in
``flags`` (the stored record is kept as it is).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from medtwin.core import codes
from medtwin.core.cohort import Cohort
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.estimate import (
    Dynamics,
    EnsembleKalmanFilter,
    LearnedParameter,
    NoiseModel,
    ObservationModel,
    Reading,
)
from medtwin.core.records import Observation
from medtwin.models.cardio import smith_ursino as su
from medtwin.models.cardio.beats import BEAT_OUTPUTS, run_beats
from medtwin.models.cardio.parameters import check_parameters, default_parameters
from medtwin.store.event_store import EventStore
from medtwin.store.snapshots import latest_snapshot, save_snapshot, snapshot_at
from medtwin.twin.cardio import DEFAULT_FIT, OBSERVABLES

log = logging.getLogger(__name__)

#: the snapshots of the live twin (the MAP fit of ``cardio_service`` keeps its own)
SNAPSHOT_MODEL = f"{su.SmithUrsino.name}+live"
MODEL_VERSION = f"{su.SmithUrsino.version}+enkf-1"
SNAPSHOT_FORMAT = 1
#: vitals the twin assimilates: LOINC code -> (beat output, unit, plausible low, high);
#: the fitted codes of ``twin.cardio`` plus mean arterial pressure
VITALS: dict[str, tuple[str, str, float, float]] = {
    **OBSERVABLES, codes.MEAN_BP: ("MAP", "mm[Hg]", 30.0, 250.0)}
VITAL_NAMES = ("HR", "SBP", "DBP", "MAP", "EF", "CO")
_UNITS = {"mm[Hg]": ("mm[Hg]", "mmHg"), "/min": ("/min", "{beats}/min", "beats/min", "bpm"),
          "1": ("1", "", "{ratio}"), "L/min": ("L/min",)}
_PAGE = 1000
#: least wall-clock seconds between two live-loop updates of one patient's twin (the live
#: loop's default, ``medtwin.live.sync.CardioHook``; setting ``cardio_twin_interval_seconds``):
#: an update costs about 0.1 s per 5-min group of new vitals on one core, so a minute keeps a
#: ward of hundreds of cardiac patients within one core while the twin lags at most a minute
LIVE_MIN_INTERVAL_S = 60.0


@dataclass(frozen=True)
class CardioSyncSettings:
    """Tuning of the live cardio twin (units in the names; see the module doc)."""

    n_members: int = 32
    prior_sd: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FIT))
    walk_sd_per_sqrt_h: float = 0.02
    noise_sd: Mapping[str, float] = field(default_factory=lambda: {
        "HR": 3.0, "SBP": 6.0, "DBP": 5.0, "MAP": 5.0, "EF": 0.04, "CO": 0.4})
    settle_s: float = 8.0
    first_settle_s: float = 14.0
    window_s: float = 300.0
    level: float = 0.9
    forecast_min: tuple[float, ...] = (0.0, 15.0, 60.0, 240.0)
    forecast_samples: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n_members, int) or self.n_members < 8:
            raise ValidationError(f"must be an int >= 8, got {self.n_members!r}",
                                  where="n_members")
        labels = set(default_parameters())
        for k, v in self.prior_sd.items():
            if k not in labels:
                raise ValidationError("unknown parameter", where=f"prior_sd[{k}]")
            if not (math.isfinite(v) and v > 0):
                raise ValidationError(f"must be > 0, got {v}", where=f"prior_sd[{k}]")
        for k, v in self.noise_sd.items():
            if k not in VITAL_NAMES:
                raise ValidationError(f"not a vital; use {VITAL_NAMES}", where=f"noise_sd[{k}]")
            if not (math.isfinite(v) and v > 0):
                raise ValidationError(f"must be > 0, got {v}", where=f"noise_sd[{k}]")
        for name in ("walk_sd_per_sqrt_h", "settle_s", "first_settle_s", "window_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0) or (name.endswith("settle_s") and v < 2):
                raise ValidationError(f"must be finite and >= 0 (settling >= 2 s), got {v}",
                                      where=name)
        if not 0 < self.level < 1:
            raise ValidationError(f"must be in (0, 1), got {self.level}", where="level")
        if any(not (math.isfinite(m) and m >= 0) for m in self.forecast_min) or \
                list(self.forecast_min) != sorted(self.forecast_min):
            raise ValidationError("must be ascending minutes >= 0", where="forecast_min")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["prior_sd"], d["noise_sd"] = dict(self.prior_sd), dict(self.noise_sd)
        d["forecast_min"] = list(self.forecast_min)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CardioSyncSettings:
        """Rebuild from :meth:`to_dict`."""
        return cls(**{**d, "forecast_min": tuple(d["forecast_min"])})


# --- typed results ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ParameterEstimate:
    """Posterior of one learned parameter (``label`` carries the unit)."""

    label: str
    mean: float
    sd: float
    lower: float
    upper: float
    prior: float


@dataclass(frozen=True)
class VitalBand:
    """The twin's predicted value of one vital ``minutes`` after its time, with its band
    (the spread of the parameters' posterior, not of a single reading)."""

    name: str
    unit: str
    loinc: str | None
    minutes: float
    mean: float
    lower: float
    upper: float


@dataclass(frozen=True)
class CardioEstimate:
    """The live cardio twin of one patient: what ``personalise_from_store`` returns."""

    patient_id: str
    started: bool
    time: datetime | None
    n_readings: int
    level: float
    parameters: dict[str, ParameterEstimate]
    vitals: dict[str, VitalBand]
    forecast: list[VitalBand]
    flags: list[dict[str, Any]]
    data_cutoff: int
    #: the prior centre of every parameter (the learned ones' ``prior`` too), reflex open
    base: Mapping[str, float] = field(default_factory=dict)
    model: str = su.SmithUrsino.name
    model_version: str = MODEL_VERSION

    def cohort(self) -> Cohort:
        """The posterior-mean patient as a one-subject cohort (reflex back on), for what-ifs
        (``twin.cardio.run_scenario``)."""
        if not self.started:
            raise ValidationError("the live cardio twin has no reading yet", where="cohort")
        values = default_parameters()
        values.update(self.base)
        values.update({k: p.mean for k, p in self.parameters.items()})
        values["baroreflex [1]"] = 1.0
        return Cohort(pd.DataFrame([values], index=["patient"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (no patient identifier beyond the id given)."""
        return {
            "patient_id": self.patient_id, "started": self.started,
            "time": None if self.time is None else self.time.isoformat(),
            "n_readings": self.n_readings, "level": self.level,
            "parameters": {k: asdict(v) for k, v in self.parameters.items()},
            "vitals": {k: asdict(v) for k, v in self.vitals.items()},
            "forecast": [asdict(v) for v in self.forecast], "flags": self.flags,
            "data_cutoff": self.data_cutoff, "model": self.model,
            "model_version": self.model_version,
        }


# --- the dynamics: heartbeats to a periodic steady state ---------------------------------------
_UNIT_OF = {v.name: v.unit for v in BEAT_OUTPUTS}
_LOINC_OF = {v.name: v.loinc for v in BEAT_OUTPUTS}


class BeatDynamics(Dynamics):
    """Members run ``settle_s`` seconds of heartbeats (``first_settle_s`` from the model's
    initial state); outputs: the six vitals averaged over each member's last three beats."""

    def __init__(self, settle_s: float, first_settle_s: float) -> None:
        self.model = su.SmithUrsino()
        self.settle_s = settle_s
        self.first_settle_s = first_settle_s
        self._labels = list(self.model.parameter_labels)
        self.collapsed_: list[int] = []  # members without a circulation in the last run
        self.rescue = False  # run a failed ensemble member by member (``_one_by_one``)

    def initial(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's initial state, marked (phase < 0 is impossible) as not yet settled."""
        x, m = super().initial(p)
        x[:, su.PHI] = -1.0
        return x, m

    def outputs(self, x: np.ndarray, m: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        """Settles and reports (the vitals are beat averages: there is no instantaneous
        value); the states are left unchanged."""
        return self.propagate(0.0, 0.0, x.copy(), m, p)

    def propagate(self, t0: float, t1: float, x: np.ndarray, m: np.ndarray, p: np.ndarray
                  ) -> dict[str, np.ndarray]:
        fresh = x[:, su.PHI] < 0
        x0 = x.copy()
        x0[fresh, su.PHI] = 0.0
        # the members' volumes carry their (learned) stressed volume
        vol = x0[:, su.VOLUMES]
        x0[:, su.VOLUMES] = vol * (p[:, su.VSTR] / vol.sum(axis=1))[:, None]
        cohort = Cohort(pd.DataFrame(p, columns=self._labels,
                                     index=[f"member#{i}" for i in range(p.shape[0])]))
        duration = self.first_settle_s if fresh.any() else self.settle_s
        try:
            res = run_beats(cohort, duration, x0=x0)
        except SimulationError:
            if not self.rescue:
                raise
            return self._one_by_one(cohort, p, x, x0, fresh)
        x[:] = res.final_state
        last = res.last(3)
        return {k: np.asarray(last[k], dtype=float) for k in VITAL_NAMES}

    def _one_by_one(self, cohort: Cohort, p: np.ndarray, x: np.ndarray, x0: np.ndarray,
                    fresh: np.ndarray) -> dict[str, np.ndarray]:
        """A member whose analysis moved its parameters far from the state it carries can
        collapse when started from that state (e.g. little volume left in the vena cava at a
        higher resistance): each member is run alone, and one that fails from its own state
        is settled again from the model's initial state (``first_settle_s``; the circulation
        forgets its start within a few beats). A member that cannot run even from there has
        parameters without a circulation: the :class:`SimulationError` stands."""
        rest, _ = super().initial(p)
        out = {k: np.empty(len(cohort)) for k in VITAL_NAMES}
        restarted, collapsed = 0, []
        for i, sid in enumerate(cohort.ids):
            one = cohort.select([sid])
            try:
                res = run_beats(one, self.first_settle_s if fresh[i] else self.settle_s,
                                x0=x0[i:i + 1])
            except SimulationError:
                restarted += 1
                try:
                    res = run_beats(one, self.first_settle_s, x0=rest[i:i + 1])
                except SimulationError:
                    collapsed.append(i)
                    continue
            x[i] = res.final_state[0]
            last = res.last(3)
            for k in VITAL_NAMES:
                out[k][i] = float(np.asarray(last[k], dtype=float)[0])
        self.collapsed_ = collapsed
        if collapsed:
            raise SimulationError(f"{len(collapsed)} ensemble member(s) have no circulation at "
                                  "their parameters (they collapse even from rest)")
        log.info("live cardio twin: %d member(s) settled again from rest", restarted)
        return out


# --- the filter --------------------------------------------------------------------------------
def _base_parameters(base: Mapping[str, float] | None) -> dict[str, float]:
    values = default_parameters()
    for k, v in (base or {}).items():
        if k not in values:
            raise ValidationError("unknown parameter", where=f"base[{k}]")
        values[k] = float(v)
    values["baroreflex [1]"] = 0.0
    check_parameters(values)
    return values


def make_filter(settings: CardioSyncSettings, base: Mapping[str, float] | None = None
                ) -> EnsembleKalmanFilter:
    """The engine's ensemble Kalman filter configured for the cardio twin (module doc)."""
    values = _base_parameters(base)
    walk = settings.walk_sd_per_sqrt_h / 60.0  # per sqrt(s): the model's time unit
    learn = [LearnedParameter(k, values[k], sd, transform="log", walk_sd=walk)
             for k, sd in settings.prior_sd.items()]
    noise = {**CardioSyncSettings().noise_sd, **settings.noise_sd}
    obs = [ObservationModel(n, n, NoiseModel(sd=noise[n])) for n in VITAL_NAMES]
    return EnsembleKalmanFilter(
        BeatDynamics(settings.settle_s, settings.first_settle_s), values, learn, obs,
        updated_states=(), n_members=settings.n_members, seed=settings.seed)


def vital_readings(observations: Sequence[Observation]) -> tuple[list[tuple[datetime, str,
                                                                          float, str]],
                                                                list[dict[str, Any]]]:
    """``(time, vital, value, source_id)`` of each usable vital (panels split into parts,
    EF in % as a fraction) and the flags of those refused (implausible value, unknown unit)."""
    out, flags = [], []
    for o in observations:
        parts = [(o.code, o.value, o.unit)] + [(c.code, c.value, c.unit) for c in o.components]
        for code, value, unit in parts:
            if code not in VITALS or value is None:
                continue
            name, want, lo, hi = VITALS[code]
            v = float(value)
            if code == codes.EJECTION_FRACTION and unit == "%":
                v /= 100.0
            elif unit is not None and unit not in _UNITS[want]:
                flags.append({"source_id": o.source_id, "time": o.time.isoformat(),
                              "reason": f"{name} in unit {unit!r}; expected {want!r}"})
                continue
            if not (math.isfinite(v) and lo <= v <= hi):
                flags.append({"source_id": o.source_id, "time": o.time.isoformat(),
                              "reason": f"{name} = {value} {unit or ''} is outside the "
                                        f"plausible [{lo:g}, {hi:g}] {want}: not assimilated"})
                continue
            out.append((o.time, name, v, o.source_id))
    return out, flags


def group_readings(vitals: Sequence[tuple[datetime, str, float, str]], origin: datetime,
                   window_s: float) -> list[Reading]:
    """One :class:`Reading` per group of vitals within ``window_s`` of the group's first (at
    the group's last time, each vital's mean), times in seconds since ``origin``."""
    groups: list[list[tuple[datetime, str, float, str]]] = []
    for v in sorted(vitals, key=lambda r: r[0]):
        if groups and (v[0] - groups[-1][0][0]).total_seconds() <= window_s:
            groups[-1].append(v)
        else:
            groups.append([v])
    out = []
    for g in groups:
        values: dict[str, list[float]] = {}
        for _, name, value, _ in g:
            values.setdefault(name, []).append(value)
        t = (g[-1][0] - origin).total_seconds()
        out.append(Reading(t, {k: float(np.mean(v)) for k, v in values.items()},
                           ",".join(s for *_, s in g)))
    return out


@dataclass
class _Twin:
    filter: EnsembleKalmanFilter
    origin: datetime | None
    settings: CardioSyncSettings
    base: dict[str, float]
    cutoff: int


def _load(store: EventStore, patient_id: str, settings: CardioSyncSettings | None,
          base: Mapping[str, float] | None, at: datetime | None = None) -> _Twin:
    snap = (latest_snapshot(store, patient_id, model=SNAPSHOT_MODEL) if at is None
            else snapshot_at(store, patient_id, at, model=SNAPSHOT_MODEL))
    if snap is None or snap.payload.get("format") != SNAPSHOT_FORMAT:
        s = settings or CardioSyncSettings()
        return _Twin(make_filter(s, base), None, s, _base_parameters(base), 0)
    pl = snap.payload
    s = CardioSyncSettings.from_dict(pl["settings"])
    f = make_filter(s, pl["base"]).load_state_dict(pl["filter"])
    return _Twin(f, datetime.fromisoformat(pl["origin"]), s, dict(pl["base"]),
                 int(snap.data_cutoff or 0))


def _new_observations(store: EventStore, patient_id: str, after: int
                      ) -> tuple[list[Observation], int]:
    obs, last = [], after
    while True:
        page = store.records_after(patient_id, last, kinds=["observation"], limit=_PAGE)
        for seq, rec in page:
            last = seq
            if isinstance(rec, Observation):
                obs.append(rec)
        if len(page) < _PAGE:
            return obs, last


def _assimilate(f: EnsembleKalmanFilter, readings: Sequence[Reading]) -> list[dict[str, Any]]:
    """Assimilate ``readings`` one by one; returns the filter's flags. A member whose
    parameters admit no circulation (it collapses even from rest, e.g. a doubled resistance
    with a weak ventricle and little volume: the linear update can push the ensemble's tail
    there) cannot be the patient, who has a blood pressure: the reading is taken again after
    each such member was replaced by a copy of a surviving one (chosen with the filter's
    seed; the random walk spreads the copies apart). With more than half the members
    collapsed the :class:`SimulationError` stands."""
    dyn = f.dynamics
    if not f.started:
        f.start()
    flags: list[dict[str, Any]] = []
    for r in readings:
        before = f.state_dict()
        try:
            flags += f.assimilate([r]).flags_
            continue
        except SimulationError:
            bad = sorted(set(getattr(dyn, "collapsed_", [])))
            if not bad or 2 * len(bad) > f.n_members:
                raise
        z, m = np.asarray(before["arrays"]["z"]), np.asarray(before["arrays"]["m"])
        good = [i for i in range(z.shape[0]) if i not in bad]
        rng = np.random.default_rng([f.seed, f.n_readings_, len(bad)])
        for i in bad:
            j = int(rng.choice(good))
            z[i], m[i % m.shape[0]] = z[j], m[j % m.shape[0]]
        before["arrays"]["z"], before["arrays"]["m"] = z.tolist(), m.tolist()
        log.warning("live cardio twin: %d collapsed ensemble member(s) replaced by copies of "
                    "surviving ones at t = %g s", len(bad), r.time)
        flags += f.load_state_dict(before).assimilate([r]).flags_
    return flags


def personalise_from_store(store: EventStore, patient_id: str, *,
                           settings: CardioSyncSettings | None = None,
                           base: Mapping[str, float] | None = None,
                           save: bool = True, forecast: bool = True,
                           rescue: bool = False) -> CardioEstimate:
    """Bring the patient's live cardio twin up to date with its trusted stored vitals and
    return its estimate (module doc). ``settings``/``base`` apply to a twin started now (a
    stored twin keeps its own); ``save=False`` stores no snapshot; ``forecast=False`` skips
    the predicted vitals and forecast band (empty ``vitals``/``forecast``: the live loop's
    update, which only needs the snapshot and the parameters). ``rescue=True`` (the live
    loop's): an ensemble member that collapses is settled again from rest, and one without a
    circulation at its parameters is replaced by a surviving one (:func:`_assimilate`),
    instead of the :class:`SimulationError` that makes ``cardio_service`` fall back to the
    MAP fit. A patient without any vital yet gets ``started=False`` and empty estimates."""
    twin = _load(store, patient_id, settings, base)
    obs, last = _new_observations(store, patient_id, twin.cutoff)
    vitals, flags = vital_readings(obs)
    if vitals and twin.origin is not None:
        oldest = min(v[0] for v in vitals)
        if oldest < twin.origin + timedelta(seconds=twin.filter.time_):
            # late data: rebuild from the newest snapshot at or before it, re-read after it
            twin = _load(store, patient_id, settings, base, at=oldest)
            log.info("live cardio twin: late vitals; re-filtering from data cut-off %d",
                     twin.cutoff)
            obs, last = _new_observations(store, patient_id, twin.cutoff)
            vitals, flags = vital_readings(obs)
    f = twin.filter
    if vitals:
        if twin.origin is None:
            twin.origin = min(v[0] for v in vitals)
        readings = group_readings(vitals, twin.origin, twin.settings.window_s)
        if rescue:
            f.dynamics.rescue = True
            flags += _assimilate(f, readings)
        else:
            flags += f.assimilate(readings).flags_
        if save:
            save_snapshot(store, patient_id, {
                "format": SNAPSHOT_FORMAT, "settings": twin.settings.to_dict(),
                "base": twin.base, "origin": twin.origin.isoformat(),
                "filter": f.state_dict()},
                model=SNAPSHOT_MODEL, model_version=MODEL_VERSION,
                twin_time=twin.origin + timedelta(seconds=f.time_), data_cutoff=last)
    for fl in flags:
        log.warning("live cardio twin: %s", fl["reason"])
    return _estimate(patient_id, twin, flags, last, forecast=forecast)


def _estimate(patient_id: str, twin: _Twin, flags: list[dict[str, Any]], cutoff: int, *,
              forecast: bool = True) -> CardioEstimate:
    f, s = twin.filter, twin.settings
    if twin.origin is None or not f.started:
        return CardioEstimate(patient_id, False, None, 0, s.level, {}, {}, [], flags, cutoff,
                              twin.base)
    summary = f.parameter_summary(s.level)
    params = {k: ParameterEstimate(k, float(r["mean"]), float(r["sd"]), float(r["lower"]),
                                   float(r["upper"]), twin.base[k])
              for k, r in summary.iterrows()}
    when = twin.origin + timedelta(seconds=f.time_)
    if not forecast:
        return CardioEstimate(patient_id, True, when, f.n_readings_, s.level, params, {}, [],
                              flags, cutoff, twin.base)
    times = [f.time_ + 60.0 * m for m in s.forecast_min]
    if not s.forecast_min or s.forecast_min[0] > 0:
        times = [f.time_] + times
    band = f.forecast(times, level=s.level, n_samples=s.forecast_samples)
    rows = [VitalBand(r.output, _UNIT_OF[r.output], _LOINC_OF[r.output],
                      round((r.time - f.time_) / 60.0, 6), float(r.mean), float(r.lower),
                      float(r.upper)) for r in band.itertuples()]
    vitals = {b.name: b for b in rows if b.minutes == 0.0}
    return CardioEstimate(patient_id, True, twin.origin + timedelta(seconds=f.time_),
                          f.n_readings_, s.level, params, vitals, rows, flags, cutoff,
                          twin.base)
