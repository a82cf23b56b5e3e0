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


# --- issue 17: options, scenario names, compare, JSON, --force, exit codes, $MEDTWIN_DB ----------
def test_resource_warm_up_and_length_options(tmp_path):
    import json

    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "2", "--resource", "exam_rooms=5",
                            "--length", "600", "--warm-up", "60", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["length"] == 600 and res["warm_up"] == 60 and res["reps"] == 2
    assert res["by_hour_of_day"] and "in_system" in res["by_hour_of_day"][0]
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "2", "--resource", "exam_room=5"])
    assert r.exit_code == 2 and "did you mean 'exam_rooms'" in r.output


def test_scenario_typo_exits_2_with_file_line_and_nearest_name(tmp_path):
    sc = tmp_path / "typo.yaml"
    sc.write_text("name: more\nchanges:\n  resources:\n    exam_room: {capacity: 4}\n")
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "2", "--scenario", str(sc)])
    assert r.exit_code == 2
    assert f"{sc}:4" in r.output and "did you mean 'exam_rooms'" in r.output


def test_one_replication_says_an_interval_needs_two():
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "1"])
    assert r.exit_code == 0, r.output
    assert "nan" not in r.output and "needs >= 2 replications" in r.output


def test_compare_side_by_side_with_counts_csvs_report_and_json(tmp_path):
    import json

    sc = tmp_path / "treat2.yaml"
    sc.write_text("name: treat+1\nchanges:\n  resources:\n    non_trauma_cubicles: "
                  "{capacity: 2}\n")
    out, summ, hourly, rep = (tmp_path / n for n in ("r.csv", "s.csv", "h.csv", "r.html"))
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "3", "--scenario", str(sc),
                            "--compare", "--out", str(out), "--summary", str(summ),
                            "--hourly", str(hourly), "--report", str(rep)])
    assert r.exit_code == 0, r.output
    assert "base vs scenario treat+1" in r.output and "side by side" in r.output
    assert "arrivals" in r.output and "throughput" in r.output and "truncated at 0" in r.output
    per_rep = pd.read_csv(out)
    assert sorted(set(per_rep["scenario"])) == ["base", "treat+1"] and len(per_rep) == 6
    s = pd.read_csv(summ)
    row = s[(s.scenario == "treat+1") & (s.kpi == "wait:non_trauma_treatment")].iloc[0]
    assert row.ci_low <= row["mean"] <= row.ci_high and row.difference < 0
    assert s[s.kpi.str.startswith("wait:")]["ci_low"].min() >= 0
    assert {"scenario", "hour_of_day", "in_system"} <= set(pd.read_csv(hourly).columns)
    assert "Paired differences" in rep.read_text()
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "2", "--scenario", str(sc),
                            "--compare", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert set(res["summary"]) == {"base", "treat+1"} and res["differences"]


def test_scenario_name_in_header_and_csv(tmp_path):
    sc = tmp_path / "treat2.yaml"
    sc.write_text("name: treat+1\nchanges:\n  resources:\n    non_trauma_cubicles: "
                  "{capacity: 2}\n")
    out = tmp_path / "r.csv"
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "2", "--scenario", str(sc),
                            "--out", str(out)])
    assert r.exit_code == 0 and "scenario treat+1" in r.output.splitlines()[0]
    assert set(pd.read_csv(out)["scenario"]) == {"treat+1"}


def test_out_is_never_overwritten_without_force(tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("keep me")
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "2", "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.output and out.read_text() == "keep me"
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "2", "--out", str(out),
                            "--force"])
    assert r.exit_code == 0 and "wait:triage" in out.read_text()


def test_calibrate_and_forecast_fall_back_to_medtwin_db(tmp_path, monkeypatch):
    import json

    db = tmp_path / "s.sqlite"
    _ward_store(db, datetime(2025, 3, 3, 12, tzinfo=UTC))
    monkeypatch.setenv("MEDTWIN_DB", str(db))
    model = tmp_path / "cal.yaml"
    r = runner.invoke(app, ["ops", "calibrate", "--class", "IMP", "--out", str(model),
                            "--capacity", "15", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["encounters"] > 0
    r = runner.invoke(app, ["ops", "calibrate", "--class", "IMP", "--out", str(model)])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(app, ["ops", "forecast", str(model), "--hours", "6", "--reps", "4",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["hours"]) == 7


def test_optimise_json_and_exit_1_when_nothing_meets_the_target():
    import json

    r = runner.invoke(app, ["ops", "optimise", "nelson", "--target", "wait:examination<=0.001",
                            "--vary", "exam_rooms=3:3", "--reps", "2", "--json"])
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["met"] is False
    r = runner.invoke(app, ["ops", "optimise", "nelson", "--target", "wait:examnation<=1",
                            "--vary", "exam_rooms=3:3", "--reps", "2"])
    assert r.exit_code == 2 and "did you mean 'wait:examination'" in r.output


def test_compare_with_one_replication_and_a_runtime_error_exits_3(tmp_path):
    sc = tmp_path / "treat2.yaml"
    sc.write_text("name: treat+1\nchanges:\n  resources:\n    non_trauma_cubicles: "
                  "{capacity: 2}\n")
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "1", "--scenario", str(sc),
                            "--compare"])
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.output and "nan" not in r.output and "needs >= 2" in r.output
    r = runner.invoke(app, ["ops", "run", "nelson", "--reps", "2", "--out",
                            str(tmp_path / "no" / "such" / "dir.csv")])
    assert r.exit_code == 2 and "does not exist" in r.output  # checked before the run
    r = runner.invoke(app, ["ops", "calibrate", "--out", str(tmp_path / "m.yaml"), "--db",
                            str(tmp_path / "none.sqlite")])
    assert r.exit_code == 3 and "no medtwin store" in r.output  # a store error
    r = runner.invoke(app, ["ops", "run", "nelson", "--compare"])
    assert r.exit_code == 2 and "--scenario" in r.output
