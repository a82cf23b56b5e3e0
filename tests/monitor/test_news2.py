"""NEWS2 against the RCP 2017 chart: every band edge of every item, both SpO2 scales, risks."""

from __future__ import annotations

import pytest

from medtwin.core.errors import ValidationError
from medtwin.monitor.news2 import Risk, Vitals, news2

NORMAL = dict(respiration_rate=16, spo2=97, on_oxygen=False, systolic_bp=120, pulse=70,
              consciousness="A", temperature=37.0)


def points(item: str, **kw) -> int:
    return news2(Vitals(**{**NORMAL, **kw})).points[item]


@pytest.mark.parametrize(("value", "want"), [
    (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (4, 3), (40, 3)])
def test_respiration_rate(value, want):
    assert points("respiration_rate", respiration_rate=value) == want


@pytest.mark.parametrize(("value", "want"), [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1),
                                             (96, 0), (100, 0), (70, 3)])
def test_spo2_scale_1(value, want):
    assert points("spo2", spo2=value) == want
    assert points("spo2", spo2=value, on_oxygen=True) == want  # scale 1 ignores oxygen


@pytest.mark.parametrize(("value", "oxygen", "want"), [
    (83, False, 3), (84, False, 2), (85, False, 2), (86, False, 1), (87, False, 1),
    (88, False, 0), (92, False, 0), (93, False, 0), (99, False, 0),  # >= 93 on air: 0
    (88, True, 0), (92, True, 0), (93, True, 1), (94, True, 1), (95, True, 2), (96, True, 2),
    (97, True, 3), (100, True, 3)])
def test_spo2_scale_2(value, oxygen, want):
    assert points("spo2", spo2=value, on_oxygen=oxygen, spo2_scale=2) == want


def test_air_or_oxygen():
    assert points("air_or_oxygen", on_oxygen=True) == 2
    assert points("air_or_oxygen", on_oxygen=False) == 0


@pytest.mark.parametrize(("value", "want"), [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1),
                                             (111, 0), (219, 0), (220, 3), (60, 3)])
def test_systolic_bp(value, want):
    assert points("systolic_bp", systolic_bp=value) == want


@pytest.mark.parametrize(("value", "want"), [(40, 3), (41, 1), (50, 1), (51, 0), (90, 0),
                                             (91, 1), (110, 1), (111, 2), (130, 2), (131, 3)])
def test_pulse(value, want):
    assert points("pulse", pulse=value) == want


@pytest.mark.parametrize(("value", "want"), [("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3),
                                             ("c", 3)])
def test_consciousness(value, want):
    assert points("consciousness", consciousness=value) == want


@pytest.mark.parametrize(("value", "want"), [(35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0),
                                             (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2),
                                             (34.0, 3), (36.04, 1), (36.06, 0)])
def test_temperature(value, want):
    assert points("temperature", temperature=value) == want


def test_aggregate_risk_bands():
    assert news2(Vitals(**NORMAL)).risk is Risk.LOW and news2(Vitals(**NORMAL)).total == 0
    four = news2(Vitals(**{**NORMAL, "respiration_rate": 22, "pulse": 115}))
    assert (four.total, four.risk) == (4, Risk.LOW)
    red = news2(Vitals(**{**NORMAL, "consciousness": "C"}))
    assert (red.total, red.risk) == (3, Risk.LOW_MEDIUM)  # a single item scoring 3
    five = news2(Vitals(**{**NORMAL, "respiration_rate": 22, "pulse": 115, "temperature": 38.5}))
    assert (five.total, five.risk) == (5, Risk.MEDIUM)
    six_red = news2(Vitals(**{**NORMAL, "respiration_rate": 25, "pulse": 115, "spo2": 95}))
    assert (six_red.total, six_red.risk) == (6, Risk.MEDIUM)  # medium outranks a red score
    seven = news2(Vitals(**{**NORMAL, "respiration_rate": 25, "on_oxygen": True, "pulse": 115}))
    assert (seven.total, seven.risk) == (7, Risk.HIGH)
    worst = news2(Vitals(respiration_rate=30, spo2=85, on_oxygen=True, systolic_bp=80,
                         pulse=140, consciousness="U", temperature=34.0))
    assert (worst.total, worst.risk) == (20, Risk.HIGH)


def test_partial_sets_say_what_is_missing():
    r = news2(Vitals(respiration_rate=26, pulse=70))
    assert r.partial and r.total == 3 and r.risk is Risk.LOW_MEDIUM
    assert set(r.missing) == {"spo2", "air_or_oxygen", "systolic_bp", "consciousness",
                              "temperature"}
    assert not news2(Vitals(**NORMAL)).partial


@pytest.mark.parametrize(("kw", "message"), [
    ({"temperature": 98.6}, "plausible range"),  # a Fahrenheit value given as Celsius
    ({"spo2": 130}, "plausible range"),
    ({"pulse": float("nan")}, "plausible range"),
    ({"consciousness": "X"}, "one of A, C, V, P, U"),
    ({"spo2_scale": 3}, "scale must be 1 or 2"),
])
def test_bad_input_is_a_typed_error(kw, message):
    with pytest.raises(ValidationError, match=message):
        Vitals(**{**NORMAL, **kw})
