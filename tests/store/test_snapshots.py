"""Twin snapshots: append-only, versioned per patient, readable as of a past time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.errors import ValidationError
from medtwin.store.snapshots import (
    latest_snapshot,
    save_snapshot,
    snapshot_at,
    snapshot_versions,
)

T = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def test_versions_increase_and_past_beliefs_are_kept(store):
    assert latest_snapshot(store, "p1") is None
    for i, minutes in enumerate((0, 5, 10)):
        s = save_snapshot(store, "p1", {"glucose": 100 + i}, model="m", model_version="1",
                          twin_time=T + timedelta(minutes=minutes), data_cutoff=10 * i)
        assert s.version == i + 1
    other = save_snapshot(store, "p2", {"glucose": 50}, model="m", model_version="1",
                          twin_time=T)
    assert other.version == 1  # numbered per patient
    assert [v for v, _ in snapshot_versions(store, "p1")] == [1, 2, 3]
    assert latest_snapshot(store, "p1").payload == {"glucose": 102}
    at = snapshot_at(store, "p1", T + timedelta(minutes=7))  # "what did it believe at 14:07"
    assert at.version == 2 and at.payload == {"glucose": 101} and at.data_cutoff == 10
    assert at.twin_time == T + timedelta(minutes=5)
    assert snapshot_at(store, "p1", T - timedelta(seconds=1)) is None
    assert snapshot_at(store, "p1", datetime.now(UTC), by="created_at").version == 3
    with pytest.raises(ValidationError):
        snapshot_at(store, "p1", datetime(2026, 3, 2, 14, 5))  # naive time: zone unknown


def test_a_twin_snapshot_round_trips_through_the_store(store):
    from medtwin.core.records import Observation
    from medtwin.twin.glucose import MODEL_NAME, MODEL_VERSION, GlucoseTwin

    obs = [Observation("p1", "99504-3", T + timedelta(minutes=5 * k), 150.0 - 2 * k, "mg/dL",
                       f"g{k}") for k in range(6)]
    twin = GlucoseTwin("adult#002").assimilate(obs[:3])
    save_snapshot(store, "p1", twin.snapshot(), model=MODEL_NAME, model_version=MODEL_VERSION,
                  twin_time=twin.time_)
    back = GlucoseTwin.from_snapshot(latest_snapshot(store, "p1").payload)
    twin.assimilate(obs[3:])
    back.assimilate(obs[3:])
    assert back.glucose_ == twin.glucose_ and back.time_ == twin.time_
