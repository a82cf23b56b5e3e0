"""The one-call scenario front and the ``medtwin simulate glucose`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.devices.scenario import parse_meal, simulate_scenario


def test_front_gives_per_minute_trace_with_states() -> None:
    df = simulate_scenario("child#004", [("08:00", 40)], days=2)
    assert len(df) == 2 * 1440 + 1
    assert {"time", "BG", "CGM", "CHO", "insulin", "Gp [mg/kg]", "Gs [mg/kg]"} <= set(df.columns)
    assert df["CHO"].sum() == pytest.approx(80.0)  # the meal repeats each day
    assert df.loc[480, "meal"] == 40 and df.loc[1440 + 480, "meal"] == 40
    np.testing.assert_allclose(df["CGM"], df["BG"])  # sensor None: noise-free, every minute
    assert df["time"].iloc[60] == pd.Timestamp("2018-01-01 01:00")


def test_front_with_noisy_sensor_is_reproducible_by_seed() -> None:
    a = simulate_scenario(sensor="dexcom", seed=3)
    b = simulate_scenario(sensor="dexcom", seed=3)
    c = simulate_scenario(sensor="dexcom", seed=4)
    np.testing.assert_array_equal(a["CGM"], b["CGM"])
    assert not np.allclose(a["CGM"], c["CGM"])
    assert np.max(np.abs(a["CGM"] - a["BG"])) > 1.0


def test_front_refuses_unknown_names_listing_known_ones() -> None:
    with pytest.raises(NotFoundError, match="adult#001"):
        simulate_scenario("adult#999")
    with pytest.raises(NotFoundError, match="known controllers: basal-bolus, pid"):
        simulate_scenario(controller="mpc")
    with pytest.raises(NotFoundError, match="known sensors: none, Dexcom"):
        simulate_scenario(sensor="libre")
    with pytest.raises(ValidationError, match="must be >= 0"):
        simulate_scenario(meals=[("07:00", -5)])
    with pytest.raises(ValidationError, match="HH:MM=GRAMS"):
        parse_meal("0700 50")
    with pytest.raises(ValidationError, match="not a time of day"):
        parse_meal("25:00=50")


def test_cli_simulate_glucose_writes_trace_and_plot(tmp_path: Path) -> None:
    out, plot = tmp_path / "trace.csv", tmp_path / "trace.png"
    res = CliRunner().invoke(app, [
        "simulate", "glucose", "--subject", "adult#001", "--meal", "07:00=50", "--meal",
        "12:00=70", "--meal", "19:00=80", "--controller", "basal-bolus", "--sensor", "none",
        "--seed", "1", "--days", "1", "--out", str(out), "--plot", str(plot),
    ])
    assert res.exit_code == 0, res.output
    assert "BG mean 142.9 mg/dL (min 89.0, max 193.9), insulin 52.1 U" in res.output  # the peer's
    df = pd.read_csv(out)
    assert len(df) == 1441 and plot.stat().st_size > 10_000
    bad = CliRunner().invoke(app, ["simulate", "glucose", "--controller", "nope", "--out",
                                   str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "known controllers" in bad.output
