"""``medtwin trial cardio``: a scenario over a small virtual population, here or on Dask."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.twin.cardio import run_cardio_trial, virtual_population

ARGS = ["trial", "cardio", "--scenario", "vasodilator", "--subjects", "3", "--duration", "12",
        "--warmup", "4", "--seed", "2"]
OUT = ["HR", "SBP", "DBP", "MAP", "CO", "EF"]


def _direct() -> pd.DataFrame:
    cohort = virtual_population(3, seed=2)
    return run_cardio_trial("vasodilator", cohort, duration=12.0, warmup=4.0,
                            scheduler="serial")


def _same(csv: pd.DataFrame) -> None:
    key = ["subject", "run"]
    a = csv.sort_values(key).reset_index(drop=True)
    b = _direct().sort_values(key).reset_index(drop=True)
    assert list(a["subject"]) == list(b["subject"])
    np.testing.assert_allclose(a[OUT], b[OUT], rtol=1e-12)


def test_trial_cardio_serial_prints_the_effects_and_writes_the_rows(tmp_path) -> None:
    out = tmp_path / "cardio.csv"
    res = CliRunner().invoke(app, [*ARGS, "--scheduler", "serial", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "vasodilator" in res.output and "3 virtual subjects" in res.output
    assert "95% low" in res.output and "MAP" in res.output and str(out) in res.output
    csv = pd.read_csv(out)
    assert len(csv) == 6 and list(csv["run"][:2]) == ["baseline", "vasodilator"]
    _same(csv)
    mapline = next(line for line in res.output.splitlines() if line.startswith("MAP "))
    assert float(mapline.split()[3]) < 0  # a vasodilator lowers the mean arterial pressure


def test_trial_cardio_on_a_dask_scheduler(tmp_path) -> None:
    from medtwin.core.cluster import dask_client

    out = tmp_path / "cardio.csv"
    with dask_client(n_workers=1, processes=False) as client:
        address = client.scheduler.address
        res = CliRunner().invoke(app, [*ARGS, "--scheduler", address, "--chunk-size", "2",
                                       "--out", str(out)])
    assert res.exit_code == 0, res.output
    _same(pd.read_csv(out))


@pytest.mark.parametrize(("extra", "needle"), [
    (["--subjects", "0"], "subjects"),
    (["--scenario", "aspirin"], "aspirin"),
    (["--scenario", "baseline"], "scenario"),
    (["--cv", "R_sys [mmHg*s/mL]"], "--cv"),
    (["--cv", "nothing=0.1"], "cv"),
    (["--duration", "-1"], "duration"),
    (["--scheduler", "not-an-address"], "scheduler"),
])
def test_trial_cardio_refuses_bad_input(extra, needle) -> None:
    res = CliRunner().invoke(app, [*ARGS, "--scheduler", "serial", *extra])
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_trial_lists_both_trials() -> None:
    res = CliRunner().invoke(app, ["trial", "--help"])
    assert res.exit_code == 0 and "glucose" in res.output and "cardio" in res.output
