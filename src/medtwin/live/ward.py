"""The live half of ``medtwin demo``: broker, simulated bedside devices, ingester, monitor.

A private Mosquitto (or, without it, the embedded broker; :class:`DemoBroker` says which)
or a given broker URL, a
publisher thread standing in for the ward's monitors and CGMs, the :class:`Ingester` that
stores each reading, and the :class:`MonitorLoop` that scores NEWS2 and raises alerts.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from medtwin.core.codes import CGM_GLUCOSE
from medtwin.live.demo_broker import DemoBroker
from medtwin.live.ingest import Ingester
from medtwin.live.publish import DevicePublisher
from medtwin.live.streams import Reading, simulated_ward
from medtwin.live.sync import Hook, MonitorLoop
from medtwin.store.event_store import EventStore

log = logging.getLogger(__name__)

CGM_CODE = CGM_GLUCOSE


def cgm_walk(patient: str, *, seed: int, target: float = 150.0,
             start: float | None = None) -> Iterator[int]:
    """A generator of CGM values [mg/dL]: mean-reverting with meal-like excursions, from
    ``start`` (e.g. the patient's last stored reading) or near ``target``."""
    rng = np.random.default_rng(seed)
    g = target + rng.normal(0, 20) if start is None else float(start)
    bump = 0.0
    while True:
        if rng.random() < 0.02:
            bump += rng.uniform(40, 90)
        bump *= 0.97
        g += 0.05 * (target + bump - g) + rng.normal(0, 2.5)
        g = float(np.clip(g, 40, 400))
        yield round(g)


@dataclass
class LiveWard:
    """Simulated devices for ``vitals`` patients (deteriorating ones first in the list) and
    CGMs for ``cgm`` patients, published every ``tick`` seconds of wall-clock time (a CGM
    every ``cgm_every`` ticks, from its ``cgm_start`` value); ``hooks`` run in the monitor
    loop (e.g. :class:`~medtwin.live.sync.GlucoseHook`, the glucose twins)."""

    store: EventStore
    vitals: Sequence[str]
    deteriorating: int
    cgm: Sequence[str] = ()
    tick: float = 2.0
    onset_ticks: int = 60
    seed: int = 0
    broker_url: str | None = None
    site: str = "ward1"
    hooks: Sequence[Hook] = ()
    cgm_every: int = 1
    cgm_start: Mapping[str, float] = field(default_factory=dict)
    published: int = field(default=0, init=False)

    def start(self) -> LiveWard:
        """Start the broker (unless a URL was given), monitor, ingester and devices."""
        self._broker = None
        self.broker_notice = ""
        if self.broker_url is None:
            self._broker = DemoBroker()
            self.broker_url = self._broker.start()
            self.broker_notice = self._broker.notice
        self._stop = threading.Event()
        self.monitor = MonitorLoop(self.store, broker=self.broker_url,
                                   hooks=list(self.hooks)).start()
        self.ingester = Ingester(self.store, broker=self.broker_url,
                                 client_id=f"medtwin-demo-{self.seed}",
                                 on_stored=self.monitor.on_stored,
                                 on_gap=self.monitor.on_gap).start()
        self._publisher = DevicePublisher(broker=self.broker_url, site=self.site).__enter__()
        self._thread = threading.Thread(target=self._run, name="medtwin-demo-devices",
                                        daemon=True)
        self._thread.start()
        return self

    def _batches(self) -> Iterator[list[Reading]]:
        n = len(self.vitals)
        ward = simulated_ward(max(n, 1), start=datetime.now(UTC), interval=timedelta(seconds=1),
                              steps=10**9, seed=self.seed,
                              deteriorating=self.deteriorating / max(n, 1),
                              onset_steps=self.onset_ticks) if n else None
        cgms = {p: cgm_walk(p, seed=self.seed + k, start=self.cgm_start.get(p))
                for k, p in enumerate(self.cgm)}
        ticks = 0
        while True:
            now = datetime.now(UTC).replace(microsecond=0)
            batch: list[Reading] = []
            if ward is not None:
                for r in next(ward):
                    idx = int(r.patient.rsplit("-", 1)[1])
                    batch.append(dataclasses.replace(r, patient=self.vitals[idx], time=now,
                                                     id=f"demo-{self.vitals[idx]}-{r.metric}-"
                                                        f"{now.isoformat()}"))
            for p, walk in cgms.items() if ticks % max(self.cgm_every, 1) == 0 else ():
                batch.append(Reading(patient=p, metric="cgm", time=now, code=CGM_CODE,
                                     value=float(next(walk)), unit="mg/dL",
                                     id=f"demo-{p}-cgm-{now.isoformat()}"))
            ticks += 1
            yield batch

    def _run(self) -> None:
        batches = self._batches()
        while not self._stop.is_set():
            try:
                self.published += self._publisher.publish(next(batches))
            except Exception:  # the demo's devices must not die silently
                log.exception("publishing simulated readings failed")
            self._stop.wait(self.tick)

    def stop(self) -> None:
        """Stop devices, then drain ingestion and monitoring, then the broker."""
        self._stop.set()
        self._thread.join(5)
        try:
            self._publisher.__exit__(None, None, None)
        except Exception:  # a broker gone first must not block shutdown
            log.warning("device publisher did not flush before shutdown")
        self.ingester.stop(drain=5)
        self.monitor.stop()
        if self._broker is not None:
            self._broker.stop()
