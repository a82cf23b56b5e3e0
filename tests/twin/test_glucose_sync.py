"""GlucoseSync: from stored records to an updated twin, a snapshot and a hypo finding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from medtwin.core.records import Intervention, Observation, Patient
from medtwin.store.snapshots import snapshot_at, snapshot_versions
from medtwin.twin.glucose_sync import RULE, GlucoseSync

T = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def cgm(k: int, value: float, patient: str = "p1") -> Observation:
    return Observation(patient, "99504-3", T + timedelta(minutes=5 * k), value, "mg/dL",
                       f"{patient}-cgm-{k}")


def test_sync_updates_snapshots_and_predicts_a_low(store):
    store.append([Patient("p1", "p1"), Patient("p2", "p2")])
    sync = GlucoseSync(store, subject_of={"p1": "adult#001"})
    assert sync.update("p1") == []  # nothing to assimilate yet
    store.append(records=[cgm(k, 140.0) for k in range(7)])
    [f] = sync.update("p1")
    assert f.rule == RULE and f.severity == 0 and f.detail["probability"] < 0.1
    # a large bolus, then a trace that falls and stays low: the twin must see the low
    store.append(records=[Intervention("p1", "insulin", T + timedelta(minutes=35), 12.0, "U",
                                       "bolus-1")])
    store.append(records=[cgm(k, max(140.0 - 6.0 * (k - 7), 62.0)) for k in range(7, 40)])
    [f] = sync.update("p1")
    assert f.severity == 2, f.detail
    assert f.detail["minutes_to_threshold"] is not None
    assert "predicted to fall below 70 mg/dL" in f.message and " UTC" in f.message
    assert "~" not in f.message and "P =" not in f.message
    versions = snapshot_versions(store, "p1")
    assert [v for v, _ in versions] == [1, 2]
    # the belief at 06:30 is the first snapshot's, with the glucose of that time
    early = snapshot_at(store, "p1", T + timedelta(minutes=31))
    assert early.version == 1 and early.payload["summary"]["glucose"] > 120
    # a late reading (older than the twin) is flagged, not lost; no new data -> no new version
    store.append(records=[Observation("p1", "99504-3", T + timedelta(minutes=2), 139.0,
                                      "mg/dL", "late")])
    [f] = sync.update("p1")
    assert [x["source_id"] for x in f.detail["flags"]] == ["late"]
    assert len(snapshot_versions(store, "p1")) == 3
    sync.update("p1")
    assert len(snapshot_versions(store, "p1")) == 3
    # another patient without a subject starts from the population prior
    store.append(records=[cgm(0, 180.0, "p2"), cgm(1, 178.0, "p2")])
    [f2] = sync.update("p2")
    assert f2.severity == 0 and len(snapshot_versions(store, "p2")) == 1


def test_a_quarantined_reading_never_reaches_the_twin(store):
    """Review of issue 12: a CGM reading dated in the future (stored flagged) moved the twin's
    clock to its time; one dated 2099 made the monitor integrate for decades."""
    store.append([Patient("p1", "p1")])
    sync = GlucoseSync(store, subject_of={"p1": "adult#001"})
    store.append(records=[cgm(k, 140.0) for k in range(7)])
    sync.update("p1")
    before = snapshot_versions(store, "p1")[-1][1]
    far = Observation("p1", "99504-3", datetime(2099, 1, 1, tzinfo=UTC), 150.0, "mg/dL", "bad")
    store.append(records=[far], quality=["future-dated"])
    store.append(records=[cgm(7, 138.0)])
    [f] = sync.update("p1")
    latest = snapshot_at(store, "p1", datetime(2100, 1, 1, tzinfo=UTC))
    assert latest.twin_time < T + timedelta(hours=1) and latest.twin_time >= before
    assert "bad" not in str(f.detail)
