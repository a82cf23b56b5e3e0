"""Keep each patient's glucose twin in step with the store, and warn of predicted lows.

``GlucoseSync(store).update(patient)`` loads the patient's latest twin snapshot (or starts a
twin from a prior), reads the glucose readings and the insulin/meal interventions appended
since that snapshot's data cut-off (event sequence number, so late-arriving records are seen
and flagged by the twin rather than lost), assimilates them, stores a new snapshot and returns
the ``"hypo-predicted"`` finding for the monitor.

The alarm probability (:data:`HYPO_PROBABILITY`) was calibrated with
``benchmarks/bench_hypo.py`` (30 virtual subjects, randomised meals, mis-estimated boluses,
Dexcom noise); see its docstring for the definitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from medtwin.core.findings import Finding
from medtwin.core.records import Intervention, InterventionKind, Observation
from medtwin.models.glucose.constants import HYPO_THRESHOLD
from medtwin.store.event_store import EventStore
from medtwin.store.snapshots import latest_snapshot, save_snapshot
from medtwin.twin.glucose import GLUCOSE_CODES, MODEL_NAME, GlucoseTwin
from medtwin.twin.glucose_filter import FilterSettings

log = logging.getLogger(__name__)

RULE = "hypo-predicted"
#: P(glucose < 70 mg/dL within 30 min) at or above which the rule fires. bench_hypo.py (30
#: subjects x 7 days, seed 0, filter enkf-2 with its Vmx likelihood bank): p = 0.45 gave 93.0%
#: and p = 0.55 92.0% sensitivity, both 0.06 false alarms per patient-day; lower p trades false
#: alarms for sensitivity (0.05: 98.4%, 0.26, median lead 41 min). 0.5 is kept as the middle
#: of the flat part of that curve.
HYPO_PROBABILITY = 0.5
THRESHOLD = HYPO_THRESHOLD  # mg/dL
HORIZON = 30  # min
_PAGE = 1000


@dataclass
class GlucoseSync:
    """Brings glucose twins up to date from ``store`` and says whether a low is coming.

    ``subject_of`` maps a patient id to a UVA/Padova subject name used as that patient's
    prior (a mapping or a function returning None when unknown); otherwise the prior is
    ``population`` (a subject pattern; None = the 30 shipped subjects).
    """

    store: EventStore
    subject_of: Mapping[str, str] | Callable[[str], str | None] | None = None
    population: str | None = None
    settings: FilterSettings | None = None
    basal: float | str = "steady-state"
    probability: float = HYPO_PROBABILITY
    threshold: float = THRESHOLD
    horizon: int = HORIZON
    _subject: Callable[[str], str | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.subject_of
        if s is None:
            self._subject = lambda _p: None
        elif isinstance(s, Mapping):
            self._subject = s.get
        else:
            self._subject = s

    def twin(self, patient: str) -> tuple[GlucoseTwin, int]:
        """The patient's twin as last stored (or a fresh one) and its data cut-off."""
        snap = latest_snapshot(self.store, patient, model=MODEL_NAME)
        if snap is not None:
            return GlucoseTwin.from_snapshot(snap.payload), int(snap.data_cutoff or 0)
        prior = self._subject(patient) or self.population
        return GlucoseTwin(prior, settings=self.settings, basal=self.basal), 0

    def update(self, patient: str) -> list[Finding]:
        """Assimilate what is new for ``patient``, store a snapshot, return the finding
        (empty when the patient has no glucose reading yet)."""
        twin, cutoff = self.twin(patient)
        obs: list[Observation] = []
        ivs: list[Intervention] = []
        last = cutoff
        while True:
            page = self.store.records_after(patient, last,
                                            kinds=["observation", "intervention"], limit=_PAGE)
            for seq, rec in page:
                last = seq
                if isinstance(rec, Observation) and rec.code in GLUCOSE_CODES \
                        and rec.value is not None:
                    obs.append(rec)
                elif isinstance(rec, Intervention) and rec.kind in (InterventionKind.MEAL,
                                                                    InterventionKind.INSULIN):
                    ivs.append(rec)
            if len(page) < _PAGE:
                break
        if not obs and not ivs and twin.started:
            return [self._finding(twin, [])]
        twin.assimilate(obs, ivs)
        if not twin.started:
            return []
        save_snapshot(self.store, patient, twin.snapshot(), model=MODEL_NAME,
                      model_version=twin.model_version_, twin_time=twin.time_, data_cutoff=last)
        return [self._finding(twin, twin.flags_)]

    def _finding(self, twin: GlucoseTwin, flags: list[dict]) -> Finding:
        p, minutes = twin.hypo_risk(self.threshold, self.horizon)
        detail = {"probability": round(p, 3), "minutes_to_threshold": minutes,
                  "threshold": self.threshold, "horizon": self.horizon,
                  "glucose": round(twin.glucose_, 1), "twin_time": twin.time_.isoformat(),
                  "insulin_sensitivity": twin.insulin_sensitivity_,
                  "model": MODEL_NAME, "model_version": twin.model_version_}
        if flags:
            detail["flags"] = flags
        if p >= self.probability:
            when = ("" if minutes is None else " within a minute" if minutes < 1
                    else f" in about {minutes:.0f} min")
            return Finding(RULE, 2, f"Glucose {twin.glucose_:.0f} mg/dL at "
                           f"{twin.time_:%H:%M} UTC, predicted to fall below "
                           f"{self.threshold:g} mg/dL{when} (probability {p:.0%} within the "
                           f"next {self.horizon:g} min)", detail)
        return Finding(RULE, 0, "", detail)
