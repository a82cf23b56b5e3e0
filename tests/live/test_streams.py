"""Streams to test with: simulated ward, WFDB numerics replay, ECG heart rate by R peaks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.live.ingest import Ingester
from medtwin.live.streams import (
    ecg_heart_rate,
    heart_rate_from_peaks,
    numerics_frame,
    simulated_ward,
)
from medtwin.monitor.news2 import Vitals, news2

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def test_simulated_ward_is_seeded_and_the_deteriorating_worsen():
    a = list(simulated_ward(4, start=T0, interval=timedelta(minutes=5), steps=72, seed=3,
                            deteriorating=0.5))
    b = list(simulated_ward(4, start=T0, interval=timedelta(minutes=5), steps=72, seed=3,
                            deteriorating=0.5))
    assert a == b and len(a) == 72 and len(a[0]) == 4 * 5

    def score(tick, patient):
        v = {r.metric: r.value for r in tick if r.patient == patient}
        return news2(Vitals(respiration_rate=v["rr"], spo2=v["spo2"], on_oxygen=False,
                            systolic_bp=v["sbp"], pulse=v["hr"], consciousness="A",
                            temperature=v["temp"])).total

    assert score(a[-1], "sim-0000") >= 7 > score(a[0], "sim-0000")
    assert score(a[-1], "sim-0003") <= 3
    with pytest.raises(ValidationError, match="fraction"):
        next(simulated_ward(2, start=T0, interval=timedelta(minutes=1), steps=1,
                            deteriorating=2))


def test_ecg_heart_rate_matches_the_reference_beat_annotations(reference):
    import wfdb

    record = reference / "signals" / "100"
    hr = ecg_heart_rate(record, seconds=300)
    ann = wfdb.rdann(str(record), "atr", sampto=300 * 360)
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True)
                      if sym in "NLRBAaJSVrFejnE/fQ?"])
    ref = heart_rate_from_peaks(beats, 360.0)
    assert abs(len(hr) - len(ref)) <= 2
    assert hr["hr"].mean() == pytest.approx(ref["hr"].mean(), abs=0.5)
    with pytest.raises(NotFoundError, match="no WFDB record"):
        ecg_heart_rate(reference / "signals" / "nope")


def test_numerics_replay_reaches_the_store(reference, broker, tmp_path):
    from medtwin.store.event_store import EventStore

    record = reference / "signals" / "s25047-2704-05-04-10-44n"
    frame = numerics_frame(record)
    assert set(frame["metric"]) >= {"hr", "rr", "spo2"}
    db = str(tmp_path / "r.sqlite")
    with EventStore.open(db) as store:
        ing = Ingester(store, broker=broker.url, client_id=f"replay-{os.getpid()}").start()
        try:
            out = CliRunner().invoke(app, ["stream", "--replay", str(record), "--speed", "1e6",
                                           "--broker", broker.url, "--register", "--db", db,
                                           "--patient", "icu-1"])
            assert out.exit_code == 0, out.output
            assert f"published {len(frame)} readings" in out.output
            assert ing.wait_idle(timeout=30)
        finally:
            ing.stop()
        assert ing.stats.stored == len(frame) and ing.stats.dead_lettered == 0
        hr = store.timeline_frame("icu-1", codes=["8867-4"])
        want = frame[frame.metric == "hr"]["value"].round(2).to_numpy()
        assert np.allclose(np.sort(hr["value"].to_numpy(float)), np.sort(want))


def test_stream_command_publishes_the_simulated_ward(broker, tmp_path):
    from medtwin.store.event_store import EventStore

    db = str(tmp_path / "w.sqlite")
    with EventStore.open(db) as store:
        ing = Ingester(store, broker=broker.url, client_id=f"ward-{os.getpid()}").start()
        try:
            out = CliRunner().invoke(app, ["stream", "--patients", "5", "--steps", "20",
                                           "--rate", "0", "--broker", broker.url, "--register",
                                           "--db", db])
            assert out.exit_code == 0, out.output
            assert ing.wait_idle(timeout=30)
        finally:
            ing.stop()
        assert ing.stats.stored == 5 * 20 * 5
        assert json.loads(store.patients().to_json(orient="records"))[0]["events"] == 100


def test_stream_stamps_each_reading_when_it_is_published(broker, tmp_path):
    """Issue 17: a simulated device stamps its readings with the time it publishes them
    (patient time may run faster), so the ingester finds none of them future-dated."""
    from medtwin.store.event_store import EventStore

    db = str(tmp_path / "s.sqlite")
    before = datetime.now(UTC).replace(microsecond=0)
    with EventStore.open(db) as store:
        ing = Ingester(store, broker=broker.url, client_id=f"stamp-{os.getpid()}").start()
        try:
            out = CliRunner().invoke(app, ["stream", "--patients", "2", "--steps", "10",
                                           "--rate", "20", "--interval", "3600",
                                           "--broker", broker.url, "--register", "--db", db])
            assert out.exit_code == 0, out.output
            assert ing.wait_idle(timeout=30)
        finally:
            ing.stop()
        after = datetime.now(UTC)
        assert ing.stats.stored == 2 * 10 * 5 and ing.stats.future_dated == 0, ing.stats
        times = store.timeline_frame("sim-0000")["time"]
        assert times.min() >= before and times.max() <= after


def test_stream_runs_until_stopped_and_says_what_it_published(broker, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "medtwin.cli", "stream", "--patients", "2",
                             "--rate", "10", "--broker", broker.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for started in proc.stderr:  # printed once it publishes (and SIGTERM stops it)
        if "until Ctrl-C" in started:
            break
    else:
        raise AssertionError(f"the stream did not start (exit {proc.wait()})")
    time.sleep(3.0)  # far beyond what a fixed default of steps at this rate would last
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    published = int(re.search(r"published (\d+) readings for 2 patient", out).group(1))
    assert published >= 2 * 5 * 10  # ten ticks at least
    assert "--register" in err  # how to get them stored


def test_replay_of_a_missing_record_says_what_to_give(tmp_path):
    out = CliRunner().invoke(app, ["stream", "--replay", str(tmp_path / "nope"),
                                   "--broker", "mqtt://127.0.0.1:1"])
    assert out.exit_code == 2
    assert "no WFDB record at" in out.output and "Traceback" not in out.output
