"""Login limits and anonymous-failure windows kept in PostgreSQL: the rules of the in-memory
versions, shared by every aggregator or throttle over the same store (as service workers)."""

from __future__ import annotations

import threading

import pytest

from medtwin.api.limits import MemoryLoginThrottle, Throttled
from medtwin.api.shared_limits import DbLoginThrottle
from medtwin.security.audit import AuditEntry
from medtwin.security.audit_failures_db import DbFailureAggregator
from medtwin.store.event_store import EventStore

pytestmark = pytest.mark.postgres


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(pg_url, pg_schema):
    store = EventStore.open(pg_url, schema=pg_schema)
    yield store.engine
    store.close()


def test_the_backoff_grows_and_a_success_clears_it(engine):
    clock = Clock()
    limiter = DbLoginThrottle(engine, 5, 60, max_delay=30, clock=clock)
    for _ in range(5):
        limiter.reserve("dr_a", "a")
    waits = []
    for _ in range(7):
        with pytest.raises(Throttled) as held:
            limiter.reserve("dr_a", "a")
        waits.append(held.value.retry_after)
        clock.now += held.value.retry_after
        limiter.reserve("dr_a", "a")
    assert waits == [1, 2, 4, 8, 16, 30, 30]  # the same schedule as the in-memory throttle
    limiter.succeeded(limiter.reserve("dr_a", "b"))  # another address is not held back
    clock.now += 30
    limiter.succeeded(limiter.reserve("dr_a", "a"))  # the right password clears the pair
    for _ in range(5):
        limiter.reserve("dr_a", "a")


def test_address_and_account_caps_match_the_memory_throttle(engine):
    clock = Clock(0.0)
    limiter = DbLoginThrottle(engine, 5, 60, clock=clock)
    for i in range(5 * MemoryLoginThrottle.ADDRESS_FACTOR):  # spraying from one address
        limiter.reserve(f"user{i}", "spray")
    with pytest.raises(Throttled):
        limiter.reserve("user99", "spray")
    clock.now += 61
    limiter.succeeded(limiter.reserve("dr_a", "home"))
    for i in range(5 * MemoryLoginThrottle.ACCOUNT_FACTOR):  # many addresses, one account
        limiter.reserve("dr_a", f"bot{i}")
    with pytest.raises(Throttled):
        limiter.reserve("dr_a", "bot-new")
    limiter.succeeded(limiter.reserve("dr_a", "home"))  # the user's own address still works


def test_two_throttles_over_one_store_share_the_count(engine):
    """Two workers: a burst spread over both gets no more attempts than the limit."""
    a = DbLoginThrottle(engine, 3, 60)
    b = DbLoginThrottle(engine, 3, 60)
    allowed, refused = [], []

    def attempt(limiter: DbLoginThrottle) -> None:
        try:
            allowed.append(limiter.reserve("dr_a", "10.0.0.9"))
        except Throttled:
            refused.append(1)

    threads = [threading.Thread(target=attempt, args=(a if i % 2 else b,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 3 and len(refused) == 9


def test_failure_windows_are_shared_and_counted_once(engine):
    written: list[AuditEntry] = []
    clock = Clock()
    one = DbFailureAggregator(engine, written.extend, window=60, clock=clock)
    two = DbFailureAggregator(engine, written.extend, window=60, clock=clock)
    for i in range(100):  # a flood spread over two workers
        (one if i % 2 else two).failed("10.0.0.9", "/patients/p1", "missing credential")
        clock.now += 0.1
    assert len(written) == 1 and written[0].detail == "missing credential"
    clock.now += 60
    one.sweep()
    two.sweep()  # the window was taken by the first sweeper: audited once
    assert len(written) == 2
    assert written[1].detail.startswith("99 further anonymous authentication failures from "
                                        "10.0.0.9 on /patients/...")
    two.close()
    assert len(written) == 2


def test_failure_groups_stay_bounded(engine):
    written: list[AuditEntry] = []
    agg = DbFailureAggregator(engine, written.extend, window=60, max_paths=4, max_groups=10,
                              clock=Clock())
    for i in range(50):
        agg.failed("10.0.0.9", f"/p{i}/x", f"reason {i}")
    assert len(written) == 5  # four groups, then one overflow group for the address
    for i in range(50):
        agg.failed(f"10.1.0.{i}", "/patients/p1", "missing credential")
    assert len(written) == 5 + 5 + 1  # ten groups in all, then one shared overflow group
