"""Domain records are immutable, validated when built, and hash their content stably."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from medtwin.core.errors import ValidationError
from medtwin.core.records import Component, Intervention, InterventionKind, Observation

T = datetime(2026, 1, 5, 8, tzinfo=UTC)


def test_observation_is_immutable_and_times_become_utc():
    local = datetime(2026, 1, 5, 10, tzinfo=timezone(timedelta(hours=2)))
    obs = Observation(subject="p", code="8867-4", time=local, value=70, unit="/min",
                      source_id="Observation/1")
    assert obs.time == T and obs.time.tzinfo == UTC and obs.value == 70.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        obs.value = 71  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"time": datetime(2026, 1, 5)}, "no time zone"),
    ({"value": float("nan")}, "finite"),
    ({"subject": ""}, "non-empty"),
    ({"value": None, "unit": None}, "no value"),
])
def test_observation_rejects_bad_values(kwargs, message):
    base = {"subject": "p", "code": "8867-4", "time": T, "value": 70, "unit": "/min",
            "source_id": "Observation/1"}
    with pytest.raises(ValidationError, match=message):
        Observation(**{**base, **kwargs})


def test_components_carry_a_blood_pressure():
    bp = Observation(subject="p", code="85354-9", time=T, value=None, unit=None,
                     source_id="Observation/bp",
                     components=[Component("8480-6", 120, "mm[Hg]"),
                                 Component("8462-4", 80, "mm[Hg]")])
    assert isinstance(bp.components, tuple) and bp.components[0].value == 120
    assert Observation.from_dict(bp.to_dict()) == bp


def test_intervention_kinds_and_bounds():
    dose = Intervention(subject="p", kind="meal", time=T, amount=50, unit="g",
                        source_id="meal/1", duration=timedelta(minutes=10))
    assert dose.kind is InterventionKind.MEAL
    with pytest.raises(ValidationError, match="amount must be >= 0"):
        Intervention(subject="p", kind="meal", time=T, amount=-1, unit="g", source_id="m")
    with pytest.raises(ValidationError, match="unknown kind 'snack'; use one of"):
        Intervention(subject="p", kind="snack", time=T, amount=1, unit="g", source_id="m")


def test_content_hash_changes_with_content_only():
    a = Observation(subject="p", code="8867-4", time=T, value=70, unit="/min", source_id="o")
    b = Observation(subject="p", code="8867-4", time=T, value=70.0, unit="/min", source_id="o")
    c = dataclasses.replace(a, value=71)
    assert a.content_hash() == b.content_hash() != c.content_hash()
