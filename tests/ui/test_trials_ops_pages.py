"""The Trials and Operations pages' helpers: form checks, the progress loops give the same
numbers as the domain runners, the tables and CSVs say what the results say, and access
follows the API's roles with an audited refusal."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from medtwin.api.deps import build_services
from medtwin.api.settings import Settings
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.ops.forecast import Census, forecast
from medtwin.ops.loader import load_model
from medtwin.ops.runner import gather_replications, one_replication, run_replications
from medtwin.security.crypto import KeyRing
from medtwin.security.roles import Principal, Role
from medtwin.store.event_store import EventStore
from medtwin.trials.runner import Trial, gather_chunks, load_cohort, run_chunk, run_trial
from medtwin.ui import ops_page, trials_page
from medtwin.ui.access import UiDeniedError

LIMITS = {"max_subjects": 30, "max_days": 7.0}


# --- trials ---------------------------------------------------------------------------------
def test_subjects_field_is_everyone_one_pattern_or_a_list_of_ids():
    assert trials_page.parse_subjects("") is None
    assert trials_page.parse_subjects("  ") is None
    assert trials_page.parse_subjects(" adult#* ") == "adult#*"
    assert trials_page.parse_subjects("adult#001, child#002,") == ["adult#001", "child#002"]


@pytest.mark.parametrize(("days", "says"), [
    (None, "enter the number of days"), ("", "enter the number of days"),
    (0, "more than 0"), (-1, "more than 0"), ("two", "enter a number"),
    (float("nan"), "more than 0"), (8, "at most 7 on this server")])
def test_invalid_days_say_what_to_enter(days, says):
    with pytest.raises(ValidationError, match=says) as err:
        trials_page.build_trial("uva-padova", "adult#001", "pid", days, 0, **LIMITS)
    assert err.value.where == "days"
    assert trials_page.field_problem(trials_page.check_days_field, days, 7.0) is not None


@pytest.mark.parametrize(("seed", "says"), [(-1, "0 or more"), (1.5, "whole number"),
                                            (None, "enter the seed")])
def test_invalid_seed_is_refused(seed, says):
    with pytest.raises(ValidationError, match=says):
        trials_page.build_trial("uva-padova", "adult#001", "pid", 1, seed, **LIMITS)


def test_the_server_limits_and_unknown_names_are_refused_with_the_fix():
    with pytest.raises(ValidationError, match="30 subjects selected; this server runs at most 10"):
        trials_page.build_trial("uva-padova", "", "pid", 1, 0, max_subjects=10, max_days=7)
    with pytest.raises(NotFoundError, match="unknown controller 'nope'; known controllers"):
        trials_page.build_trial("uva-padova", "adult#001", "nope", 1, 0, **LIMITS)
    with pytest.raises(NotFoundError, match="no subject matches"):
        trials_page.build_trial("uva-padova", "grown-up#*", "pid", 1, 0, **LIMITS)
    with pytest.raises(NotFoundError, match="known cohorts"):
        trials_page.build_trial("other", "adult#*", "pid", 1, 0, **LIMITS)


def test_a_valid_form_gives_the_trial_it_describes():
    t = trials_page.build_trial("uva-padova", "adult#001, child#003", "basal-bolus", "2", 5.0,
                                **LIMITS)
    assert list(t.cohort.ids) == ["adult#001", "child#003"]
    assert (t.controller, t.days, t.seed) == ("basal-bolus", 2.0, 5)
    assert trials_page.field_problem(trials_page.check_days_field, 2, 7.0) is None


@pytest.mark.parametrize("n", [1, 3, 10, 11, 29, 30])
def test_chunks_cover_every_subject_once_in_at_most_ten_steps(n):
    chunks = trials_page.chunk_bounds(n)
    assert 1 <= len(chunks) <= min(n, trials_page.PROGRESS_STEPS)
    covered = [i for a, b in chunks for i in range(a, b)]
    assert covered == list(range(n))


def test_no_subjects_no_chunks():
    with pytest.raises(ValidationError):
        trials_page.chunk_bounds(0)


@pytest.fixture(scope="module")
def trial_and_result():
    trial = Trial(load_cohort("uva-padova", ["adult#001", "adolescent#002", "child#003"]),
                  "pid", days=0.25, seed=3)
    parts = [run_chunk(trial, a, b) for a, b in trials_page.chunk_bounds(len(trial.cohort))]
    return trial, gather_chunks(trial, parts), parts


def test_the_chunked_run_gives_what_run_trial_gives(trial_and_result):
    trial, mine, parts = trial_and_result
    ref = run_trial(trial, chunk_size=1, scheduler="serial", progress=False)
    pd.testing.assert_frame_equal(mine.table, ref.table)
    np.testing.assert_array_equal(mine.times, ref.times)
    assert mine.traces.keys() == ref.traces.keys()
    for k in ref.traces:
        np.testing.assert_array_equal(mine.traces[k], ref.traces[k])
    assert mine.meta == ref.meta


def test_chunks_out_of_order_are_sorted_and_a_gap_is_refused(trial_and_result):
    trial, mine, parts = trial_and_result
    again = gather_chunks(trial, parts[::-1])
    pd.testing.assert_frame_equal(again.table, mine.table)
    with pytest.raises(ValidationError, match="do not cover"):
        gather_chunks(trial, [parts[0], parts[2]])
    with pytest.raises(ValidationError, match="no chunk"):
        gather_chunks(trial, [])


def test_the_csv_is_the_outcome_table_one_row_a_subject(trial_and_result):
    _, res, _ = trial_and_result
    data = trials_page.outcome_csv(res)
    back = pd.read_csv(io.BytesIO(data), index_col=0)
    assert list(back.index) == ["adult#001", "adolescent#002", "child#003"]
    assert list(back.columns) == list(res.table.columns)
    np.testing.assert_allclose(back["time 70-180 [%]"], res.table["time 70-180 [%]"])
    assert list(back["cvga zone"]) == list(res.table["cvga zone"])
    assert trials_page.csv_filename(res) == "trial-pid-3subjects-0.25d-seed3.csv"


def test_the_shown_table_rounds_but_keeps_each_subject_and_zone(trial_and_result):
    _, res, _ = trial_and_result
    rows = trials_page.outcome_rows(res.table)
    assert [r["subject"] for r in rows] == list(res.table.index)
    for r, (_, full) in zip(rows, res.table.iterrows(), strict=True):
        assert r["cvga zone"] == full["cvga zone"] and r["cvga zone"] in "ABCDE"
        assert r["mean [mg/dL]"] == pytest.approx(full["mean [mg/dL]"], abs=0.05)
        assert r["time 70-180 [%]"] == pytest.approx(full["time 70-180 [%]"], abs=0.05)
    assert set(rows[0]) == {"subject", *trials_page.outcome_columns(res.table)}


def test_the_summary_and_plots_show_the_cohort(trial_and_result):
    _, res, _ = trial_and_result
    text = trials_page.summary_text(res)
    assert f"mean glucose {res.table['mean [mg/dL]'].mean():.1f} mg/dL" in text
    assert text.startswith("3 subjects × 0.25 day(s), controller pid, seed 3")
    cvga = trials_page.cvga_figure(res)
    points = [t for t in cvga.data if t.mode == "markers"]
    assert len(points) == 1 and len(points[0].x) == 3
    agp = trials_page.agp_figure(res)
    median = next(t for t in agp.data if t.name == "median")
    bg = res.traces["BG [mg/dL]"]
    assert min(median.y) >= bg.min() - 1e-9 and max(median.y) <= bg.max() + 1e-9
    assert max(median.x) <= 6  # a quarter day from midnight: 00:00-06:00


# --- access ----------------------------------------------------------------------------------
@pytest.fixture
def svc(tmp_path):
    store = EventStore.open(str(tmp_path / "ui.sqlite"), keyring=KeyRing.generate())
    s = build_services(Settings(argon2_memory_kib=8, argon2_time_cost=1), store, store.keyring)
    yield s
    store.close()


@pytest.mark.parametrize("role", [Role.CLINICIAN, Role.RESEARCHER, Role.ADMIN])
def test_clinicians_researchers_and_admins_may_simulate(svc, role):
    trials_page.require_simulation_role(svc, None, Principal("u1", "someone", role), "trials")
    assert svc.audit.entries() == []


@pytest.mark.parametrize("role", [Role.PATIENT, Role.DEVICE])
def test_other_roles_are_refused_and_the_refusal_is_audited(svc, role):
    who = Principal("u2", "other", role)
    with pytest.raises(UiDeniedError, match="clinicians, researchers and admins"):
        trials_page.require_simulation_role(svc, None, who, "ops-page")
    [entry] = svc.audit.entries()
    assert (entry.actor, entry.action, entry.resource, entry.outcome) == (
        who.label, "access", "ops-page", "denied")


# --- operations ------------------------------------------------------------------------------
def test_scenarios_are_the_base_arrivals_and_one_more_of_each_resource():
    m = load_model("nelson_treatment_centre")
    sc = ops_page.preset_scenarios(m)
    assert [s.name for s in sc[:3]] == ["base", "arrivals +20%", "arrivals -20%"]
    assert len(sc) == 3 + len(m.resources)
    more = next(s for s in sc if s.name.startswith("+1 exam_rooms"))
    assert more.apply(m).resources["exam_rooms"].capacity == m.resources["exam_rooms"].capacity + 1
    busier = sc[1].apply(m)
    assert sum(busier.arrivals[0].rates_per_hour) == pytest.approx(  # the rates it runs on
        1.2 * sum(m.arrivals[0].rates_per_hour))


def test_a_rostered_resource_gets_one_more_on_duty_every_hour():
    m = load_model("ed_inpatient")
    sc = next(s for s in ops_page.preset_scenarios(m) if s.name.startswith("+1 ed_doctors"))
    before, after = m.resources["ed_doctors"].roster, sc.apply(m).resources["ed_doctors"].roster
    assert [b - a for a, b in zip(before, after, strict=True)] == [1] * 24


@pytest.mark.parametrize(("check", "value", "says"), [
    (ops_page.check_reps, 1, "from 2 to 100"), (ops_page.check_reps, 101, "from 2 to 100"),
    (ops_page.check_reps, 2.5, "whole number"), (ops_page.check_reps, None, "enter the"),
    (ops_page.check_seed, -3, "0 or more"), (ops_page.check_hours, 0, "from 1 to 336")])
def test_bad_ops_fields_say_what_to_enter(check, value, says):
    with pytest.raises(ValidationError, match=says):
        check(value)
    assert ops_page.field_problem(check, value) is not None
    assert ops_page.field_problem(ops_page.check_reps, 10) is None


@pytest.fixture(scope="module")
def ops_results():
    m = load_model("nelson_treatment_centre")
    parts = [one_replication(m, 7, r) for r in range(4)]
    return m, gather_replications(m, 7, parts), parts


def test_the_replication_loop_gives_what_ops_run_gives(ops_results):
    m, mine, _ = ops_results
    ref = run_replications(m, 4, 7, progress=False)
    pd.testing.assert_frame_equal(mine.per_rep, ref.per_rep)
    pd.testing.assert_frame_equal(mine.hourly, ref.hourly)
    assert mine.events == ref.events
    pd.testing.assert_frame_equal(mine.summary(), ref.summary())


def test_replications_must_be_all_there_in_order(ops_results):
    m, _, parts = ops_results
    with pytest.raises(ValidationError, match="not 0..2"):
        gather_replications(m, 7, [parts[0], parts[2], parts[1]])
    with pytest.raises(ValidationError, match="no replication"):
        gather_replications(m, 7, [])


def test_wait_utilisation_and_flow_tables_carry_the_confidence_intervals(ops_results):
    m, res, _ = ops_results
    s = res.summary()
    waits = {r["name"]: r for r in ops_page.wait_rows(res)}
    assert set(waits) == {k[5:] for k in s.index if k.startswith("wait:")
                          and math.isfinite(s.loc[k, "mean"])}
    tri = waits["triage"]
    assert tri["mean"] == pytest.approx(s.loc["wait:triage", "mean"], abs=0.05)
    assert tri["ci_low"] <= tri["mean"] <= tri["ci_high"] and tri["n"] == 4
    assert tri["waited"] == pytest.approx(100 * s.loc["p_wait:triage", "mean"], abs=0.05)
    util = {r["name"]: r for r in ops_page.utilisation_rows(res)}
    assert set(util) == set(m.resources)
    assert util["exam_rooms"]["mean"] == pytest.approx(
        100 * s.loc["util:exam_rooms", "mean"], abs=0.05)
    assert all(0 <= r["mean"] <= 100 for r in util.values())
    flow = {r["name"]: r for r in ops_page.flow_rows(res)}
    assert flow["time in system within 4h (%)"]["mean"] == pytest.approx(
        100 * s.loc["p_within_4h", "mean"], abs=0.05)
    assert flow["time in system, trauma (minutes)"]["mean"] == pytest.approx(
        s.loc["time_in_system:trauma", "mean"], abs=0.05)
    assert flow["left without being seen (%)"]["mean"] == pytest.approx(
        100 * s.loc["lwbs_rate", "mean"], abs=0.05)
    assert flow["arrivals (patients)"]["mean"] == pytest.approx(s.loc["arrivals", "mean"],
                                                                abs=0.05)


def test_the_kpi_csv_is_the_summary(ops_results):
    _, res, _ = ops_results
    back = pd.read_csv(io.BytesIO(ops_page.kpi_csv(res)), index_col=0)
    pd.testing.assert_frame_equal(back, res.summary(), check_dtype=False, check_names=False)


def test_the_forecast_figure_and_text_show_the_peak_and_capacity():
    m = load_model("ed_inpatient")
    census = Census(datetime(2025, 3, 3, 9, tzinfo=UTC), np.array([60.0, 600.0, 3000.0]),
                    ["a", "b", "c"])
    fc = forecast(m, census, hours=6, reps=3, seed=0)
    fig = ops_page.forecast_figure(fc)
    mean = next(t for t in fig.data if t.name == "mean occupancy")
    np.testing.assert_allclose(mean.y, fc["occupancy_mean"])
    assert mean.y[0] == 3  # the census is in the ward at hour 0
    text = ops_page.forecast_text(fc)
    assert "Census 3 in 'ward_stay' (capacity 150)" in text and "3 replications" in text
    peak = fc["occupancy_mean"].max()
    assert f"expected peak {peak:.1f} patients" in text
