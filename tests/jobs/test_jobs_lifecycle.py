"""Durable jobs: validated at submit, run on Dask, cancellable, and never lost with a worker."""

from __future__ import annotations

import time

import pytest

from medtwin.core.errors import ValidationError
from medtwin.jobs.records import JobTable
from medtwin.jobs.runner import JobRunner
from medtwin.jobs.service import JobService, default_kinds

TRIAL = {"cohort": "uva-padova", "subjects": "adult#001,adult#002", "controller": "basal-bolus",
         "days": 0.25, "seed": 3}


def _service(store, **kw) -> JobService:
    kw.setdefault("processes", False)
    kw.setdefault("n_workers", 1)
    kw.setdefault("poll", 0.05)
    return JobService(store.engine, **kw)


def _wait(table: JobTable, job_id: str, statuses: set[str], timeout: float = 60) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = table.get(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {table.get(job_id).status}")


def test_trial_job_runs_on_dask_and_equals_a_serial_run(store, dask):
    from medtwin.trials.runner import Trial, load_cohort, run_trial

    svc = _service(store, run=False)
    job = svc.submit("trial", "alice", TRIAL)
    assert job.status == "queued" and job.progress == 0
    runner = JobRunner(svc.table, svc.kinds)
    runner._client = dask  # the module's cluster instead of a new LocalCluster
    assert runner.run_once()
    done = svc.get(job.id)
    assert done.status == "done", done.error
    assert done.progress == 1.0 and done.attempts == 1 and done.finished_at is not None
    subjects = TRIAL["subjects"].split(",")
    trial = Trial(load_cohort("uva-padova", subjects), "basal-bolus", days=0.25, seed=3)
    serial = run_trial(trial, scheduler="serial", progress=False)
    rows = {r["subject"]: r for r in done.result["rows"]}
    assert set(rows) == {"adult#001", "adult#002"}
    for subject, ref in serial.table.iterrows():
        for col, v in ref.items():
            if isinstance(v, float) and v == v:
                assert rows[subject][col] == pytest.approx(v, rel=1e-12), col


@pytest.mark.parametrize("spec, where", [
    ({**TRIAL, "days": 30}, "days"),
    ({**TRIAL, "controller": "nope"}, "trial"),
    ({k: v for k, v in TRIAL.items() if k != "seed"}, "seed"),
])
def test_bad_requests_are_refused_at_submit_and_nothing_is_stored(store, spec, where):
    svc = _service(store, run=False)
    with pytest.raises(ValidationError) as err:
        svc.submit("trial", "alice", spec)
    assert err.value.where == where
    assert svc.list() == []
    with pytest.raises(ValidationError, match="unknown kind"):
        svc.submit("bake", "alice", {})


def test_ops_job_and_its_cancellation(store, dask):
    svc = _service(store, run=False)
    runner = JobRunner(svc.table, svc.kinds, heartbeat=0.05)
    runner._client = dask
    ok = svc.submit("ops", "bob", {"model": "mm1", "reps": 4, "seed": 1})
    assert runner.run_once()
    done = svc.get(ok.id)
    assert done.status == "done", done.error
    assert len(done.result["per_rep"]) == 4 and done.result["summary"]
    from medtwin.ops.loader import load_model
    from medtwin.ops.runner import run_replications

    serial = run_replications(load_model("mm1"), 4, 1, progress=False, hourly=False)
    assert [r["rep"] for r in done.result["per_rep"]] == [0, 1, 2, 3]
    for got, (_, ref) in zip(done.result["per_rep"], serial.per_rep.iterrows(), strict=True):
        for col, v in ref.items():
            if v == v:
                assert got[col] == pytest.approx(v, rel=1e-12)

    queued = svc.submit("ops", "bob", {"model": "mm1", "reps": 4})
    assert svc.cancel(queued.id).status == "cancelled"  # a queued job stops at once
    assert not runner.run_once()  # nothing left to claim

    # a running job stops at its next progress report once asked to
    slow = svc.submit("ops", "bob", {"model": "nelson", "reps": 200})
    import threading

    t = threading.Thread(target=runner.run_once)
    t.start()
    _wait(svc.table, slow.id, {"running"})
    svc.cancel(slow.id)
    t.join(60)
    job = svc.get(slow.id)
    assert job.status == "cancelled" and job.result is None
    assert 0 < job.progress < 1


def test_a_dead_workers_job_is_taken_up_again_then_failed_after_max_attempts(store):
    table = JobTable(store.engine)
    kinds = default_kinds()
    job = table.submit("ops", "carol", {"model": "mm1", "reps": 2, "seed": 0})
    assert table.claim("dead-worker", tuple(kinds)).id == job.id
    # the worker dies: no heartbeat. A live worker takes it up after the lease expires.
    time.sleep(0.3)
    assert table.reclaim_stale(0.2, 3) == (1, 0)
    again = table.get(job.id)
    assert again.status == "queued" and again.attempts == 1 and "taken up again" in again.message
    assert table.heartbeat(job.id, "dead-worker") == "lost"  # the old worker cannot write
    assert not table.finish(job.id, "dead-worker", "done", result={"x": 1})
    for n in (2, 3):
        assert table.claim(f"w{n}", tuple(kinds)).attempts == n
        time.sleep(0.3)
        table.reclaim_stale(0.2, 3)
    failed = table.get(job.id)
    assert failed.status == "failed" and "stopped responding 3 time(s)" in failed.error


def test_two_workers_never_run_the_same_job(store):
    table = JobTable(store.engine)
    ids = {table.submit("ops", "dan", {"model": "mm1", "reps": 2}).id for _ in range(6)}
    claimed: list[str] = []
    import threading

    def grab(worker: str) -> None:
        while (job := table.claim(worker, ("ops",))) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # each job once, none twice
