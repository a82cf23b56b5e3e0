"""Live ingestion through a real Mosquitto broker: throughput, latency, memory, scale-out.

Prints, measured in the same run on the same broker:
- bare subscriber: a paho-mqtt client that only counts QoS 1 messages (the ceiling);
- ingestion into SQLite and PostgreSQL (validated, stored, acknowledged after the commit),
  as readings/s and the ratio to the bare subscriber; zero loss checked by counting rows;
- publish-to-alert latency p50/p99 with N patients at 1 reading/s each (one critical SpO2
  reading injected per patient at a random moment, the alert read back from the topic);
- the ingester's memory (RSS) over a soak run (first vs last minute);
- scale-out: two ingester processes on an MQTT 5 shared subscription, every reading once.
A separate publisher process feeds the broker, as devices would.

    python benchmarks/bench_live.py [--messages 50000] [--patients 1000] [--latency-s 30]
                                    [--soak-s 120] [--pg postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil

from medtwin.core.codes import HEART_RATE, SPO2_PULSE_OXIMETRY
from medtwin.core.records import Patient
from medtwin.live.ingest import Ingester
from medtwin.live.sync import MonitorLoop
from medtwin.store.event_store import EventStore

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\nuser root\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def publisher(port: int, n: int, patients: int, tag: str, rate: float = 0.0) -> None:
    """Publish n readings (QoS 1) as fast as the broker acknowledges them, or at ``rate``
    readings/s."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(2000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    last = None
    t0 = time.monotonic()
    for i in range(n):
        if rate > 0 and i % 100 == 0:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        p = i % patients
        body = json.dumps({"code": HEART_RATE, "value": 60 + i % 40, "unit": "/min",
                           "time": (T0 + timedelta(seconds=i)).isoformat(),
                           "id": f"{tag}-{i}"})
        last = c.publish(f"medtwin/bench/p{p}/dev/hr", body, qos=1)
    if last is not None:
        last.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def run_publisher(port: int, n: int, patients: int, tag: str, rate: float = 0.0
                  ) -> mp.Process:
    proc = mp.get_context("spawn").Process(target=publisher,
                                           args=(port, n, patients, tag, rate))
    proc.start()
    return proc


def bare_subscriber(port: int, n: int) -> float:
    got, first, last = [0], [0.0], [0.0]
    ready, done = threading.Event(), threading.Event()

    def on_message(_c, _u, _m):  # noqa: ANN001
        if got[0] == 0:
            first[0] = time.perf_counter()
        got[0] += 1
        if got[0] == n:
            last[0] = time.perf_counter()
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.on_subscribe = lambda *_: ready.set()
    c.connect("127.0.0.1", port)
    c.subscribe("medtwin/+/+/+/+", qos=1)
    c.loop_start()
    ready.wait(10)
    pub = run_publisher(port, n, 100, "bare")
    done.wait(300)
    pub.join()
    c.disconnect()
    c.loop_stop()
    return n / (last[0] - first[0])


def patients_store(db: str, patients: int, schema: str | None = None) -> EventStore:
    store = EventStore.open(db, schema=schema)
    store.append([Patient(id=f"p{i}", source_id=f"Patient/p{i}") for i in range(patients)])
    return store


def ingest_rate(port: int, store: EventStore, n: int, patients: int) -> tuple[float, int]:
    before = sum(store.counts().values())
    ing = Ingester(store, broker=f"mqtt://127.0.0.1:{port}", client_id=f"b-{uuid.uuid4().hex}")
    stamps: list[float] = []
    ing.on_stored = lambda batch: stamps.append(time.perf_counter())
    ing.start()
    t0 = [0.0]
    orig = ing._on_message

    def first_mark(c, u, m):  # noqa: ANN001
        if not t0[0]:
            t0[0] = time.perf_counter()
        orig(c, u, m)

    ing._client.on_message = first_mark
    pub = run_publisher(port, n, patients, uuid.uuid4().hex[:6])
    end = time.monotonic() + 600
    while ing.stats.stored + ing.stats.duplicates < n and time.monotonic() < end:
        time.sleep(0.05)
    pub.join()
    ing.stop()
    stored = sum(store.counts().values()) - before
    return n / (stamps[-1] - t0[0]), stored


