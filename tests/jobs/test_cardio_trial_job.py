"""The cardio-trial job: a scenario over a virtual population on Dask, the same numbers as a
direct ``run_cardio_trial``, its effect with intervals, and bad specs refused at submit."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from medtwin.core.errors import ValidationError
from medtwin.jobs.kinds import cardio_effects, cardio_trial_kind, cardio_trial_on
from medtwin.jobs.runner import JobRunner
from medtwin.jobs.service import JobService, default_kinds
from medtwin.twin.cardio import run_cardio_trial, virtual_population

SPEC = {"scenario": "beta-blocker", "subjects": 5, "duration": 20.0, "warmup": 10.0, "seed": 4}
OUT = ["HR", "SBP", "DBP", "MAP", "PAS", "PAD", "mPAP", "CVP", "LVEDV", "LVESV", "SV", "EF",
       "CO"]


def _direct(subjects: int = 5, seed: int = 4):
    cohort = virtual_population(subjects, seed=seed)
    return run_cardio_trial("beta-blocker", cohort, duration=20.0, warmup=10.0,
                            scheduler="serial")


def test_cardio_trial_job_on_dask_equals_a_direct_run(store, dask):
    svc = JobService(store.engine, run=False)
    job = svc.submit("cardio-trial", "alice", SPEC)
    assert job.status == "queued"
    runner = JobRunner(svc.table, svc.kinds)
    runner._client = dask  # the module's cluster instead of a new LocalCluster
    assert runner.run_once()
    done = svc.get(job.id)
    assert done.status == "done", done.error
    assert done.progress == 1.0 and done.attempts == 1
    res = done.result
    assert res["meta"]["scenario"] == "beta-blocker" and res["meta"]["subjects"] == 5
    assert res["meta"]["model"] == "smith2004-ursino1998"
    direct = _direct()
    rows = {(r["subject"], r["run"]): r for r in res["rows"]}
    assert len(rows) == len(direct) == 10
    for _, ref in direct.iterrows():
        got = rows[(ref["subject"], ref["run"])]
        for col in OUT:
            assert got[col] == pytest.approx(ref[col], rel=1e-12, abs=1e-12), col
    # per subject, baseline first, in cohort order
    assert [r["subject"] for r in res["rows"]][::2] == [f"virtual#{i:04d}" for i in range(1, 6)]
    assert [r["run"] for r in res["rows"]][:2] == ["baseline", "beta-blocker"]
    # the effect: paired difference with a 95% t-interval around it
    eff = {e["output"]: e for e in res["effects"]}
    wide = direct.pivot(index="subject", columns="run", values="HR")
    diff = wide["beta-blocker"] - wide["baseline"]
    assert eff["HR"]["difference"] == pytest.approx(diff.mean(), rel=1e-12)
    half = 2.7764451051977987 * diff.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert eff["HR"]["ci_low"] == pytest.approx(diff.mean() - half, rel=1e-9)
    assert eff["HR"]["ci_high"] < 0  # a beta-blocker slows the heart in everyone
    assert eff["HR"]["ci_low"] < eff["HR"]["difference"] < eff["HR"]["ci_high"]


def test_chunks_on_dask_report_progress_and_match_one_serial_run(dask):
    seen: list[tuple[int, int]] = []
    cohort = virtual_population(5, seed=4)
    table = cardio_trial_on(dask, "beta-blocker", cohort, duration=20.0, warmup=10.0,
                            chunk_size=2, on_progress=lambda d, t: seen.append((d, t)))
    direct = _direct()
    key = ["subject", "run"]
    a = table.sort_values(key).reset_index(drop=True)
    b = direct.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(a[OUT], b[OUT], rtol=1e-12)
    assert sorted(seen) == seen and seen[-1] == (5, 5) and len(seen) == 3


def test_a_cancelled_job_stops_its_chunks(dask):
    from medtwin.jobs.context import JobCancelledError

    def stop(done: int, total: int) -> None:
        raise JobCancelledError()

    with pytest.raises(JobCancelledError):
        cardio_trial_on(dask, "inotrope", virtual_population(4, seed=1), duration=10.0,
                        warmup=5.0, chunk_size=1, on_progress=stop)
    scheduler = dask.cluster.scheduler
    end = time.monotonic() + 10
    while scheduler.tasks and time.monotonic() < end:  # the other chunks are let go
        time.sleep(0.05)
    assert not scheduler.tasks


def test_one_subject_has_no_interval() -> None:
    table = _direct(subjects=1)
    eff = cardio_effects(table, "beta-blocker").set_index("output")
    assert math.isnan(eff.loc["HR", "ci_low"]) and eff.loc["HR", "difference"] < 0


@pytest.mark.parametrize(("change", "where"), [
    ({"subjects": 0}, "subjects"),
    ({"subjects": 31}, "subjects"),  # the server's trial_max_subjects
    ({"subjects": 2.5}, "subjects"),
    ({"subjects": None}, "subjects"),
    ({"duration": 0}, "duration"),
    ({"duration": 601.0}, "duration"),
    ({"warmup": -1}, "warmup"),
    ({"duration": float("nan")}, "duration"),
    ({"seed": -1}, "seed"),
    ({"scenario": "aspirin"}, "scenario"),
    ({"scenario": "baseline"}, "scenario"),
    ({"scenario": None}, "scenario"),
    ({"cv": {"R_sys [mmHg*s/mL]": 2.0}}, "cv"),
    ({"cv": {"no such parameter": 0.1}}, "cv"),
    ({"colour": "red"}, "colour"),
])
def test_bad_specs_are_refused_naming_the_field(change, where):
    spec = {k: v for k, v in {**SPEC, **change}.items() if v is not None}
    with pytest.raises(ValidationError) as err:
        default_kinds()["cardio-trial"].validate(spec)
    assert err.value.where == where


def test_a_bad_spec_is_refused_at_submit_and_nothing_is_stored(store):
    svc = JobService(store.engine, run=False)
    with pytest.raises(ValidationError) as err:
        svc.submit("cardio-trial", "alice", {**SPEC, "subjects": 0})
    assert err.value.where == "subjects"
    assert svc.list() == []


def test_validate_normalises_and_defaults() -> None:
    kind = cardio_trial_kind(10, 100.0)
    spec = kind.validate({"scenario": "vasodilator", "subjects": 3,
                          "cv": {"R_sys [mmHg*s/mL]": 0}})
    assert spec == {"scenario": "vasodilator", "subjects": 3, "duration": 60.0,
                    "warmup": 30.0, "seed": 0, "cv": {"R_sys [mmHg*s/mL]": 0.0}}
    assert "cardio-trial" in default_kinds()
    limited = default_kinds(cardio_max_subjects=2)["cardio-trial"]
    with pytest.raises(ValidationError, match="<= 2 on this server"):
        limited.validate({**SPEC, "subjects": 3})
