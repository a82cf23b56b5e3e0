"""Issue 17 (operations analyst): arrival profiles from a CSV or opening hours, scenario files
that merge arrival lists and refuse unknown names (file, line, nearest name), common random
numbers that survive key order and profile changes, bounded confidence intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.core.yamlio import load_yaml
from medtwin.ops.engine import arrival_times, run_replication
from medtwin.ops.errors import ModelFileError
from medtwin.ops.kpis import summarise
from medtwin.ops.loader import load_model, parse_model, with_changes
from medtwin.ops.runner import run_replications
from medtwin.ops.scenarios import compare, load_scenario, run_scenarios, side_by_side

MIX = """\
name: mix
time_unit: minutes
run: {warm_up: 0, length: 1440}
resources:
  nurses: {capacity: 2}
  doctors: {capacity: 2}
activities:
  triage: {resource: nurses, duration: {dist: exponential, mean: 6}}
  treat: {resource: doctors, duration: {dist: lognormal, mean: 25, variance: 100}}
classes:
  minor: {pathway: [triage, {branch: {treat: 0.5, exit: 0.5}}, treat]}
  major: {priority: 1, pathway: [triage, treat]}
arrivals:
  - name: walk_in
    rate_per_hour: 6
    classes: {minor: 0.7, major: 0.3}
