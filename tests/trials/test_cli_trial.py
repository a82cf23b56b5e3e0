"""``medtwin trial glucose`` through typer's CliRunner, on a tiny run."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from medtwin.cli import app


def test_trial_glucose_writes_metrics_report_and_traces(tmp_path):
    out, report, traces = tmp_path / "m.csv", tmp_path / "r.html", tmp_path / "t.csv"
    res = CliRunner().invoke(app, [
        "trial", "glucose", "--cohort", "uva-padova", "--subjects", "adult#00[12]",
        "--controller", "basal-bolus", "--days", "0.5", "--seed", "7", "--meal", "07:00=50",
        "--out", str(out), "--report", str(report), "--traces", str(traces),
        "--scheduler", "serial", "--chunk-size", "1",
    ])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out, index_col="subject")
    assert list(table.index) == ["adult#001", "adult#002"]
    assert {"time 70-180 [%]", "gmi [%]", "cvga zone", "total insulin [U]"} <= set(table.columns)
    assert report.stat().st_size > 1_000_000
    assert len(pd.read_csv(traces)) == 2 * 144
    assert "2 subjects x 0.5 days" in res.output


def test_trial_glucose_bad_input_is_a_clear_error(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["trial", "glucose", "--controller", "mpc", "--days", "1",
                              "--out", str(tmp_path / "m.csv"), "--scheduler", "serial"])
    assert res.exit_code == 2 and "known controllers: basal-bolus, pid" in res.output
    res = runner.invoke(app, ["trial", "glucose", "--days", "0", "--out", str(tmp_path / "m.csv"),
                              "--scheduler", "serial"])
    assert res.exit_code == 2 and "days" in res.output
    res = runner.invoke(app, ["trial", "glucose", "--seed", "-1", "--scheduler", "serial",
                              "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 2 and "seed" in res.output


def test_trial_glucose_takes_a_list_of_subjects_and_never_overwrites_silently(tmp_path):
    """Issue 17: the help's 'adult#001,adult#002' works; an existing --out needs --force."""
    out = tmp_path / "m.csv"
    args = ["trial", "glucose", "--subjects", "adult#001, adult#003", "--controller",
            "basal-bolus", "--days", "0.1", "--scheduler", "serial", "--out", str(out)]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert list(pd.read_csv(out, index_col="subject").index) == ["adult#001", "adult#003"]
    out.write_text("mine")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--force" in res.output and out.read_text() == "mine"
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert out.read_text() != "mine"
