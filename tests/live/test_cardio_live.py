"""The live loop keeps a cardiac patient's cardiovascular twin in step with its vitals, end to
end through a real Mosquitto and the store (SQLite and PostgreSQL): readings in, twin
snapshots out, batched per patient, never in the way of ingestion."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from medtwin.api.settings import Settings
from medtwin.core import codes
from medtwin.core.records import SNOMED, Condition, Observation, Patient
from medtwin.live.ingest import Ingester
from medtwin.live.publish import DevicePublisher
from medtwin.live.streams import Reading
from medtwin.live.sync import CARDIO_MIN_INTERVAL, CardioHook, MonitorLoop
from medtwin.store.snapshots import latest_snapshot
from medtwin.twin import cardio_sync

HYPERTENSION = "38341003"  # SNOMED CT: a cardiac diagnosis (cardio_service.CARDIAC_CONDITIONS)
T0 = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
R_SYS = "R_sys [mmHg*s/mL]"


def _patients(store, cardiac: list[str], other: list[str] = ()) -> None:
    store.append([Patient(id=p, source_id=f"Patient/{p}") for p in [*cardiac, *other]],
                 [Condition(p, HYPERTENSION, SNOMED, f"Condition/{p}-htn") for p in cardiac])


def _vitals(patient: str, minutes: range, sbp: float, dbp: float, hr: float = 75.0,
            start: datetime = T0) -> list[Reading]:
    out = []
    for m in minutes:
        t = start + timedelta(minutes=m)
        for metric, code, value, unit in (("hr", codes.HEART_RATE, hr, "/min"),
                                          ("sbp", codes.SYSTOLIC_BP, sbp, "mm[Hg]"),
                                          ("dbp", codes.DIASTOLIC_BP, dbp, "mm[Hg]")):
            out.append(Reading(patient, metric, t, code, value, unit,
                               f"{patient}-{metric}-{t.isoformat()}"))
    return out


@contextmanager
def _live(store, broker, hook: CardioHook) -> Iterator[tuple[Callable, Ingester]]:
    """Ingester -> monitor loop (with ``hook``) on a topic prefix of this run only; yields a
    ``send(readings)`` that publishes and waits for the broker's acknowledgements."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    monitor = MonitorLoop(store, broker=broker.url, prefix=prefix, hooks=[hook]).start()
    ing = Ingester(store, broker=broker.url, prefix=prefix, on_stored=monitor.on_stored,
                   client_id=f"cardio-{os.getpid()}-{prefix}").start()
    pub = DevicePublisher(broker=broker.url, prefix=prefix, site="cardio").open()

    def send(readings: list[Reading]) -> None:
        pub.publish(readings)
        pub.flush()

    try:
        yield send, ing
    finally:
        pub.__exit__(None, None, None)
        ing.stop()
        monitor.stop()


def _wait_for(what: Callable[[], bool], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.05)
    return what()


def _twin_time(store, patient: str) -> datetime | None:
    snap = latest_snapshot(store, patient, model=cardio_sync.SNAPSHOT_MODEL)
    return None if snap is None else snap.twin_time


def _estimate(store, patient: str) -> cardio_sync.CardioEstimate:
    """The stored twin as it is (nothing new to assimilate: nothing stored)."""
    return cardio_sync.personalise_from_store(store, patient, save=False, forecast=False)


def _newest_seq(store, patient: str) -> int:
    return max(seq for seq, _ in store.records_after(patient, 0, kinds=["observation"],
                                                     limit=100_000))


def test_the_interval_setting_defaults_to_the_twins_policy():
    assert Settings().cardio_twin_interval_seconds == cardio_sync.LIVE_MIN_INTERVAL_S
    assert CARDIO_MIN_INTERVAL == timedelta(seconds=cardio_sync.LIVE_MIN_INTERVAL_S)


