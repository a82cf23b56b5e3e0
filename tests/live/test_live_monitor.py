"""End to end through the broker: readings in, NEWS2 alerts out on the alerts topic."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt

from medtwin.core.records import Patient
from medtwin.live.ingest import Ingester
from medtwin.live.publish import DevicePublisher, paced
from medtwin.live.streams import simulated_ward
from medtwin.live.sync import MonitorLoop
from medtwin.store.alerts import AlertStore


def test_deteriorating_patients_raise_alerts_that_are_published(store, broker):
    got: list[dict] = []
    done = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
    sub.on_subscribe = lambda *_: done.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("medtwin/alerts/#", qos=1)
    sub.loop_start()
    assert done.wait(5)

    n = 6
    store.append([Patient(id=f"sim-{p:04d}", source_id=f"Patient/sim-{p:04d}")
                  for p in range(n)])
    monitor = MonitorLoop(store, broker=broker.url).start()
    ing = Ingester(store, broker=broker.url, client_id=f"mon-{os.getpid()}",
                   on_stored=monitor.on_stored).start()
    try:
        ticks = simulated_ward(n, start=datetime(2026, 1, 5, tzinfo=UTC),
                               interval=timedelta(minutes=15), steps=48, seed=1,
                               deteriorating=2 / n)
        with DevicePublisher(broker=broker.url, site="icu") as pub:
            paced(ticks, pub, rate=40)
        assert ing.wait_idle(timeout=30)
    finally:
        ing.stop()
        monitor.stop()
        deadline = time.monotonic() + 15  # QoS 1 alerts may still be on their way
        while len(got) < len(AlertStore(store).all()) and time.monotonic() < deadline:
            time.sleep(0.05)
        sub.disconnect()
        sub.loop_stop()
    stored = AlertStore(store).all()
    high = {a.patient_id for a in stored if a.rule == "news2" and a.severity == 3}
    assert high == {"sim-0000", "sim-0001"}
    published = {(a["patient"], a["rule"], a["severity"]) for a in got}
    assert published == {(a.patient_id, a.rule, a.severity) for a in stored}
    # no storm: a rule alerts again at the same level only after it was resolved, which
    # takes resolve_after (30 min of data) clear
    last: dict[tuple[str, str, int], object] = {}
    for a in sorted(stored, key=lambda a: a.id):
        key = (a.patient_id, a.rule, a.severity)
        if key in last:
            assert a.data_time - last[key] >= monitor.resolve_after, (key, a.data_time)
        last[key] = a.data_time
