"""The loop after ingestion: for each patient with new readings, score, alert and publish.

Ingestion hands each stored batch to :meth:`MonitorLoop.on_stored`; a worker thread then
re-scores the touched patients from the store (NEWS2 over their latest vitals, threshold
and trend rules), raises or resolves alerts (de-duplicated in :class:`AlertStore`), and
publishes new ones on ``<prefix>/alerts/<site>/<patient>``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import paho.mqtt.client as mqtt

from medtwin.live.ingest import Flagged, broker_address
from medtwin.monitor.news2 import News2, news2
from medtwin.monitor.rules import evaluate
from medtwin.monitor.vitals import CODES, latest_vitals
from medtwin.store.alerts import Alert, AlertStore
from medtwin.store.event_store import EventStore

log = logging.getLogger(__name__)


@dataclass
class MonitorLoop:
    """Scores patients as their readings arrive and publishes the alerts that result."""

    store: EventStore
    broker: str | None = "mqtt://127.0.0.1:1883"
    prefix: str = "medtwin"
    trend_window: timedelta = timedelta(hours=6)
    on_alert: Callable[[Alert], None] | None = None
    raised: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.alerts = AlertStore(self.store)
        self._todo: queue.Queue[tuple[str, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None

    def start(self) -> MonitorLoop:
        """Connect the alert publisher (when a broker is given) and start the worker."""
        if self.broker:
            host, port = broker_address(self.broker)
            self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            self._client.connect(host, port)
            self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="medtwin-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the queued work, then stop."""
        while not self._todo.empty():
            time.sleep(0.01)
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if self._client:
            self._client.disconnect()
            self._client.loop_stop()

    def on_stored(self, batch: list[Flagged]) -> None:
        """Ingester hook: queue every patient whose vitals changed."""
        for key in {(f.site, f.observation.subject) for f in batch
                    if f.observation.code in CODES}:
            self._todo.put(key)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._todo.get(timeout=0.1)
            except queue.Empty:
                continue
            pending = {first}
            while not self._todo.empty():  # coalesce bursts: score each patient once
                pending.add(self._todo.get_nowait())
            for site, patient in pending:
                try:
                    self.check(patient, site)
                except Exception:  # one patient's failure must not stop the others
                    log.exception("monitoring failed for a patient")

    def check(self, patient: str, site: str = "ward1") -> list[Alert]:
        """Score one patient now; raise/resolve alerts; publish the new ones."""
        vitals, when = latest_vitals(self.store, patient)
        if when is None:
            return []
        score = news2(vitals)
        earlier = self._score_at_window_start(patient, when)
        new: list[Alert] = []
        for f in evaluate(vitals, score, earlier):
            if f.severity == 0:
                self.alerts.resolve(patient, f.rule)
                continue
            alert = self.alerts.raise_alert(patient, f.rule, f.severity, f.message, f.detail,
                                            when)
            if alert is not None:
                new.append(alert)
                self._publish(alert, site)
        self.raised += len(new)
        return new

    def _score_at_window_start(self, patient: str, when: datetime) -> News2 | None:
        """NEWS2 as it stood when the trend window began (or at its first set inside it)."""
        start = when - self.trend_window
        vitals, t = latest_vitals(self.store, patient, at=start)
        if t is None:
            first = self.store.timeline(patient, kinds=["observation"], codes=CODES,
                                        since=start, until=when)
            if not first:
                return None
            vitals, t = latest_vitals(self.store, patient,
                                      at=first[0].time + timedelta(microseconds=1),
                                      window=timedelta(0))
        return news2(vitals) if t is not None else None

    def _publish(self, alert: Alert, site: str) -> None:
        if self._client is not None:
            self._client.publish(f"{self.prefix}/alerts/{site}/{alert.patient_id}",
                                 json.dumps(alert.to_dict()), qos=1)
        if self.on_alert:
            self.on_alert(alert)
