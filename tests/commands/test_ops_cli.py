"""`medtwin ops run|calibrate|optimise|forecast` through typer's CliRunner, on small runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.core.records import Encounter, Patient
from medtwin.store.event_store import EventStore

runner = CliRunner()


def test_run_nelson_by_name_writes_csv_and_offline_html(tmp_path):
    out, rep = tmp_path / "results.csv", tmp_path / "report.html"
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "4", "--seed", "0",
                            "--out", str(out), "--report", str(rep)])
    assert r.exit_code == 0, r.output
    assert "wait:registration" in r.output and "95% CI" in r.output
    df = pd.read_csv(out)
    assert len(df) == 4 and {"rep", "wait:triage", "util:exam_rooms"} <= set(df.columns)
    html = rep.read_text()
    assert '<script src="http' not in html and "<script src='http" not in html  # no CDN
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js inline
    assert "Occupancy over the day" in html and "Mean wait by activity" in html


def test_run_with_scenario_changes_results_and_compare(tmp_path):
    sc = tmp_path / "treat2.yaml"
    sc.write_text("name: treat+1\nchanges:\n  resources:\n    non_trauma_cubicles: "
                  "{capacity: 2}\n")
    base, more = tmp_path / "base.csv", tmp_path / "more.csv"
    assert runner.invoke(app, ["ops", "run", "nelson", "--reps", "3", "--out",
                               str(base)]).exit_code == 0
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "3", "--scenario", str(sc),
                            "--out", str(more)])
    assert r.exit_code == 0, r.output
    b, m = pd.read_csv(base), pd.read_csv(more)
    assert (m["wait:non_trauma_treatment"] < b["wait:non_trauma_treatment"]).all()
    assert (m["wait:triage"] == b["wait:triage"]).all()  # common random numbers upstream
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "3", "--scenario", str(sc),
                            "--compare"])
    assert r.exit_code == 0 and "treat+1" in r.output and "difference" in r.output


def test_bad_model_file_exits_2_with_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresources: {a: {capacity: 1}}\nactivities:\n"
                   "  s: {resource: b, duration: {dist: exponential, mean: 1}}\n"
                   "classes: {c: {pathway: [s]}}\narrivals: [{rate_per_hour: 1, class: c}]\n")
    r = runner.invoke(app, ["ops", "run", str(bad), "--reps", "2"])
    assert r.exit_code == 2
    assert f"{bad}:4" in r.output and "unknown resource 'b'" in r.output


def _ward_store(path, now):
    rng = np.random.default_rng(0)
    pats = [Patient(id=f"p{i}", source_id=f"s{i}") for i in range(20)]
    recs, t = [], now - timedelta(days=15)
    i = 0
    while t < now:
        t += timedelta(hours=float(rng.exponential(1.0)))
        end = t + timedelta(minutes=float(rng.lognormal(6.0, 0.5)))
        if t >= now:
            break
        recs.append(Encounter(subject=f"p{i % 20}", source_id=f"e{i}", start=t,
                              end=None if end > now else end, klass="IMP"))
        i += 1
    with EventStore.open(path) as s:
        s.append(pats, recs)


def test_calibrate_then_forecast_then_optimise(tmp_path):
    db = tmp_path / "s.sqlite"
    _ward_store(db, datetime(2025, 3, 3, 12, tzinfo=UTC))
    model = tmp_path / "cal.yaml"
    r = runner.invoke(app, ["ops", "calibrate", "--db", str(db), "--class", "IMP", "--out",
                            str(model), "--capacity", "15"])
    assert r.exit_code == 0, r.output
    assert "best LOS fit" in r.output and "aic" in r.output
    fc = tmp_path / "fc.csv"
    r = runner.invoke(app, ["ops", "forecast", str(model), "--db", str(db), "--hours", "24",
                            "--reps", "10", "--out", str(fc)])
    assert r.exit_code == 0, r.output
    assert "census at" in r.output
    df = pd.read_csv(fc)
    assert len(df) == 25 and (df.occupancy_lo <= df.occupancy_hi).all()
    r = runner.invoke(app, ["ops", "optimise", str(model), "--target", "p_within_4h>=0.9",
                            "--vary", "beds=4:14", "--reps", "4"])
    assert r.exit_code in (0, 1), r.output
    assert "trade-off" in r.output and "cost_per_day" in r.output


def test_optimise_nelson_exam_rooms(tmp_path):
    r = runner.invoke(app, ["ops", "optimise", "nelson", "--target", "wait:examination<=15",
                            "--vary", "exam_rooms=3:5", "--reps", "5"])
    assert r.exit_code == 0, r.output
    assert "cheapest meeting the target" in r.output
