"""Ingestion through a real Mosquitto broker into SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.records import Patient
from medtwin.live.ingest import Ingester

T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)


def _patients(store, n=3):
    store.append([Patient(id=f"p{i}", source_id=f"Patient/p{i}") for i in range(n)])


def _reading(i, *, value=None, t=None):
    return json.dumps({"code": "8867-4", "value": 60 + i % 50 if value is None else value,
                       "unit": "/min", "time": (t or T0 + timedelta(seconds=i)).isoformat(),
                       "id": f"r{i}"})


def test_stream_is_stored_exactly_with_duplicates_and_bad_messages(store, broker, publisher):
    _patients(store)
    ing = Ingester(store, broker=broker.url, client_id=f"ing-{os.getpid()}").start()
    try:
        for i in range(300):
            publisher.send(f"medtwin/ward1/p{i % 3}/monitor1/hr", _reading(i))
        for i in range(0, 300, 10):  # a device retries every tenth reading
            publisher.send(f"medtwin/ward1/p{i % 3}/monitor1/hr", _reading(i))
        publisher.send("medtwin/ward1/p0/monitor1/hr", b"{not json")
        publisher.send("medtwin/ward1/p0/monitor1/hr", _reading(999, value="fast"))
        publisher.send("medtwin/ward1/ghost/monitor1/hr", _reading(1000))
        publisher.send("medtwin/ward1/p0/monitor1/temp",
                       json.dumps({"value": 99.5, "unit": "[degF]", "time": T0.isoformat(),
                                   "id": "t1"}))
        publisher.send("medtwin/ward1/p1/monitor1/temp",
                       json.dumps({"value": 37, "unit": "kg", "time": T0.isoformat()}))
        publisher.send("medtwin/ward1/p2/monitor1/hr", _reading(2000, t=T0 - timedelta(days=1)))
        publisher.send("medtwin/ward1/p2/monitor1/hr",
                       _reading(2001, t=datetime.now(UTC) + timedelta(days=1)))
        assert ing.wait_idle(quiet=0.5, timeout=30)
    finally:
        ing.stop()
    s = ing.stats
    assert (s.stored, s.duplicates, s.dead_lettered) == (303, 30, 4), s
    assert (s.out_of_order, s.future_dated) == (1, 1)
    hr = [o for pid in ("p0", "p1", "p2")
          for o in store.timeline(pid, codes=["8867-4"], include_flagged=True)]
    assert len(hr) == 302  # the future-dated one is kept (quarantined) ...
    trusted = [o for pid in ("p0", "p1", "p2") for o in store.timeline(pid, codes=["8867-4"])]
    assert len(trusted) == 301  # ... but never read as data (issue 12)
    sent = {f"monitor1/r{i}": 60 + i % 50 for i in range(300)}
    assert all(sent[o.source_id] == o.value for o in hr if o.source_id in sent)
    (temp,) = store.timeline("p0", codes=["8310-5"])
    assert temp.unit == "Cel" and temp.value == pytest.approx(37.5)
    reasons = " ".join(store.dead_letters()["reason"])
    assert "not JSON" in reasons and "finite number" in reasons
    assert "unknown patient 'ghost'" in reasons and "cannot convert 'kg' to 'Cel'" in reasons


def _run_ingester(broker, db, client_id):
    """Start `medtwin live` and return once it says it is subscribed."""
    proc = subprocess.Popen([sys.executable, "-m", "medtwin.cli", "live", "--broker", broker.url,
                             "--db", db, "--client-id", client_id, "--report-every", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # `medtwin live` prints "ingesting ..." once subscribed
        if line.startswith("ingesting"):
            return proc
    raise AssertionError(f"the ingester did not start (exit {proc.wait()})")


def _wait_count(store, n, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = sum(store.counts().values())
        if got >= n:
            return got
        time.sleep(0.1)
    return sum(store.counts().values())


def test_sigkill_mid_stream_loses_nothing_and_stores_nothing_twice(tmp_path, broker, publisher):
    from medtwin.store.event_store import EventStore

    db = str(tmp_path / "live.sqlite")
    with EventStore.open(db) as store:
        _patients(store, 1)
        proc = _run_ingester(broker, db, "ing-kill")  # subscribed: its session persists
        for i in range(400):
            publisher.send("medtwin/w/p0/m/hr", _reading(i))
            if i == 200:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        proc = _run_ingester(broker, db, "ing-kill")
        try:
            assert _wait_count(store, 400) == 400
            time.sleep(1.0)
            assert sum(store.counts().values()) == 400
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        values = {o.source_id for o in store.timeline("p0")}
        assert values == {f"m/r{i}" for i in range(400)}


def test_ingestion_resumes_after_the_broker_restarts(store, broker, publisher, new_publisher):
    _patients(store, 1)
    ing = Ingester(store, broker=broker.url, client_id=f"ing-restart-{os.getpid()}").start()
    try:
        for i in range(50):
            publisher.send("medtwin/w/p0/m/hr", _reading(i))
        assert ing.wait_idle(timeout=20)
        publisher.close()
        broker.stop()
        time.sleep(1.0)
        broker.start()
        again = new_publisher(broker)
        for i in range(50, 100):
            again.send("medtwin/w/p0/m/hr", _reading(i))
        again.close()
        deadline = time.monotonic() + 30
        while ing.stats.stored < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        ing.stop()
    assert ing.stats.stored == 100 and len(store.timeline("p0")) == 100
