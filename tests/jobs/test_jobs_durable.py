"""A job survives the death of the service worker running it (real processes, PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from medtwin.jobs.records import JobTable
from medtwin.jobs.runner import JobRunner
from medtwin.jobs.service import JobService, default_kinds
from medtwin.store.event_store import EventStore

WORKER = textwrap.dedent("""
    import sys, time
    from medtwin.store.event_store import EventStore
    from medtwin.jobs.service import JobService
    store = EventStore.open(sys.argv[1], schema=sys.argv[2])
    JobService(store.engine, processes=False, n_workers=1, poll=0.05, heartbeat=0.2).start()
    while True:
        time.sleep(1)
""")


@pytest.mark.postgres
def test_killing_the_worker_mid_job_loses_no_job(pg_url, pg_schema, dask):
    store = EventStore.open(pg_url, schema=pg_schema)
    table = JobTable(store.engine)
    job = table.submit("ops", "erin", {"model": "nelson", "reps": 60, "seed": 4})
    proc = subprocess.Popen([sys.executable, "-c", WORKER, pg_url, pg_schema],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            j = table.get(job.id)
            if j.status == "running" and j.progress > 0:
                break
            assert proc.poll() is None, "the worker process died by itself"
            time.sleep(0.05)
        else:
            raise AssertionError(f"the worker never got going: {table.get(job.id)}")
        proc.send_signal(signal.SIGKILL)  # mid-job: no clean shutdown, no final write
        proc.wait(10)
        assert table.get(job.id).status == "running"  # as the dead worker left it
        # a surviving worker takes it up once the lease is stale, and finishes it
        runner = JobRunner(table, default_kinds(), stale_after=1.0, heartbeat=0.2)
        runner._client = dask
        deadline = time.monotonic() + 120
        while table.get(job.id).status not in {"done", "failed"}:
            assert time.monotonic() < deadline, table.get(job.id)
            if not runner.run_once():
                time.sleep(0.2)
        done = table.get(job.id)
        assert done.status == "done", done.error
        assert done.attempts == 2 and len(done.result["per_rep"]) == 60
    finally:
        if proc.poll() is None:
            proc.kill()
        store.close()


@pytest.mark.postgres
def test_every_worker_sees_the_same_jobs(pg_url, pg_schema):
    a = JobService(EventStore.open(pg_url, schema=pg_schema).engine, run=False)
    b = JobService(EventStore.open(pg_url, schema=pg_schema).engine, run=False)
    job = a.submit("ops", "fay", {"model": "mm1", "reps": 2})
    assert b.get(job.id) == a.get(job.id)
    assert b.cancel(job.id).status == "cancelled"
    assert a.get(job.id).status == "cancelled"
    assert [j.id for j in a.list("fay")] == [j.id for j in b.list("fay")] == [job.id]
    a.table.engine.dispose()
    b.table.engine.dispose()
