"""The loop after ingestion: for each patient with new readings, score, alert and publish.

Ingestion hands each stored batch to :meth:`MonitorLoop.on_stored`. A worker thread keeps
each patient's monitoring state in memory (latest value of every NEWS2 item, recent scores,
the rules with an active alert), warmed from the store the first time it sees the patient,
so scoring a new reading costs no database read. It scores NEWS2, applies the threshold and
trend rules (and any hooks, such as a twin's forecast), raises or resolves alerts (no alert
storm: a rule alerts once per severity level, and resolves only after staying clear), writes
a whole round's alerts in one transaction, and publishes new ones on
``<prefix>/alerts/<site>/<patient>``. A quarantined reading (dated in the future) is never
remembered nor scored; it raises a data-quality alert naming its device. One loop per
store: it trusts its own memory of which alerts are active; the store stays the truth, and
a restarted loop rebuilds from it.

Twins ride along as hooks. :class:`GlucoseHook` assimilates CGM readings in the worker and
warns of a predicted low. :class:`CardioHook` keeps the cardiovascular twin of each patient
with a cardiac diagnosis in step with HR, BP (panels too), MAP, CO and EF on its own thread,
at most once per ``min_interval`` per patient (readings in between are batched into the next
update), so neither ingestion nor scoring waits for it; the store stays the truth, so an
update that did not run (stop, failure) is made up by the next one.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import paho.mqtt.client as mqtt

from medtwin.core.errors import MedtwinError
from medtwin.live.connection import BrokerSpec, as_spec
from medtwin.live.ingest import Flagged, IngestGap
from medtwin.monitor.news2 import news2
from medtwin.monitor.rules import GLUCOSE_CODES as GLUCOSE_RULE_CODES
from medtwin.monitor.rules import Finding, evaluate, glucose_findings
from medtwin.monitor.vitals import (
    CODES,
    STALE_AFTER,
    latest_items,
    vital_item,
    vitals_from_items,
)
from medtwin.store.alerts import Alert, AlertStore, Raise
from medtwin.store.event_store import EventStore
from medtwin.twin import cardio_sync
from medtwin.twin.cardio_service import CARDIO_CODES, cardiac_conditions
from medtwin.twin.glucose import GLUCOSE_CODES
from medtwin.twin.glucose_sync import GlucoseSync

log = logging.getLogger(__name__)

GAP_RULE = "data-quality:ingestion-gap"

def data_quality_findings(readings: list[Flagged]) -> list[Finding]:
    """One advisory finding per device that sent a quarantined reading, naming the device
    (rule ``data-quality:<device>``, so each faulty device alerts once until resolved)."""
    by_device: dict[str, list[Flagged]] = {}
    for f in readings:
        device = f.device or f.observation.device or "unknown device"
        by_device.setdefault(device, []).append(f)
    out = []
    for device, fs in sorted(by_device.items()):
        newest = max(f.observation.time for f in fs)
        out.append(Finding(
            f"data-quality:{device}"[:64], 1,
            f"device {device} sent {len(fs)} reading(s) dated in the future (up to "
            f"{newest.isoformat()}); quarantined, not scored: check the device clock",
            {"device": device, "quarantined": len(fs), "flag": "future-dated",
             "source_ids": [f.observation.source_id for f in fs][:20]}))
    return out


class Hook(Protocol):
    """An extra rule source run when a patient gets readings with one of its ``codes``."""

    codes: frozenset[str]

    def __call__(self, patient: str) -> list[Finding]: ...


@dataclass
class GlucoseHook:
    """The glucose twin as a hook: assimilate new CGM readings, warn of a predicted low."""

    sync: GlucoseSync
    codes: frozenset[str] = frozenset(GLUCOSE_CODES)

    def __call__(self, patient: str) -> list[Finding]:
        return self.sync.update(patient)


#: the stored codes that bring a cardiac patient's cardio twin up to date: every vital the
#: twin assimilates (HR, SBP, DBP, MAP, EF, CO) and the blood-pressure panels
CARDIO_LIVE_CODES = frozenset((*cardio_sync.VITALS, *CARDIO_CODES))
#: default least time between two updates of one patient's cardio twin (one source:
#: ``cardio_sync.LIVE_MIN_INTERVAL_S``, also the default of the service setting
#: ``cardio_twin_interval_seconds``)
CARDIO_MIN_INTERVAL = timedelta(seconds=cardio_sync.LIVE_MIN_INTERVAL_S)


@dataclass
class CardioHook:
    """The cardiovascular twin as a hook, updated in the background.

    Called by the monitor loop (cheaply: it only notes the patient) when a patient gets new
    trusted readings with one of ``codes``; its own thread then runs
    :func:`~medtwin.twin.cardio_sync.personalise_from_store` (which stores a snapshot) for
    patients with a cardiac diagnosis (:func:`~medtwin.twin.cardio_service.cardiac_conditions`,
    the dashboard's test), at most once per ``min_interval`` (wall clock) per patient: the
    readings that arrive in between are assimilated together by the next update, which is
    due ``min_interval`` after the last one started. Quarantined readings never reach it (the
    loop does not hook them, and the twin reads the store's trusted feed). It returns no
    finding: the twin's parameters have no cited plausible band to alert on (the model's
    parameter data give one resting adult, not a population range).

    ``updates``, ``update_seconds`` (total), ``max_update_seconds``, ``skipped`` (patients
    without a cardiac diagnosis) and ``failures`` say what it did; :meth:`wait_idle` waits
    until nothing is due; :meth:`close` stops the thread (the monitor loop's ``stop`` does)."""

    store: EventStore
    min_interval: timedelta = CARDIO_MIN_INTERVAL
    settings: cardio_sync.CardioSyncSettings | None = None
    codes: frozenset[str] = CARDIO_LIVE_CODES
    updates: int = field(default=0, init=False)
    update_seconds: float = field(default=0.0, init=False)
    max_update_seconds: float = field(default=0.0, init=False)
    skipped: int = field(default=0, init=False)
    failures: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.min_interval < timedelta(0):
            raise MedtwinError(f"min_interval must be >= 0, got {self.min_interval}")
        self._cv = threading.Condition()
        self._due: dict[str, float] = {}  # patient -> monotonic time its update may start
        self._last: dict[str, float] = {}  # patient -> when its last update started
        self._cardiac: set[str] = set()  # patients known to have a cardiac diagnosis
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def __call__(self, patient: str) -> list[Finding]:
        """Note that ``patient`` has new cardio readings; returns at once (no finding)."""
        with self._cv:
            if self._closed:
                return []
            if patient not in self._due:
                last = self._last.get(patient)
                now = time.monotonic()
                self._due[patient] = now if last is None else max(
                    now, last + self.min_interval.total_seconds())
                self._cv.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="medtwin-cardio-twin",
                                                daemon=True)
                self._thread.start()
        return []

    def pending(self) -> int:
        """Patients whose update is due or waiting for its interval."""
        with self._cv:
            return len(self._due) + self._busy

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until every noted patient was updated (True) or ``timeout`` s passed."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._due or self._busy:
                left = end - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cv.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the update under way (the waiting ones are left to the next start:
        the store keeps every reading)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
                while not self._closed:
                    now = time.monotonic()
                    ready = [p for p, t in self._due.items() if t <= now]
                    if ready:
                        break
                    nxt = min(self._due.values(), default=None)
                    self._cv.wait(None if nxt is None else max(nxt - now, 0.001))
                if self._closed:
                    return
                patient = min(ready, key=lambda p: self._due[p])  # longest waiting first
                del self._due[patient]
                self._last[patient] = now
                self._busy = True
            self._update(patient)

    def _update(self, patient: str) -> None:
        try:
            if patient not in self._cardiac:
                if not cardiac_conditions(self.store, patient):
                    self.skipped += 1
                    return
                self._cardiac.add(patient)
            t0 = time.perf_counter()
            est = cardio_sync.personalise_from_store(self.store, patient, settings=self.settings,
                                                     forecast=False, rescue=True)
            took = time.perf_counter() - t0
            self.updates += 1
            self.update_seconds += took
            self.max_update_seconds = max(self.max_update_seconds, took)
            log.debug("cardio twin of %s: %d reading(s) to %s in %.3f s", patient,
                      est.n_readings, est.time, took)
        except Exception:  # logged; the next readings try again from the stored twin
            self.failures += 1
            log.exception("updating a cardio twin failed")


@dataclass
class _Patient:
    """What the loop remembers of one patient."""

    site: str
    items: dict[str, tuple[datetime, object]] = field(default_factory=dict)
    scores: deque[tuple[datetime, int]] = field(default_factory=deque)
    active: dict[str, int] = field(default_factory=dict)
    clear_since: dict[str, datetime] = field(default_factory=dict)
    hook_time: datetime | None = None  # newest reading a hook reacted to
    glucose: deque[tuple[datetime, float]] = field(default_factory=lambda: deque(maxlen=64))


@dataclass
class MonitorLoop:
    """Scores patients as their readings arrive and publishes the alerts that result.

    An alert resolves only after its rule has been clear for ``resolve_after`` (data time),
    so a value hovering at a threshold does not raise, resolve and raise again.
    ``hooks`` are extra rule sources run for a patient whose new readings carry one of the
    hook's codes, e.g. :class:`GlucoseHook` (the twin's forecast of a low); their findings
    are alerted like the rest. A hook with a ``close()`` (:class:`CardioHook`, which works on
    its own thread) is closed by :meth:`stop`.
    """

    store: EventStore
    broker: str | BrokerSpec | None = field(default="mqtt://127.0.0.1:1883", repr=False)
    prefix: str = "medtwin"
    trend_window: timedelta = timedelta(hours=6)
    vitals_window: timedelta | None = None  # None: each item's own window (STALE_AFTER)
    resolve_after: timedelta = timedelta(minutes=30)
    on_alert: Callable[[Alert], None] | None = None
    hooks: list[Hook] = field(default_factory=list)
    stale_after: Mapping[str, timedelta] = field(default_factory=lambda: dict(STALE_AFTER))
    raised: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.alerts = AlertStore(self.store)
        self._todo: queue.Queue[list[Flagged]] = queue.Queue()
        self._gaps: queue.Queue[IngestGap] = queue.Queue()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._patients: dict[str, _Patient] = {}

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> MonitorLoop:
        """Connect the alert publisher (when a broker is given) and start the worker."""
        if self.broker:
            spec = as_spec(self.broker)
            self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            self._client.max_inflight_messages_set(1000)
            spec.apply(self._client)
            try:
                self._client.connect(spec.host, spec.port)
            except OSError as exc:  # ssl.SSLError included
                raise MedtwinError(f"cannot reach the MQTT broker at {spec.url}: {exc}"
                                   ) from exc
            self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="medtwin-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued work, then stop."""
        end = time.monotonic() + timeout
        while (not self._todo.empty() or not self._idle.is_set()) and time.monotonic() < end:
            time.sleep(0.01)
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        for hook in self.hooks:  # background hooks (CardioHook) finish their update
            close = getattr(hook, "close", None)
            if callable(close):
                close()
        if self._client:
            self._client.disconnect()
            self._client.loop_stop()

    def on_stored(self, batch: list[Flagged]) -> None:
        """Ingester hook: queue the stored readings."""
        self._todo.put(batch)

    def on_gap(self, gap: IngestGap) -> None:
        """Ingester hook: readings may be missing; every watched patient gets a
        data-quality alert saying for which interval (their scores may be out of date)."""
        self._gaps.put(gap)

    def _alert_gaps(self) -> None:
        gaps = []
        while not self._gaps.empty():
            gaps.append(self._gaps.get_nowait())
        if not gaps or not self._patients:
            return
        gap = IngestGap(min(g.since for g in gaps), max(g.until for g in gaps), gaps[-1].reason)
        raises = [Raise(pid, GAP_RULE, 1, f"{gap.describe()}; check the devices and the "
                        "broker, and do not rely on this patient's latest values until new "
                        "readings arrive", {"since": gap.since.isoformat(),
                                            "until": gap.until.isoformat()}, gap.until)
                  for pid in sorted(self._patients)]
        for alert in self.alerts.apply(raises, []):
            self._publish(alert, self._patients[alert.patient_id].site)
            self.raised += 1

    # --- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._alert_gaps()
            except Exception:  # logged; the stream goes on
                log.exception("raising ingestion-gap alerts failed")
            try:
                batches = [self._todo.get(timeout=0.1)]
            except queue.Empty:
                continue
            self._idle.clear()
            while not self._todo.empty():  # coalesce bursts: score each patient once
                batches.append(self._todo.get_nowait())
            touched: set[str] = set()
            hooked: dict[str, set[int]] = {}
            quarantined: dict[str, list[Flagged]] = {}
            for batch in batches:
                for f in batch:
                    if f.quarantined:  # evidence only: never the latest, never scored
                        self._state(f.observation.subject, f.site)
                        quarantined.setdefault(f.observation.subject, []).append(f)
                        continue
                    if self._remember(f):
                        touched.add(f.observation.subject)
                    for i, hook in enumerate(self.hooks):
                        if f.observation.code in hook.codes:
                            hooked.setdefault(f.observation.subject, set()).add(i)
                            state = self._state(f.observation.subject, f.site)
                            state.hook_time = max(state.hook_time or f.observation.time,
                                                  f.observation.time)
            try:
                self._evaluate(touched, hooked, quarantined)
            except Exception:  # a failed round is logged; the next readings try again
                log.exception("monitoring round failed")
            self._idle.set()

    def _state(self, patient: str, site: str) -> _Patient:
        state = self._patients.get(patient)
        if state is None:  # first sight: warm from the store, which is the truth
            state = _Patient(site=site, items=latest_items(self.store, patient))
            state.active = {a.rule: a.severity for a in self.alerts.active(patient)}
            self._load_glucose(patient, state)
            self._patients[patient] = state
        return state

    def _load_glucose(self, patient: str, state: _Patient) -> None:
        """The recent glucose readings from the store (what the trend rule looks at)."""
        recent = self.store.timeline(patient, kinds=["observation"],
                                     codes=sorted(GLUCOSE_RULE_CODES))[-state.glucose.maxlen:]
        state.glucose.clear()
        state.glucose.extend((o.time, o.value) for o in recent if o.value is not None)

    def _remember(self, f: Flagged) -> bool:
        obs = f.observation
        if obs.code in GLUCOSE_RULE_CODES and obs.value is not None:
            state = self._state(obs.subject, f.site)
            if not state.glucose or state.glucose[-1][0] <= obs.time:  # in time order only
                state.glucose.append((obs.time, obs.value))
            return True
        if obs.code not in CODES:
            return False
        hit = vital_item(obs)
        state = self._state(obs.subject, f.site)
        if hit is None:
            return False
        item, value = hit
        if item not in state.items or state.items[item][0] <= obs.time:
            state.items[item] = (obs.time, value)
        return True

    def check(self, patient: str, site: str = "ward1") -> list[Alert]:
        """Re-read one patient's readings from the store and evaluate now."""
        state = self._state(patient, site)
        state.items = latest_items(self.store, patient)
        self._load_glucose(patient, state)
        return self._evaluate({patient}, {patient: set(range(len(self.hooks)))})

    def _evaluate(self, patients: set[str], hooked: dict[str, set[int]],
                  quarantined: dict[str, list[Flagged]] | None = None) -> list[Alert]:
        """Score each patient; raise and resolve their alerts in one transaction; publish."""
        raises: list[Raise] = []
        resolves: list[tuple[str, str]] = []
        quarantined = quarantined or {}
        for patient in patients | set(hooked) | set(quarantined):
            try:
                findings, when = self._findings(patient) if patient in patients else ([], None)
                for i in sorted(hooked.get(patient, ())):
                    findings += self.hooks[i](patient)
                findings += data_quality_findings(quarantined.get(patient, []))
                self._decide(patient, findings, when, raises, resolves)
            except Exception:  # one patient's failure must not stop the others
                log.exception("monitoring failed for a patient")
        new = self.alerts.apply(raises, resolves)
        for alert in new:
            self._publish(alert, self._patients[alert.patient_id].site)
        self.raised += len(new)
        return new

    def _findings(self, patient: str) -> tuple[list[Finding], datetime | None]:
        """The vital-sign rules' findings and the newest reading time."""
        state = self._patients[patient]
        glucose = glucose_findings(list(state.glucose))
        g_when = state.glucose[-1][0] if state.glucose else None
        vitals, when = vitals_from_items(state.items, window=self.vitals_window,
                                         stale_after=self.stale_after)
        if when is None:
            return glucose, g_when
        score = news2(vitals)
        earlier = self._earlier(state, when)
        state.scores.append((when, score.total))
        while state.scores and state.scores[0][0] < when - 2 * self.trend_window:
            state.scores.popleft()
        return evaluate(vitals, score, earlier) + glucose, max(when, g_when or when)

    def _decide(self, patient: str, findings: list[Finding], when: datetime | None,
                raises: list[Raise], resolves: list[tuple[str, str]]) -> None:
        """Turn findings into raises and resolutions (no storm, resolve after staying clear)."""
        state = self._patients[patient]
        when = max((t for t in (when, state.hook_time) if t is not None),
                   default=datetime.now(UTC))
        for f in findings:
            current = state.active.get(f.rule)
            if f.severity == 0:
                since = state.clear_since.setdefault(f.rule, when)
                if current is not None and when - since >= self.resolve_after:
                    resolves.append((patient, f.rule))
                    del state.active[f.rule]
                continue
            state.clear_since.pop(f.rule, None)
            if current is not None and current >= f.severity:
                continue  # already alerted at this level: no storm
            raises.append(Raise(patient, f.rule, f.severity, f.message, f.detail, when))
            state.active[f.rule] = f.severity

    def _earlier(self, state: _Patient, when: datetime) -> int | None:
        """The NEWS2 total when the trend window began (or the first one inside it)."""
        start = when - self.trend_window
        before = [s for t, s in state.scores if t <= start]
        inside = [s for t, s in state.scores if start < t <= when]
        return before[-1] if before else (inside[0] if inside else None)

    def _publish(self, alert: Alert, site: str) -> None:
        if self._client is not None:
            self._client.publish(f"{self.prefix}/alerts/{site}/{alert.patient_id}",
                                 json.dumps(alert.to_dict()), qos=1)
        if self.on_alert:
            self.on_alert(alert)

