"""Group commit of the audit chain (issue 16): appends from concurrent requests share one
transaction, yet every caller returns only once its own entries are stored, nothing is lost
or re-ordered, one caller's failure is not another's, and the chain stays verifiable, also
with several processes appending at once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.security.audit import AuditEntry, AuditLog
from medtwin.store.event_store import EventStore


def _entries(who: str, n: int) -> list[AuditEntry]:
    return [AuditEntry(actor=who, role="clinician", action="read", resource="timeline",
                       outcome="success", patient_id="p1", detail=f"{who} #{i}")
            for i in range(n)]


def _commits(store: EventStore) -> list[int]:
    """A list that counts the store's commits (one item per commit)."""
    seen: list[int] = []
    event.listen(store.engine, "commit", lambda _conn: seen.append(1))
    return seen


def _check_chain(log: AuditLog, results: dict[str, list[int]], per_caller: int) -> None:
    """Every caller's entries stored under the numbers it was given, in its order, and the
    numbers 1..N used once each."""
    stored = {e.seq: e for e in log.entries()}
    numbers = sorted(n for ns in results.values() for n in ns)
    assert numbers == list(range(1, len(numbers) + 1)) == sorted(stored)
    for who, ns in results.items():
        assert len(ns) == per_caller and ns == sorted(ns)
        assert [stored[n].detail for n in ns] == [f"{who} #{i}" for i in range(per_caller)]
    v = log.verify()
    assert v.ok and v.entries == len(numbers), v.text()


def test_waiting_appends_are_written_together_each_caller_after_its_commit(
        secure_store, audit_log):
    store, _, _ = secure_store
    log = audit_log(store, anchor_every=10_000)
    inner, release, entered = log._commit, threading.Event(), threading.Event()
    batches: list[int] = []

    def slow_commit(batch):  # the first writer is held until every other caller is queued
        batches.append(len(batch))
        if len(batches) == 1:
            entered.set()
            assert release.wait(10)
        return inner(batch)

    log._commit = slow_commit
    commits = _commits(store)
    results: dict[str, list[int]] = {}

    def call(who: str) -> None:
        results[who] = log.append_many(_entries(who, 3))

    first = threading.Thread(target=call, args=("lead",))
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=call, args=(f"c{i}",)) for i in range(6)]
    for th in others:
        th.start()
    for _ in range(1000):  # until all six are queued behind the held writer
        with log._queue_lock:
            if len(log._queue) == 6:
                break
        threading.Event().wait(0.01)
    assert not results  # nobody answered before its entries were committed
    release.set()
    for th in [first, *others]:
        th.join(10)
    assert batches == [1, 6] and len(commits) == 2  # two transactions for seven callers
    _check_chain(log, results, 3)


def test_many_threads_append_a_valid_chain_with_every_entry_in_order(secure_store,
                                                                      audit_log):
    store, db, schema = secure_store
    log = audit_log(store, anchor_every=25)

    def call(who: str) -> tuple[str, list[int]]:
        return who, [n for i in range(10) for n in log.append_many(
            [_entries(who, 10)[i]])] if who.startswith("one") else log.append_many(
            _entries(who, 10))

    with ThreadPoolExecutor(16) as pool:
        results = dict(pool.map(call, [f"one{i}" for i in range(12)]
                                + [f"many{i}" for i in range(12)]))
    _check_chain(log, results, 10)
    if schema is None:
        out = CliRunner().invoke(app, ["audit", "verify", "--db", db])
        assert out.exit_code == 0, out.output


def test_a_failed_append_fails_only_its_caller(secure_store, audit_log):
    store, _, _ = secure_store
    log = audit_log(store)
    inner, release, entered = log._commit, threading.Event(), threading.Event()

    def commit(batch):
        if not entered.is_set():
            entered.set()
            assert release.wait(10)
        if any(e.actor == "poison" for ticket in batch for e in ticket.entries):
            raise RuntimeError("the database refused an entry")
        return inner(batch)

    log._commit = commit
    outcome: dict[str, object] = {}

    def call(who: str) -> None:
        try:
            outcome[who] = log.append_many(_entries(who, 2))
        except RuntimeError as exc:
            outcome[who] = exc

    threads = [threading.Thread(target=call, args=(w,)) for w in ("lead", "a", "poison", "b")]
    threads[0].start()
    assert entered.wait(10)
    for th in threads[1:]:
        th.start()
    for _ in range(1000):
        with log._queue_lock:
            if len(log._queue) == 3:
                break
        threading.Event().wait(0.01)
    release.set()
    for th in threads:
        th.join(10)
    assert isinstance(outcome.pop("poison"), RuntimeError)
    _check_chain(log, outcome, 2)  # type: ignore[arg-type]
    assert not any(e.actor == "poison" for e in log.entries())


CHILD = """
import json, sys
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from medtwin.security.audit import AuditEntry, AuditLog
from medtwin.security.audit_anchor import anchor_sink
from medtwin.security.crypto import load_key_file
from medtwin.store.event_store import EventStore

db, schema, keyfile, who, n = sys.argv[1:6]
store = EventStore.open(db, schema=schema or None, keyring=load_key_file(Path(keyfile)))
log = AuditLog(store.engine, store.keyring, anchor_sink(store.engine, configured=None,
                                                        key_file=store.keyring.file))

def call(i):
    name = f"{who}-t{i}"
    return name, log.append_many([AuditEntry(
        actor=name, role="clinician", action="read", resource="timeline", outcome="success",
        patient_id="p1", detail=f"{name} #{k}") for k in range(int(n))])

with ThreadPoolExecutor(4) as pool:
    print(json.dumps(dict(pool.map(call, range(4)))))
store.close()
"""


def test_processes_appending_at_once_keep_one_chain(secure_store, audit_log):
    store, db, schema = secure_store
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, db, schema or "",
                               str(store.keyring.file), f"w{i}", "5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results: dict[str, list[int]] = {}
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.update(json.loads(out))
    assert len(results) == 8
    _check_chain(audit_log(store), results, 5)


@pytest.mark.parametrize("n", [1, 2001, 4000])
def test_a_large_append_is_one_contiguous_run(secure_store, audit_log, n):
    store, _, _ = secure_store
    log = audit_log(store)
    assert log.append_many(_entries("x", 2)) == [1, 2]
    assert log.append_many(_entries("big", n)) == list(range(3, n + 3))
    stored = log.entries(since_seq=2)
    assert [e.detail for e in stored] == [f"big #{i}" for i in range(n)]
    v = log.verify()
    assert v.ok and v.entries == n + 2, v.text()
