"""Report: AGP percentiles by time of day, self-contained HTML, PNG."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medtwin.core.errors import ValidationError
from medtwin.trials.metrics import outcome_metrics
from medtwin.trials.report import agp_percentiles, write_report


def _traces(n: int = 4, days: int = 2, dt: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    times = np.arange(0, days * 1440, dt)
    phase = 2 * np.pi * times / 1440
    g = 140 + 50 * np.sin(phase)[None, :] + 15 * np.arange(n)[:, None]
    return g, times


def test_agp_pools_subjects_and_days_by_time_of_day():
    times = np.array([0.0, 5.0, 1440.0, 1445.0])
    g = np.array([[100.0, 10.0, 300.0, 20.0], [200.0, 30.0, 400.0, 40.0]])
    agp = agp_percentiles(g, times, bin_minutes=5)
    assert list(agp.index) == [0.0, 5.0]
    pooled0 = [100, 300, 200, 400]
    for p in (5, 25, 50, 75, 95):
        assert agp.loc[0.0, f"p{p}"] == pytest.approx(np.percentile(pooled0, p))
    assert agp.loc[5.0, "p50"] == pytest.approx(25.0)
    # a start at 23:55 puts sample 0 into the 23:55 bin
    assert agp_percentiles(g, times, start_minute=1435, bin_minutes=5).index.max() == 1435.0


def test_html_report_is_self_contained(tmp_path):
    g, t = _traces()
    table = outcome_metrics(g, 5.0, subjects=[f"adult#00{i}" for i in range(1, 5)])
    out = write_report(tmp_path / "r.html", table, g, t, meta={"controller": "pid"})
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", text)  # no external script (CDN)
    assert len(text) > 1_000_000  # plotly.js is inline
    assert "adult#004" in text and "Ambulatory glucose profile" in text
    assert "Control variability grid analysis" in text and "pid" in text


def test_png_report(tmp_path):
    g, t = _traces()
    table = outcome_metrics(g, 5.0)
    out = write_report(tmp_path / "r.png", table, g, t)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_bad_input(tmp_path):
    g, t = _traces()
    table = outcome_metrics(g, 5.0)
    with pytest.raises(ValidationError, match=".html or .png"):
        write_report(tmp_path / "r.pdf", table, g, t)
    with pytest.raises(ValidationError, match="3 glucose rows"):
        write_report(tmp_path / "r.html", table, g[:3], t)
    with pytest.raises(ValidationError, match="outcome_metrics"):
        write_report(tmp_path / "r.html", table[["mean [mg/dL]"]], g, t)