def paced_publisher(port: int, patients: int, seconds: float, out: mp.Queue) -> None:
    """Each patient sends one SpO2 reading a second, spread evenly over the second (devices
    are not synchronised); one critical reading per patient after the first 5 s. Puts the
    wall-clock send time of each critical reading on ``out``."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(5000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    rng = np.random.default_rng(0)
    critical_at = rng.integers(min(5, int(seconds) - 3), int(seconds) - 2, size=patients)
    tag = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)  # after everything stored before: these are the newest readings
    sent: dict[str, float] = {}
    t_start = time.monotonic()
    for s in range(int(seconds)):
        for p in range(patients):
            delay = t_start + s + p / patients - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            spo2 = 80 if s == critical_at[p] else 97
            body = json.dumps({"code": SPO2_PULSE_OXIMETRY, "value": spo2, "unit": "%",
                               "time": (now + timedelta(seconds=s + p / patients)).isoformat(),
                               "id": f"{tag}-{p}-{s}"})
            if spo2 == 80:
                sent[f"p{p}"] = time.time()
            c.publish(f"medtwin/bench/p{p}/oxi/spo2", body, qos=1)
    c.disconnect()
    c.loop_stop()
    out.put(sent)


def latency(port: int, store: EventStore, patients: int, seconds: float) -> np.ndarray:
    """Publish-to-alert latency (ms) of the critical readings, read back from the alert topic
    by a subscriber in this process while a separate process publishes."""
    received: dict[str, float] = {}
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_alert(_c, _u, m):  # noqa: ANN001
        a = json.loads(m.payload)
        if a["rule"] == "spo2-low":
            received.setdefault(a["patient"], time.time())

    sub.on_message = on_alert
    sub.on_subscribe = lambda *_: ready.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("medtwin/alerts/#", qos=1)
    sub.loop_start()
    ready.wait(10)
    url = f"mqtt://127.0.0.1:{port}"
    monitor = MonitorLoop(store, broker=url).start()
    ing = Ingester(store, broker=url, client_id=f"lat-{uuid.uuid4().hex}",
                   on_stored=monitor.on_stored).start()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    pub = ctx.Process(target=paced_publisher, args=(port, patients, seconds, out))
    pub.start()
    sent = out.get(timeout=seconds + 120)
    pub.join()
    time.sleep(3)
    ing.stop()
    monitor.stop()
    sub.disconnect()
    sub.loop_stop()
    return np.array([received[p] - t for p, t in sent.items() if p in received]) * 1000


def soak(port: int, store: EventStore, seconds: float, rate: int) -> tuple[float, float]:
    """RSS of this (ingesting) process over a steady stream: first vs last tenth of the run."""
    ing = Ingester(store, broker=f"mqtt://127.0.0.1:{port}",
                   client_id=f"soak-{uuid.uuid4().hex}").start()
    proc = psutil.Process(os.getpid())
    n = int(seconds * rate)
    pub = run_publisher(port, n, 100, f"soak{uuid.uuid4().hex[:4]}", rate=rate)
    samples = []
    t0 = time.monotonic()
    while pub.is_alive() or ing.stats.received < n:
        samples.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
        time.sleep(1.0)
        if time.monotonic() - t0 > seconds * 3 + 60:
            break
    pub.join()
    ing.stop()
    k = max(1, len(samples) // 10)
    return float(np.mean([m for _, m in samples[:k]])), float(np.mean([m for _, m in
                                                                     samples[-k:]]))


def shared_ingester(port: int, db: str, group: str, seconds: float) -> None:
    with EventStore.open(db) as store:
        ing = Ingester(store, broker=f"mqtt://127.0.0.1:{port}", group=group,
                       client_id=f"g-{uuid.uuid4().hex}").start()
        time.sleep(seconds)
        ing.wait_idle(quiet=1.0, timeout=120)
        ing.stop()


def scale_out(port: int, db: str, n: int, patients: int) -> int:
    ctx = mp.get_context("spawn")
    group = f"g{uuid.uuid4().hex[:6]}"
    procs = [ctx.Process(target=shared_ingester, args=(port, db, group, 3.0)) for _ in range(2)]
    for p in procs:
        p.start()
    time.sleep(2.5)
    pub = run_publisher(port, n, patients, f"so{uuid.uuid4().hex[:4]}")
    pub.join()
    for p in procs:
        p.join(300)
    with EventStore.open(db) as store:
        return sum(store.counts().values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--latency-s", type=float, default=30)
    ap.add_argument("--soak-s", type=float, default=120)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    if shutil.which("mosquitto") is None:
        raise SystemExit("needs the mosquitto broker (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            n = args.messages
            bare = bare_subscriber(port, n)
            print(f"bare paho subscriber (count only):  {bare:8.0f} msg/s")
            targets = [("sqlite", str(Path(tmp) / "bench.sqlite"), None)]
            if args.pg:
                targets.append(("postgresql", args.pg, f"bench_{uuid.uuid4().hex[:8]}"))
            for name, db, schema in targets:
                store = patients_store(db, args.patients, schema)
                rate, stored = ingest_rate(port, store, n, args.patients)
                print(f"ingest -> {name:10s}:  {rate:8.0f} readings/s ({rate / bare:4.2f}x bare)"
                      f"; stored {stored}/{n} ({'zero loss' if stored == n else 'LOSS'})")
                if name == "sqlite":
                    lat = latency(port, store, args.patients, args.latency_s)
                    print(f"publish-to-alert, {args.patients} patients at 1 reading/s: "
                          f"p50 {np.percentile(lat, 50):.1f} ms, p99 "
                          f"{np.percentile(lat, 99):.1f} ms ({len(lat)} alerts)")
                    first, last = soak(port, store, args.soak_s, rate=2000)
                    print(f"ingester RSS over a {args.soak_s:.0f} s soak at 2000 msg/s: "
                          f"{first:.0f} MiB -> {last:.0f} MiB ({(last / first - 1) * 100:+.1f}%)")
                store.close()
                if schema:
                    import psycopg

                    with psycopg.connect(args.pg, autocommit=True) as c:
                        c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            so_db = str(Path(tmp) / "scale.sqlite")
            patients_store(so_db, args.patients).close()
            got = scale_out(port, so_db, n // 2, args.patients)
            print(f"scale-out: 2 ingesters on a shared subscription stored {got}/{n // 2} "
                  f"readings ({'each exactly once' if got == n // 2 else 'MISMATCH'})")
        finally:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    main()
