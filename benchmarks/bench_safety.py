"""Safety benchmark (issue 12): bad readings in a ward stream must not silence true alerts.

A simulated ward (some patients deteriorate towards sepsis, so NEWS2 and threshold alerts
must fire) is sent through the real live path: MQTT (the embedded broker), the ingester
(parse, clinical-data policy, store, acknowledge) and the monitor loop (NEWS2, rules,
alerts). It runs twice in the same process, on fresh stores:

- clean: the ward stream alone, the baseline: its alerts are the true alerts;
- dirty: the same stream with 1% future-dated readings (normal-looking values that would
  mask a deterioration if scored), 1% wrong-unit and 1% implausible readings injected by a
  faulty device.

It prints how many true alerts fired in each run, whether any alert was lost or added, and
checks that none of the bad readings was scored or used as the latest value: future-dated
ones are stored flagged and never read back as data, wrong-unit and implausible ones are
dead-lettered with the reason.

    python benchmarks/bench_safety.py [--patients 30] [--steps 48] [--rate 12] [--seed 3]
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from medtwin.core.records import Patient
from medtwin.live.broker import EmbeddedBroker
from medtwin.live.ingest import Ingester
from medtwin.live.publish import DevicePublisher, paced
from medtwin.live.streams import VITALS, Reading, simulated_ward
from medtwin.live.sync import MonitorLoop
from medtwin.monitor.vitals import latest_items
from medtwin.store import schema
from medtwin.store.alerts import AlertStore
from medtwin.store.event_store import EventStore

log = logging.getLogger("bench_safety")
INTERVAL = timedelta(minutes=15)
FAULTY = "faulty"  # the device that sends the bad readings

# normal-looking values a device with a wrong clock might send: scored, they would hide a
# deterioration (the tester's HR dated 9999 turned NEWS2 14 into 0)
CALM = {"hr": 72.0, "rr": 14.0, "spo2": 98.0, "sbp": 125.0, "temp": 36.8}


@dataclass
class Bad:
    """The injected readings, by kind, each a (tick, reading)."""

    future: list[tuple[int, Reading]]
    wrong_unit: list[tuple[int, Reading]]
    implausible: list[tuple[int, Reading]]


def _inject(ward: list[list[Reading]], start: datetime, rng: random.Random) -> Bad:
    """1% of each kind of bad reading, spread over the ticks and patients."""
    total = sum(map(len, ward))
    n = max(1, round(total / 100))
    patients = sorted({r.patient for r in ward[0]})
    now = datetime.now(UTC)

    def make(i: int, kind: str) -> tuple[int, Reading]:
        k = rng.randrange(len(ward))
        pid = rng.choice(patients)
        metric = rng.choice(list(CALM))
        code, unit = VITALS[metric][0], VITALS[metric][1]
        t = start + k * INTERVAL
        if kind == "future":
            when = rng.choice([datetime(9999, 1, 1, tzinfo=UTC),
                               now + timedelta(hours=rng.uniform(1, 24 * 365 * 5))])
            return k, Reading(pid, metric, when, code, CALM[metric], unit, f"fut-{i}")
        if kind == "unit":
            value, unit = rng.choice([(98.6, "Cel"), (37.0, "kg"), (72.0, "mm[Hg]"),
                                      (104.0, "g")])
            metric = "temp" if unit in ("Cel", "kg") else ("hr" if unit == "mm[Hg]" else "sbp")
            return k, Reading(pid, metric, t, VITALS[metric][0], value, unit, f"unit-{i}")
        value = rng.choice([-5.0, 1e308, 0.0, 400.0]) if metric == "hr" else rng.choice(
            [-1.0, 1e12, 150.0 if metric == "spo2" else 5000.0])
        return k, Reading(pid, metric, t, code, value, unit, f"bad-{i}")

    return Bad([make(i, "future") for i in range(n)], [make(i, "unit") for i in range(n)],
               [make(i, "implausible") for i in range(n)])


def run(folder: Path, name: str, ward: list[list[Reading]], bad: Bad | None, *,
        rate: float) -> tuple[EventStore, dict[tuple[str, str], int], float]:
    """One run through broker, ingester and monitor; returns the store, each (patient,
    rule)'s highest alert severity and the seconds taken."""
    store = EventStore.open(folder / f"{name}.sqlite")
    patients = sorted({r.patient for r in ward[0]})
    store.append([Patient(id=p, source_id=f"Patient/{p}") for p in patients])
    broker = EmbeddedBroker()
    url = broker.start()
    monitor = MonitorLoop(store, broker=None).start()
    ing = Ingester(store, broker=url, client_id=f"bench-{name}",
                   on_stored=monitor.on_stored).start()
    extra: dict[int, list[Reading]] = {}
    for k, r in (bad.future + bad.wrong_unit + bad.implausible) if bad else []:
        extra.setdefault(k, []).append(r)
    t0 = time.perf_counter()
    try:
        with DevicePublisher(broker=url, device="monitor") as good, \
                DevicePublisher(broker=url, device=FAULTY) as faulty:
            for k, tick in enumerate(ward):
                faulty.publish(extra.get(k, []))
                paced([tick], good, rate=0)
                faulty.flush()
                if rate > 0:
                    time.sleep(1.0 / rate)
        ing.wait_idle(quiet=1.0, timeout=120)
    finally:
        ing.stop()
        monitor.stop()
        broker.stop()
    seconds = time.perf_counter() - t0
    highest: dict[tuple[str, str], int] = {}
    for a in AlertStore(store).all():
        key = (a.patient_id, a.rule)
        highest[key] = max(highest.get(key, 0), a.severity)
    log.debug("%s: %s", name, ing.stats)
    return store, highest, seconds