"""


def _model(text, file="<m>"):
    return parse_model(load_yaml(text, file), file)


# --- arrival profiles ------------------------------------------------------------------------
def test_rates_from_an_hourly_csv_equal_the_listed_rates(tmp_path):
    rates = [0.5 * h + 1 for h in range(24)]
    (tmp_path / "rates.csv").write_text("hour,rate_per_hour\n" + "".join(
        f"{h},{r}\n" for h, r in enumerate(rates)))
    listed = MIX.replace("rate_per_hour: 6", f"rates_per_hour: {rates}")
    (tmp_path / "m.yaml").write_text(MIX.replace("rate_per_hour: 6", "rates_csv: rates.csv"))
    a = load_model(tmp_path / "m.yaml")
    b = _model(listed)
    assert a.arrivals[0].rates_per_hour == tuple(rates)
    pd.testing.assert_frame_equal(run_replications(a, 2, 0, progress=False).per_rep,
                                  run_replications(b, 2, 0, progress=False).per_rep)


def test_weekly_csv_and_bad_rows_name_the_csv_line(tmp_path):
    (tmp_path / "week.csv").write_text("\n".join(["2"] * 168) + "\n")
    (tmp_path / "m.yaml").write_text(MIX.replace("rate_per_hour: 6", "rates_csv: week.csv"))
    assert len(load_model(tmp_path / "m.yaml").arrivals[0].rates_per_hour) == 168
    (tmp_path / "week.csv").write_text("rate\n" + "\n".join(["2"] * 5 + ["x"] + ["2"] * 18))
    with pytest.raises(ModelFileError) as e:
        load_model(tmp_path / "m.yaml")
    assert e.value.file.endswith("week.csv") and e.value.line == 7
    (tmp_path / "week.csv").write_text("\n".join(["2"] * 23))
    with pytest.raises(ModelFileError, match="23 rates, not 24 or 168") as e:
        load_model(tmp_path / "m.yaml")
    assert e.value.line == 15 and e.value.file.endswith("m.yaml")


def test_opening_hours_table_closes_the_other_hours():
    text = MIX.replace("    rate_per_hour: 6\n", "    rate_per_hour: 6\n    opening_hours: "
                       "{mon-fri: '08:00-20:00', sat: '09:00-13:00', sun: closed}\n")
    m = _model(text)
    r = np.asarray(m.arrivals[0].rates_per_hour).reshape(7, 24)
    assert r.shape == (7, 24)
    assert (r[0, 8:20] == 6).all() and (r[0, :8] == 0).all() and (r[0, 20:] == 0).all()
    assert (r[5, 9:13] == 6).all() and r[5].sum() == 24 and r[6].sum() == 0
    week = run_replication(m.__class__(**{**m.__dict__, "length": 7 * 1440}), 0, 0)
    hours = np.floor(week.arrival / 60).astype(int) % 168
    assert np.all(r.ravel()[hours] > 0)  # nobody arrives while closed
    with pytest.raises(ModelFileError, match="did you mean 'mon'") as e:
        _model(text.replace("sat:", "mnn:"))
    assert e.value.line == 16


# --- scenarios: merging and unknown names --------------------------------------------------
def test_scenario_merges_an_arrival_stream_by_name(tmp_path):
    base = _model(MIX)
    sc = tmp_path / "busy.yaml"
    sc.write_text("name: busy\nchanges:\n  arrivals:\n    - {name: walk_in, rate_per_hour: 9}\n")
    m = load_scenario(sc).apply(base)
    assert m.arrivals[0].rates_per_hour == (9.0,)
    assert m.arrivals[0].classes == base.arrivals[0].classes  # the rest is kept
    sc.write_text("name: busy\nchanges:\n  arrivals:\n    - name: walk_in\n"
                  "      classes: {minor: 0.5, major: 0.5}\n")
    assert dict(load_scenario(sc).apply(base).arrivals[0].classes) == {"minor": 0.5,
                                                                       "major": 0.5}


def test_scenario_typo_is_an_error_with_file_line_and_nearest_name(tmp_path):
    base = load_model("nelson")
    sc = tmp_path / "typo.yaml"
    sc.write_text("name: more\nchanges:\n  resources:\n    exam_room: {capacity: 4}\n")
    with pytest.raises(ModelFileError) as e:
        load_scenario(sc).apply(base)
    assert e.value.file == str(sc) and e.value.line == 4
    assert "exam_room" in str(e.value) and "did you mean 'exam_rooms'" in str(e.value)
    sc.write_text("name: more\nchanges:\n  arrivals:\n    - {name: al, rate_per_hour: 3}\n")
    with pytest.raises(ModelFileError, match="did you mean 'all'") as e:
        load_scenario(sc).apply(base)
    assert e.value.line == 4
    sc.write_text("name: x\nchange:\n  resources: {}\n")
    with pytest.raises(ModelFileError, match="did you mean 'changes'") as e:
        load_scenario(sc)
    assert e.value.line == 2
    # a bad value deeper down points at the scenario's line, not the model's
    sc.write_text("name: x\nchanges:\n  resources:\n    exam_rooms:\n      capacty: 4\n")
    with pytest.raises(ModelFileError, match="did you mean 'capacity'") as e:
        load_scenario(sc).apply(base)
    assert e.value.file == str(sc) and e.value.line == 5


def test_add_section_adds_a_new_resource(tmp_path):
    base = _model(MIX)
    sc = tmp_path / "add.yaml"
    sc.write_text("name: fast\nadd:\n  resources:\n    fast_track: {capacity: 1}\n"
                  "  activities:\n    quick: {resource: fast_track, duration: "
                  "{dist: exponential, mean: 5}}\nchanges:\n  classes:\n    minor:\n"
                  "      pathway: [triage, quick]\n")
    m = load_scenario(sc).apply(base)
    assert "fast_track" in m.resources and m.classes["minor"].steps[1].target == "quick"


# --- common random numbers ------------------------------------------------------------------
def test_identical_model_with_keys_reordered_gives_identical_results():
    a = _model(MIX)
    b = _model(MIX.replace("{minor: 0.7, major: 0.3}", "{major: 0.3, minor: 0.7}")
               .replace("  nurses: {capacity: 2}\n  doctors: {capacity: 2}\n",
                        "  doctors: {capacity: 2}\n  nurses: {capacity: 2}\n")
               .replace("  minor: {pathway: [triage, {branch: {treat: 0.5, exit: 0.5}}, treat]}"
                        "\n  major: {priority: 1, pathway: [triage, treat]}\n",
                        "  major: {priority: 1, pathway: [triage, treat]}\n"
                        "  minor: {pathway: [triage, {branch: {exit: 0.5, treat: 0.5}}, treat]}"
                        "\n"))
    ra = run_replications(a, 3, 5, progress=False, hourly=False).per_rep
    rb = run_replications(b, 3, 5, progress=False, hourly=False).per_rep
    pd.testing.assert_frame_equal(ra, rb[ra.columns])


def test_staffing_only_scenario_keeps_arrivals_and_patient_draws():
    m = load_model("nelson")
    more = with_changes(m, {"resources": {"exam_rooms": {"capacity": 5}}})
    a, b = run_replication(m, 2, 0), run_replication(more, 2, 0)
    assert np.array_equal(a.arrival, b.arrival) and np.array_equal(a.cls, b.cls)
    # each patient's own examination time is the same in both (per-patient streams)
    ea, eb = a.activities["examination"], b.activities["examination"]
    da = dict(zip(ea["pid"], ea["dur"], strict=True))
    db = dict(zip(eb["pid"], eb["dur"], strict=True))
    both = [p for p in da if p in db and da[p] == da[p] and db[p] == db[p]]
    assert len(both) > 50 and all(da[p] == db[p] for p in both)


def test_changed_profile_moves_arrivals_without_reshuffling():
    m = _model(MIX)
    busier = with_changes(m, {"arrivals": [{"name": "walk_in", "rate_per_hour": 12}]})
    ta, ca = arrival_times(m, 0, 0, 1440, 0.0)
    tb, cb = arrival_times(busier, 0, 0, 1440, 0.0)
    # double the rate: the same unit-rate points, twice as fast; the same class each
    n = ta.size
    assert np.allclose(tb[:n], ta / 2) and np.array_equal(cb[:n], ca)
    # a peak elsewhere in the day leaves the arrivals before it unchanged
    rates = [6.0] * 24
    peaked = with_changes(m, {"arrivals": [{"name": "walk_in", "rates_per_hour":
                                            rates[:20] + [30.0] * 4}]})
    tp, cp = arrival_times(peaked, 0, 0, 1440, 0.0)
    early = ta < 20 * 60
    assert np.allclose(tp[:early.sum()], ta[early]) and np.array_equal(cp[:early.sum()],
                                                                       ca[early])


# --- confidence intervals -------------------------------------------------------------------
def test_intervals_of_waits_and_counts_never_go_below_zero():
    per_rep = pd.DataFrame({"rep": range(3), "wait:a": [0.0, 0.0, 9.0],
                            "p_within_4h": [1.0, 1.0, 0.7], "arrivals": [1.0, 0.0, 0.0]})
    s = summarise(per_rep)
    assert s.loc["wait:a", "ci_low"] == 0 and s.loc["arrivals", "ci_low"] == 0
    assert s.loc["p_within_4h", "ci_high"] == 1
    assert "truncated at 0" in s.attrs["ci_note"]
    one = summarise(per_rep.iloc[:1])
    assert one["ci_low"].isna().all() and (one["n"] == 1).all()


def test_compare_reports_each_side_with_its_interval_and_counts():
    base = load_model("nelson")
    from medtwin.ops.scenarios import Scenario

    sc = Scenario("exam+1", {"resources": {"exam_rooms": {"capacity": 4}}})
    diff = compare(base, [sc], reps=3, seed=0)
    assert {"arrivals", "throughput"} <= set(diff["kpi"])
    row = diff.set_index("kpi").loc["arrivals"]
    assert row["difference"] == 0 and row["value_ci_low"] <= row["value"] <= row["value_ci_high"]
    runs = run_scenarios(base, [sc], reps=3, seed=0)
    table = side_by_side(runs)
    assert {"base", "exam+1", "exam+1 ci_low"} <= set(table.columns)
    with pytest.raises(Exception, match="repeat"):
        run_scenarios(base, [sc, sc], reps=2)


def test_scenario_file_is_checked_by_a_strict_schema_with_lines(tmp_path):
    from medtwin.ops.scenarios import scenario_json_schema

    sc = tmp_path / "s.yaml"
    sc.write_text("name: x\narrival_scale: lots\n")
    with pytest.raises(ModelFileError, match="valid number") as e:
        load_scenario(sc)
    assert e.value.line == 2 and e.value.key == "arrival_scale"
    sc.write_text("name: x\narrival_scale: 2\nchanges: [1]\n")
    with pytest.raises(ModelFileError) as e:
        load_scenario(sc)
    assert e.value.line == 3
    sc.write_text("name: x\narrival_scale: 2\n")
    assert load_scenario(sc).arrival_scale == 2.0
    props = scenario_json_schema()["properties"]
    assert {"name", "arrival_scale", "changes", "add"} <= set(props)
    assert scenario_json_schema().get("additionalProperties") is False


def test_two_streams_with_one_name_are_refused():
    text = MIX + "  - {name: walk_in, rate_per_hour: 1, class: major}\n"
    with pytest.raises(ModelFileError, match="two arrival streams are named 'walk_in'") as e:
        _model(text)
    assert e.value.line == 17


@pytest.mark.parametrize(("table", "open_per_day"), [
    ("{daily: '00:00-24:00'}", [24] * 7),
    ("{mon-fri: 08:00-20:00, friday: '22:00-02:00'}", [12, 12, 12, 12, 14, 2, 0]),
    ("{weekend: '10:00-16:00'}", [0, 0, 0, 0, 0, 6, 6]),
])
def test_opening_hours_forms(table, open_per_day):
    m = _model(MIX.replace("    rate_per_hour: 6\n",
                           f"    rate_per_hour: 6\n    opening_hours: {table}\n"))
    r = np.asarray(m.arrivals[0].rates_per_hour).reshape(7, 24)
    assert (r > 0).sum(axis=1).tolist() == open_per_day


def test_model_file_typos_name_the_nearest_valid_name():
    with pytest.raises(ModelFileError, match="did you mean 'doctors'") as e:
        _model(MIX.replace("resource: doctors,", "resource: doctor,"))
    assert e.value.line == 9
    with pytest.raises(ModelFileError, match="did you mean 'treat'") as e:
        _model(MIX.replace("{treat: 0.5, exit: 0.5}", "{traet: 0.5, exit: 0.5}"))
    assert e.value.line == 11
