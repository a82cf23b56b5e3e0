"""Issue 12, finding 12: the ingester neither stalls on a reading the store cannot take nor
carries on silently when the broker lost its session (a broker without persistence lost 10%
of acknowledged readings with only a warning)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.records import Patient
from medtwin.live.ingest import Ingester
from medtwin.live.sync import GAP_RULE, MonitorLoop
from medtwin.store.alerts import AlertStore

T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)


def _reading(i: int, code: str = "8867-4") -> str:
    return json.dumps({"code": code, "value": 70 + i % 10, "unit": "/min",
                       "time": (T0 + timedelta(seconds=i)).isoformat(), "id": f"r{i}"})


def _until(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_lost_broker_session_is_reported_as_a_gap_and_alerted(store, broker, publisher):
    broker.stop()  # the same broker, now without persistence: a restart loses every session
    broker.conf.write_text(broker.conf.read_text().replace("persistence true",
                                                           "persistence false"))
    broker.start()
    publisher.client.reconnect()
    store.append([Patient(id="p0", source_id="Patient/p0")])
    monitor = MonitorLoop(store, broker=None).start()
    ing = Ingester(store, broker=broker.url, client_id=f"gap-{os.getpid()}",
                   on_stored=monitor.on_stored, on_gap=monitor.on_gap).start()
    try:
        publisher.send("medtwin/ward1/p0/monitor1/hr", _reading(1))
        assert _until(lambda: ing.stats.stored == 1)
        broker.stop()
        broker.start()  # back, but without the ingester's session
        assert _until(lambda: ing.stats.sessions_lost == 1), ing.stats
        gap = ing.gaps[0]
        assert gap.since <= gap.until
        letters = store.dead_letters()
        assert letters["reason"].str.startswith("gap: readings published between").any()
        assert _until(lambda: any(a.rule == GAP_RULE for a in AlertStore(store).active("p0")))
        publisher.client.reconnect()
        publisher.send("medtwin/ward1/p0/monitor1/hr", _reading(2))  # subscribed again
        assert _until(lambda: ing.stats.stored == 2), ing.stats
    finally:
        ing.stop()
        monitor.stop()


@pytest.mark.postgres
def test_a_reading_the_store_cannot_take_is_dead_lettered_and_the_rest_stored(
        pg_url, pg_schema, broker, publisher):
    from medtwin.store.event_store import EventStore

    with EventStore.open(pg_url, schema=pg_schema) as store:
        store.append([Patient(id="p0", source_id="Patient/p0")])
        ing = Ingester(store, broker=broker.url, client_id=f"poison-{os.getpid()}",
                       batch_wait=0.5).start()
        try:
            for i in range(5):  # one reading has a code longer than the store's column
                code = "x" * 150 if i == 2 else "8867-4"
                publisher.send("medtwin/ward1/p0/monitor1/hr", _reading(i, code))
            assert _until(lambda: ing.stats.stored + ing.stats.dead_lettered == 5, 30), ing.stats
        finally:
            ing.stop()
        assert ing.stats.stored == 4 and ing.stats.poison == 1, ing.stats
        assert len(store.timeline("p0")) == 4
        letters = store.dead_letters()
        assert letters["reason"].str.contains("store refused it").sum() == 1
