"""Outcome metrics on hand-computable traces and on the peer's reference run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import ValidationError
from medtwin.trials.metrics import (
    cvga_points,
    cvga_zones,
    outcome_metrics,
    risk_components,
    risk_function,
)


@pytest.fixture
def glucose(reference):
    """A reader of the shared glucose reference tables (simglucose 0.2.11 outputs)."""
    return lambda name: pd.read_csv(reference / "glucose" / name)


def test_time_in_ranges_mean_gmi_and_cv_by_hand():
    g = np.array([[50.0, 60.0, 100.0, 200.0, 300.0], [70.0, 180.0, 181.0, 69.0, 100.0]])
    t = outcome_metrics(g, 5.0, subjects=["a", "b"])
    a, b = t.loc["a"], t.loc["b"]
    assert a["mean [mg/dL]"] == pytest.approx(142.0)
    assert a["gmi [%]"] == pytest.approx(3.31 + 0.02392 * 142.0)
    assert [a[f"time {r} [%]"] for r in ("<54", "<70", "70-180", ">180", ">250")] == \
        pytest.approx([20.0, 40.0, 20.0, 40.0, 20.0])
    # 70 and 180 are in range; 69 is below, 181 above
    assert b["time 70-180 [%]"] == pytest.approx(60.0)
    assert b["time <70 [%]"] == pytest.approx(20.0) and b["time >180 [%]"] == pytest.approx(20.0)
    cv = outcome_metrics(np.array([[100.0, 200.0]]), 1.0).iloc[0]
    assert cv["sd [mg/dL]"] == pytest.approx(50.0) and cv["cv [%]"] == pytest.approx(100 / 3)


def test_risk_function_zero_sign_and_window_mean():
    assert risk_function(np.array([112.5]))[0] == pytest.approx(0.0, abs=1e-3)
    rl, rh = risk_components(np.array([50.0, 112.5, 300.0]))
    assert rl[0] > 0 and rh[0] == 0 and rl[2] == 0 and rh[2] > 0
    f50 = 1.509 * (np.log(50.0) ** 1.084 - 5.381)
    assert rl[0] == pytest.approx(10 * f50**2)
    t = outcome_metrics(np.array([[50.0, 300.0]]), 1.0).iloc[0]
    # Kovatchev: the mean over all samples (rl = 0 where f > 0), not over the low samples only
    assert t["lbgi"] == pytest.approx(rl[0] / 2)
    assert t["hbgi"] == pytest.approx(rh[2] / 2)
    assert t["risk index"] == pytest.approx((rl[0] + rh[2]) / 2)


def test_per_sample_risk_matches_the_peer_columns(glucose):
    for name in ("adult_001_noiseless_1min.csv", "adult_001_dexcom_seed1.csv"):
        ref = glucose(name)
        rl, rh = risk_components(ref["BG"].to_numpy())
        np.testing.assert_allclose(rl, ref["LBGI"], atol=1e-10)
        np.testing.assert_allclose(rh, ref["HBGI"], atol=1e-10)
        np.testing.assert_allclose(rl + rh, ref["Risk"], atol=1e-10)


def test_reference_run_summary_and_total_insulin(glucose):
    """The README's summary of the noise-free run: BG 89.0/142.9/193.9, 52.1 U of insulin.

    The last row (24:00) has no insulin recorded (the peer logs the action after the step), so
    the day is rows 0..1439, one per minute.
    """
    ref = glucose("adult_001_noiseless_1min.csv").iloc[:-1]
    t = outcome_metrics(ref["BG"].to_numpy(), 1.0, insulin=ref["insulin"].to_numpy()).iloc[0]
    assert t["mean [mg/dL]"] == pytest.approx(142.9, abs=0.05)
    assert t["total insulin [U]"] == pytest.approx(52.1, abs=0.05)
    assert t["insulin per day [U/day]"] == pytest.approx(t["total insulin [U]"])
    assert t["lbgi"] == pytest.approx(ref["LBGI"].mean())
    assert t["hbgi"] == pytest.approx(ref["HBGI"].mean())
    assert t["time <70 [%]"] == 0.0  # min BG is 89.0
    assert t["time >180 [%]"] == pytest.approx(100 * (ref["BG"] > 180).mean())


def test_total_insulin_by_hand():
    g = np.full((2, 288), 120.0)
    u = np.vstack([np.full(288, 0.02), np.zeros(288)])  # U/min, every 5 min for a day
    t = outcome_metrics(g, 5.0, insulin=u)
    np.testing.assert_allclose(t["total insulin [U]"], [28.8, 0.0])


@pytest.mark.parametrize(
    ("lo", "hi", "zone", "cell"),
    [
        (100, 150, "A", "A"),
        (80, 150, "B", "Lower B"),
        (100, 250, "B", "Upper B"),
        (80, 250, "B", "B"),
        (60, 150, "C", "Lower C"),
        (100, 350, "C", "Upper C"),
        (60, 250, "D", "Lower D"),
        (80, 350, "D", "Upper D"),
        (60, 350, "E", "E"),
        (130, 100, "A", "A"),  # clamped to (110, 110)
        (90, 180, "B", "B"),  # min 90 is in (70, 90], max 180 in [180, 300)
        (70, 300, "E", "E"),  # min 70 is <= 70, max 300 is >= 300
        (20, 900, "E", "E"),
    ],
)
def test_cvga_cells(lo, hi, zone, cell):
    z, c = cvga_zones(np.array([lo]), np.array([hi]))
    assert (z[0], c[0]) == (zone, cell)


def test_cvga_points_are_clamped_percentiles():
    g = np.linspace(40.0, 500.0, 1001)[None, :]
    lo, hi = cvga_points(g)
    assert lo[0] == pytest.approx(max(50.0, np.percentile(g, 2.5)))
    assert hi[0] == 400.0
    g2 = np.linspace(95.0, 170.0, 101)[None, :]
    t = outcome_metrics(g2, 1.0).iloc[0]
    assert t["cvga zone"] == "A"
    assert t["cvga min [mg/dL]"] == pytest.approx(np.percentile(g2, 2.5))


def test_bad_input():
    with pytest.raises(ValidationError, match="subject 0, sample 1"):
        outcome_metrics(np.array([[100.0, np.nan]]), 1.0)
    with pytest.raises(ValidationError, match="non-empty"):
        outcome_metrics(np.empty((0, 3)), 1.0)
    with pytest.raises(ValidationError, match="sample_time"):
        outcome_metrics(np.ones((1, 3)) * 100, 0.0)
    with pytest.raises(ValidationError, match="insulin"):
        outcome_metrics(np.ones((1, 3)) * 100, 1.0, insulin=np.ones((1, 2)))
