"""What a clinician reads on the dashboard, without a browser: the ward tile's NEWS2 item by
item (the score is the sum of the points shown), why a score is partial, each value's age,
one unit per chart axis, plans numbered per kind, gaps in the occupancy chart, the demo
marker, refusals without API paths or header names."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from medtwin.core import codes
from medtwin.monitor.vitals import news2_breakdown
from medtwin.ui import charts, twins
from medtwin.ui.access import SYNTHETIC_TAG, WardRow, refusal
from medtwin.ui.layout import age_text, duration_text
from medtwin.ui.ward import partial_text, tile_html

NOW = datetime(2026, 1, 20, 9, 0, tzinfo=UTC)
CODE_LIKE = re.compile(r"\b[a-z]+_[a-z_]+\b|/research\b|/api/|X-[A-Z][\w-]+|\bNone\b")


def _tile(items: dict, *, glucose: datetime | None = None) -> str:
    b = news2_breakdown(items, at=NOW)
    last = max((t for t, _ in items.values()), default=None)
    vitals = {"Glucose": "126 mg/dL"} if glucose else {}
    return tile_html(WardRow("p1", "Ann", "MRN-1", vitals, b.score, [], last, None, b, glucose),
                     ZoneInfo("UTC"), NOW)


def _rows(html: str) -> dict[str, tuple[str, str | None, str]]:
    """item -> (status, points, the row's text) from a tile's NEWS2 table."""
    out = {}
    for m in re.finditer(r'<tr data-item="(\w+)" data-status="(\w+)"(?: data-points="(\d+)")?'
                         r'[^>]*>(.*?)</tr>', html):
        out[m[1]] = (m[2], m[3], " | ".join(re.findall(r"<td[^>]*>(.*?)</td>", m[4])))
    return out


def test_the_tile_score_is_the_sum_of_the_points_shown_with_units_bands_and_ages():
    items = {"respiration_rate": (NOW - timedelta(minutes=12), 22.0),
             "spo2": (NOW - timedelta(minutes=12), 95.0),
             "on_oxygen": (NOW - timedelta(minutes=12), False),
             "systolic_bp": (NOW - timedelta(minutes=30), 95.0),
             "pulse": (NOW - timedelta(minutes=3), 112.0),
             "consciousness": (NOW - timedelta(minutes=45), "A"),
             "temperature": (NOW - timedelta(minutes=50), 35.8)}
    html = _tile(items)
    rows = _rows(html)
    assert len(rows) == 7
    shown = sum(int(p) for _, p, _ in rows.values() if p is not None)
    total = int(re.search(r'data-total="(\d+)"', html)[1])
    badge = int(re.search(r"NEWS2 (\d+) ·", html)[1])
    assert shown == total == badge == 2 + 1 + 0 + 2 + 2 + 0 + 1
    assert "Respiration rate | 22 /min | 2 points (21-24 /min) | 12 min ago" in \
        rows["respiration_rate"][2]
    assert "SpO2 (scale 1) | 95% | 1 point (94-95%) | 12 min ago" in rows["spo2"][2]
    assert "Air or oxygen | on room air | 0 points | 12 min ago" in rows["air_or_oxygen"][2]
    assert "Systolic BP | 95 mmHg | 2 points (91-100 mmHg) | 30 min ago" in rows["systolic_bp"][2]
    assert "Heart rate | 112 /min | 2 points (111-130 /min) | 3 min ago" in rows["pulse"][2]
    assert "Consciousness | alert (A) | 0 points | 45 min ago" in rows["consciousness"][2]
    assert "Temperature | 35.8 °C | 1 point (35.1-36.0 °C) | 50 min ago" in rows["temperature"][2]
    assert "(partial)" not in html and "Partial score" not in html


def test_partial_is_explained_in_words_and_stale_values_show_their_age():
    items = {"respiration_rate": (NOW - timedelta(minutes=5), 18.0),
             "pulse": (NOW - timedelta(minutes=5), 88.0),
             "systolic_bp": (NOW - timedelta(days=3), 85.0),  # January BP next to today's HR
             "temperature": (NOW - timedelta(minutes=5), 98.6)}  # Fahrenheit: untrusted
    html = _tile(items, glucose=NOW - timedelta(hours=5))
    rows = _rows(html)
    assert rows["systolic_bp"][0] == "stale" and rows["systolic_bp"][1] is None
    assert "85 mmHg | not scored: older than 1 h | 3 days ago" in rows["systolic_bp"][2]
    status, points, text = rows["temperature"]
    cells = [c.strip() for c in text.split("|")]
    assert status == "untrusted" and points is None
    assert cells[1] == "reading not trusted"  # the value column never shows it as current
    assert cells[2].startswith("not scored: 98.6 °C is outside the plausible range")
    assert rows["spo2"][0] == "missing" and "not measured" in rows["spo2"][2]
    assert "NEWS2 0 · LOW (partial)" in html
    why = re.search(r"data-partial>(.*?)</div>", html)[1]
    assert why.startswith("Partial score: 2 of 7 parameters counted. Not counted:")
    for words in ("SpO2 (scale 1) (not measured)", "air or oxygen (not measured)",
                  "systolic BP (last reading 3 days ago, older than 1 h)",
                  "consciousness (not measured)",
                  "temperature (reading not trusted: 98.6 °C is outside the plausible range "
                  "25-45 °C: check the reading and its unit)"):
        assert words in why
    assert "Glucose 126 mg/dL · 5 h ago" in html  # whole hours: no "0 min"
    assert "last reading 20 Jan 08:55:00 UTC (5 min ago)" in html


def test_no_current_vitals_says_so_and_gives_no_score():
    html = _tile({"pulse": (NOW - timedelta(days=40), 80.0)})
    assert "NEWS2 -- no current vital signs" in html
    assert "every reading is older than its window" in html
    assert "40 days ago" in html and "data-total" not in html


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(seconds=20), "just now"), (timedelta(minutes=-3), "just now"),
    (timedelta(minutes=12), "12 min ago"), (timedelta(hours=1, minutes=5), "1 h 5 min ago"),
    (timedelta(hours=2), "2 h ago"), (timedelta(hours=7, minutes=59), "7 h ago"),
    (timedelta(hours=47), "47 h ago"), (timedelta(days=3, hours=2), "3 days ago")])
def test_ages_read_as_a_clinician_says_them(delta, text):
    assert age_text(NOW - delta, NOW) == text
    assert age_text(None, NOW) == "never"


def test_windows_in_words():
    assert duration_text(timedelta(hours=1)) == "1 h"
    assert duration_text(timedelta(minutes=30)) == "30 min"
    assert duration_text(timedelta(days=2)) == "2 days"


def test_partial_text_is_empty_for_a_whole_score():
    items = {k: (NOW, v) for k, v in (("respiration_rate", 16.0), ("spo2", 97.0),
                                      ("on_oxygen", False), ("systolic_bp", 120.0),
                                      ("pulse", 70.0), ("consciousness", "A"),
                                      ("temperature", 37.0))}
    assert partial_text(news2_breakdown(items, at=NOW)) == ""


def _series() -> pd.DataFrame:
    t = pd.date_range("2026-01-20T06:00Z", periods=4, freq="h")
    rows = [(x, c, v, u) for c, v, u in ((codes.HEART_RATE, 80.0, "/min"),
                                         (codes.RESPIRATORY_RATE, 16.0, "/min"),
                                         (codes.SPO2_PULSE_OXIMETRY, 97.0, "%"),
                                         (codes.SYSTOLIC_BP, 120.0, "mmHg"),
                                         (codes.BODY_TEMPERATURE, 37.0, "Cel")) for x in t]
    return pd.DataFrame(rows, columns=["time", "code", "value", "unit"])


def test_the_vitals_chart_has_one_unit_per_axis_each_titled_with_it():
    fig = charts.vitals_figure(_series())
    axes = {k.replace("axis", ""): fig.layout[k].title.text for k in fig.layout
            if k.startswith("yaxis")}
    assert len(axes) == 4  # /min, %, mmHg, °C
    units = {}
    for trace in fig.data:
        unit = re.search(r"\[(.+)\]$", trace.name)[1]
        title = axes[trace.yaxis]
        assert title.endswith(f"[{unit}]"), (trace.name, title)
        units.setdefault(trace.yaxis, set()).add(unit)
    assert all(len(u) == 1 for u in units.values())
    assert axes[next(t.yaxis for t in fig.data if t.name.startswith("Heart"))] == \
        "Heart rate, respiratory rate [/min]"
    empty = charts.vitals_figure(_series().iloc[:0])
    assert "No vital signs recorded" in empty.layout.annotations[0].text


def test_meals_and_boluses_are_numbered_from_1_each():
    rows = [twins.PlanRow("meal", 15, 60), twins.PlanRow("bolus", 0, 4),
            twins.PlanRow("meal", 240, 40), twins.PlanRow("bolus", 240, 3)]
    names = [twins.row_name(r, n) for r, n in twins.numbered(rows)]
    assert names == ["Meal 1", "Bolus 1", "Meal 2", "Bolus 2"]
    marks = twins.plan_marks(rows, NOW)
    assert [m[0] for m in marks] == names and marks[1][1] == NOW
    fig = charts.what_if_figure(None, pd.DataFrame(columns=["time", "value"]), marks=marks)
    assert [a.text for a in fig.layout.annotations] == names
    with pytest.raises(Exception, match="bolus 1 insulin"):
        twins.glucose_plan([twins.PlanRow("meal", 15, 60), twins.PlanRow("bolus", 0, 99)],
                           None, NOW)


def test_the_occupancy_chart_breaks_its_lines_over_hours_without_data():
    from medtwin.ops.report import figures
    from medtwin.ops.runner import Results

    class Model:
        time_unit = "min"

    hourly = pd.DataFrame({"rep": [0, 0, 0, 1, 1, 1], "time": [0, 60, 360] * 2,
                           "hour_of_day": [0, 1, 6] * 2, "in_system": [3, 2, 1, 5, 4, 3]})
    per_rep = pd.DataFrame({"rep": [0, 1], "throughput": [10.0, 12.0]})
    res = Results(Model(), 0, per_rep, hourly)  # type: ignore[arg-type]
    occ = figures(res)[-1]
    (trace,) = [t for t in occ.data if t.name == "in_system"]
    assert list(trace.x) == list(range(24))
    y = list(trace.y)
    assert y[0] == 4 and y[1] == 3 and y[6] == 2
    assert all(pd.isna(v) for v in y[2:6]) and trace.connectgaps is False


def test_refusals_name_no_api_path_or_header():
    from medtwin.security.policy import AccessDeniedError
    from medtwin.security.roles import Principal, Role

    exc = AccessDeniedError("give the reason in the X-Break-Glass-Reason header; use /research")
    for role in (Role.ADMIN, Role.RESEARCHER):
        text = refusal(Principal("u", "u", role), exc)
        assert not CODE_LIKE.search(text), text
    assert "emergency" in refusal(Principal("a", "a", Role.ADMIN), exc)
    assert "Trials" in refusal(Principal("r", "r", Role.RESEARCHER), exc)


def test_synthetic_patients_carry_the_tag_the_demo_banner_looks_for(tmp_path: Path):
    from medtwin.interop.fhir.synthetic import generate_patients

    (bundle,) = generate_patients(1, seed=1)
    patient = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "Patient")
    assert SYNTHETIC_TAG in {(t["system"], t["code"]) for t in patient["meta"]["tag"]}