def check_bad_never_used(store: EventStore, bad: Bad) -> dict[str, int]:
    """Counts that show the bad readings were kept out of scoring (see the module text)."""
    e = schema.events.c
    ids = {kind: {f"{FAULTY}/{r.id}" for _, r in rs}
           for kind, rs in (("future", bad.future), ("unit", bad.wrong_unit),
                            ("implausible", bad.implausible))}
    with store.engine.connect() as conn:
        rows = conn.execute(select(e.source_id, e.quality).where(
            e.source_id.in_(sorted(set().union(*ids.values()))))).all()
    stored = {sid: q for sid, q in rows}
    now = datetime.now(UTC) + timedelta(minutes=5)
    patients = list(store.patients()["id"])
    latest_future = sum(t > now for p in patients for t, _ in latest_items(store, p).values())
    trusted_bad = sum(1 for p in patients for o in store.timeline(p)
                      if o.source_id in set().union(*ids.values()))
    return {
        "future-dated stored flagged": sum(stored.get(s) == "future-dated"
                                           for s in ids["future"]),
        "future-dated stored unflagged": sum(s in stored and stored[s] is None
                                             for s in ids["future"]),
        "wrong-unit stored": sum(s in stored for s in ids["unit"]),
        "implausible stored": sum(s in stored for s in ids["implausible"]),
        "dead letters": len(store.dead_letters()),
        "bad readings read back as data": trusted_bad,
        "future times used as latest": latest_future,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--steps", type=int, default=48, help="ticks of 15 min (48 = 12 h)")
    ap.add_argument("--deteriorating", type=float, default=0.3)
    ap.add_argument("--rate", type=float, default=12.0, help="ticks per second (0: burst)")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = (datetime.now(UTC) - args.steps * INTERVAL).replace(microsecond=0)
    ward = list(simulated_ward(args.patients, start=start, interval=INTERVAL,
                               steps=args.steps, seed=args.seed,
                               deteriorating=args.deteriorating))
    bad = _inject(ward, start, random.Random(args.seed))
    n = sum(map(len, ward))
    print(f"ward: {args.patients} patients ({args.deteriorating:.0%} deteriorating), "
          f"{args.steps} ticks, {n} readings; injected {len(bad.future)} future-dated, "
          f"{len(bad.wrong_unit)} wrong-unit, {len(bad.implausible)} implausible")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clean_store, clean, t_clean = run(folder, "clean", ward, None, rate=args.rate)
        dirty_store, dirty, t_dirty = run(folder, "dirty", ward, bad, rate=args.rate)
        true = {k: s for k, s in clean.items() if not k[1].startswith("data-quality")}
        fired = {k: s for k, s in dirty.items() if not k[1].startswith("data-quality")}
        kept = sum(fired.get(k, 0) >= s for k, s in true.items())
        lost = sorted(k for k, s in true.items() if fired.get(k, 0) < s)
        added = sorted(k for k in fired if k not in true)
        dq = sorted(p for p, rule in dirty if rule.startswith("data-quality"))
        future_patients = sorted({r.patient for _, r in bad.future})
        print(f"\nclean (baseline): {len(true)} true alerts (patient, rule) fired "
              f"[{t_clean:.1f} s]")
        print(f"dirty:            {kept} of {len(true)} true alerts fired, {len(lost)} lost, "
              f"{len(added)} not in the baseline [{t_dirty:.1f} s]")
        if lost:
            print(f"  lost: {lost[:10]}")
        if added:
            print(f"  added: {added[:10]}")
        print(f"data-quality alerts naming device {FAULTY!r}: {len(dq)} patients "
              f"(patients sent future-dated readings: {len(future_patients)})")
        print("\nbad readings (dirty run):")
        counts = check_bad_never_used(dirty_store, bad)
        for key, value in counts.items():
            print(f"  {key:34} {value}")
        clean_counts = check_bad_never_used(clean_store, bad)
        print(f"  (clean run: dead letters {clean_counts['dead letters']}, "
              f"future times used as latest {clean_counts['future times used as latest']})")
        ok = (not lost and counts["future-dated stored unflagged"] == 0
              and counts["wrong-unit stored"] == counts["implausible stored"] == 0
              and counts["bad readings read back as data"] == 0
              and counts["future times used as latest"] == 0
              and dq == future_patients)
        print(f"\n{'PASS' if ok else 'FAIL'}: every true alert fired and no bad reading was "
              "scored or used as latest" if ok else "\nFAIL: see above")
        clean_store.close()
        dirty_store.close()


if __name__ == "__main__":
    main()