def test_a_cardiac_patients_readings_update_the_twin_in_the_direction_of_the_data(
        store, broker):
    _patients(store, ["card"], ["plain"])
    hook = CardioHook(store, min_interval=timedelta(seconds=0.5))
    with _live(store, broker, hook) as (send, ing):
        # 20 min of a resting adult's vitals, then 40 min of hypertension
        send(_vitals("plain", range(0, 20), 120, 80) + _vitals("card", range(0, 20), 120, 80))
        first = T0 + timedelta(minutes=19)
        assert _wait_for(lambda: _twin_time(store, "card") == first), _twin_time(store, "card")
        before = _estimate(store, "card")
        snap = latest_snapshot(store, "card", model=cardio_sync.SNAPSHOT_MODEL)
        assert snap.data_cutoff == _newest_seq(store, "card")

        send(_vitals("card", range(20, 60), 165, 105))
        newest = T0 + timedelta(minutes=59)
        assert _wait_for(lambda: _twin_time(store, "card") == newest), _twin_time(store, "card")
        assert hook.wait_idle(30)
        assert ing.stats.stored == 3 * (20 + 20 + 40) and ing.stats.dead_lettered == 0
    after = _estimate(store, "card")
    snap = latest_snapshot(store, "card", model=cardio_sync.SNAPSHOT_MODEL)
    assert snap.data_cutoff == _newest_seq(store, "card")  # the cut-off is the newest reading
    assert after.time == newest and after.n_readings > before.n_readings
    # higher pressures at the same heart rate: the twin's afterload rises
    assert after.parameters[R_SYS].mean > 1.15 * before.parameters[R_SYS].mean, (
        before.parameters[R_SYS], after.parameters[R_SYS])
    assert after.vitals == {}  # the live update skips the forecast band
    # batched: far fewer updates than readings (each update takes all that waited)
    assert 2 <= hook.updates < 20 and hook.failures == 0
    # the patient without a cardiac diagnosis got no cardio twin
    assert latest_snapshot(store, "plain", model=cardio_sync.SNAPSHOT_MODEL) is None
    assert hook.skipped >= 1


def test_a_quarantined_reading_is_not_assimilated(store, broker):
    _patients(store, ["card"])
    hook = CardioHook(store, min_interval=timedelta(seconds=0.2))
    with _live(store, broker, hook) as (send, ing):
        send(_vitals("card", range(0, 10), 125, 82))
        assert _wait_for(lambda: _twin_time(store, "card") == T0 + timedelta(minutes=9))
        assert hook.wait_idle(30)
        updates = hook.updates
        # a device clock a day ahead: stored, quarantined, never the twin's
        future = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
        send(_vitals("card", range(1), 240, 150, hr=150, start=future))
        assert _wait_for(lambda: ing.stats.future_dated == 3)
        time.sleep(0.5)  # the loop had its chance to react to it
        assert hook.wait_idle(30) and hook.updates == updates  # it woke no update
        # the next trusted readings update the twin, still without the quarantined ones
        send(_vitals("card", range(10, 15), 125, 82))
        last = T0 + timedelta(minutes=14)
        assert _wait_for(lambda: _twin_time(store, "card") == last), _twin_time(store, "card")
        assert hook.wait_idle(30)
    est = _estimate(store, "card")
    assert est.time == last < future
    assert est.parameters[R_SYS].upper < 2.0  # 240/150 would have pushed it far up
    trusted = store.timeline("card", kinds=["observation"])
    kept = store.timeline("card", kinds=["observation"], include_flagged=True)
    assert len(trusted) == 3 * 15 and len(kept) == 3 * 16  # quarantined: kept as evidence
    assert {o.time for o in kept if isinstance(o, Observation)} - {o.time for o in trusted} \
        == {future}


def test_ingestion_keeps_up_while_twins_update(store, broker):
    """Six cardiac patients, two hours of minute vitals each, published as fast as the
    broker takes them, with updates as often as possible (no interval): every reading is
    stored and none is lost, in the usual time, and the twins catch up afterwards."""
    pids = [f"card{i}" for i in range(6)]
    _patients(store, pids)
    hook = CardioHook(store, min_interval=timedelta(0))
    readings = [r for m in range(120) for p in pids
                for r in _vitals(p, range(m, m + 1), 120 + (m >= 60) * 30, 80)]
    with _live(store, broker, hook) as (send, ing):
        t0 = time.monotonic()
        send(readings)
        assert ing.wait_idle(timeout=30)
        took = time.monotonic() - t0
        assert ing.stats.stored == len(readings) == 6 * 120 * 3
        assert ing.stats.dead_lettered == 0
        assert hook.wait_idle(60)
        newest = T0 + timedelta(minutes=119)
        assert all(_wait_for(lambda p=p: _twin_time(store, p) == newest, 10) for p in pids)
    assert hook.failures == 0 and hook.updates >= len(pids)
    assert took < 30, f"ingesting {len(readings)} readings took {took:.1f} s"


@pytest.mark.parametrize("interval", [-1.0])
def test_a_negative_interval_is_refused(store, interval):
    from medtwin.core.errors import MedtwinError

    with pytest.raises(MedtwinError, match="min_interval"):
        CardioHook(store, min_interval=timedelta(seconds=interval))
