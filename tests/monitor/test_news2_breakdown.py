"""NEWS2 item by item: every parameter's points and band, what was missing, stale or untrusted,
and a total that is the sum of the points shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core import codes
from medtwin.core.records import Observation, Patient
from medtwin.monitor.news2 import ITEMS, band_text, item_label, value_text
from medtwin.monitor.vitals import ItemStatus, latest_items, news2_breakdown

NOW = datetime(2026, 3, 5, 14, 0, tzinfo=UTC)


def ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


FULL = {"respiration_rate": (ago(minutes=5), 25.0), "spo2": (ago(minutes=5), 94.0),
        "on_oxygen": (ago(minutes=5), True), "systolic_bp": (ago(minutes=10), 105.0),
        "pulse": (ago(minutes=5), 95.0), "consciousness": (ago(minutes=30), "A"),
        "temperature": (ago(minutes=40), 38.4)}


def test_every_item_scores_and_the_total_is_the_sum_of_the_points():
    b = news2_breakdown(FULL, at=NOW)
    assert [i.item for i in b.items] == list(ITEMS)
    assert all(i.status is ItemStatus.SCORED for i in b.items)
    points = {i.item: i.points for i in b.items}
    # RCP 2017: RR 25 -> 3, SpO2 94 (scale 1) -> 1, oxygen -> 2, SBP 105 -> 1, pulse 95 -> 1,
    # alert -> 0, 38.4 degC -> 1
    assert points == {"respiration_rate": 3, "spo2": 1, "air_or_oxygen": 2, "systolic_bp": 1,
                      "pulse": 1, "consciousness": 0, "temperature": 1}
    assert b.score is not None and b.score.total == sum(points.values()) == 9
    assert not b.score.partial and b.unscored() == ()
    bands = {i.item: i.band for i in b.items}
    assert bands["respiration_rate"] == "≥ 25 /min" and bands["spo2"] == "94-95%"
    assert bands["systolic_bp"] == "101-110 mmHg" and bands["pulse"] == "91-110 /min"
    assert bands["temperature"] == "38.1-39.0 °C"


def test_stale_missing_and_untrusted_items_are_named_and_never_scored():
    items = {**FULL, "systolic_bp": (ago(days=3), 80.0),  # would score 3 if current
             "temperature": (ago(minutes=5), 3.7)}  # a Fahrenheit/Celsius slip: implausible
    del items["pulse"]
    b = news2_breakdown(items, at=NOW)
    status = {i.item: i.status for i in b.items}
    assert status["systolic_bp"] is ItemStatus.STALE
    assert status["pulse"] is ItemStatus.MISSING
    assert status["temperature"] is ItemStatus.UNTRUSTED
    by = {i.item: i for i in b.items}
    assert by["systolic_bp"].points is None and by["systolic_bp"].window == timedelta(hours=1)
    assert by["temperature"].points is None
    assert "3.7 °C is outside the plausible range 25-45 °C" in by["temperature"].problem
    assert b.score is not None and b.score.partial
    assert b.score.total == sum(i.points for i in b.items if i.points is not None) == 6
    assert "systolic_bp" not in b.score.points and "temperature" not in b.score.points


def test_nothing_current_gives_no_score():
    old = {k: (ago(hours=5), v) for k, (_, v) in FULL.items()}
    b = news2_breakdown(old, at=NOW)
    assert b.score is None and all(i.status is ItemStatus.STALE for i in b.items)
    assert news2_breakdown({}, at=NOW).score is None


@pytest.mark.parametrize(("spo2", "oxygen", "band", "points"), [
    (86, False, "86-87%", 1), (90, False, "88-92%", 0), (93, True, "93-94% on oxygen", 1),
    (97, True, "≥ 97% on oxygen", 3), (97, False, "≥ 93% on room air", 0)])
def test_scale_2_says_its_band_and_the_scale(spo2, oxygen, band, points):
    items = {"spo2": (ago(minutes=1), float(spo2)), "on_oxygen": (ago(minutes=1), oxygen)}
    b = news2_breakdown(items, at=NOW, spo2_scale=2)
    row = next(i for i in b.items if i.item == "spo2")
    assert row.label == "SpO2 (scale 2)" and row.band == band and row.points == points


def test_wording_has_units_and_clinical_words():
    assert value_text("temperature", 37.04) == "37.0 °C"
    assert value_text("spo2", 96.4) == "96%"
    assert value_text("air_or_oxygen", True) == "on supplemental oxygen"
    assert value_text("consciousness", "c") == "new confusion (C)"
    assert item_label("pulse") == "Heart rate" and item_label("spo2") == "SpO2 (scale 1)"
    assert band_text("respiration_rate", 8) == "≤ 8 /min"
    assert band_text("respiration_rate", 10) == "9-11 /min"
    assert band_text("temperature", 35.0) == "≤ 35.0 °C"
    assert band_text("temperature", 35.1) == "35.1-36.0 °C"
    assert band_text("temperature", 39.1) == "≥ 39.1 °C"
    assert band_text("systolic_bp", 220) == "≥ 220 mmHg"


def test_a_future_dated_reading_is_never_the_latest(store):
    """The invariant the tile relies on: flagged readings are kept but not read as latest."""
    store.append([Patient(id="p", source_id="p")])
    store.append(records=[Observation("p", codes.HEART_RATE, ago(minutes=5), 70.0, "/min",
                                      "hr-1")])
    store.append(records=[Observation("p", codes.HEART_RATE, NOW + timedelta(days=30), 180.0,
                                      "/min", "hr-2")], quality=["future-dated"])
    items = latest_items(store, "p")
    assert items["pulse"][1] == 70.0
    row = next(i for i in news2_breakdown(items, at=NOW).items if i.item == "pulse")
    assert row.value == 70.0 and row.points == 0
