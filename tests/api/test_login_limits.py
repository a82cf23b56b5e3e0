"""Issue 12 finding 10, as the attack was: a parallel burst of logins, locking a real user out,
and X-Forwarded-For from localhost bypassing the address limit and landing in the audit."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from tests.api.conftest import PASSWORD, fast_settings, login

from medtwin.api.app import create_app
from medtwin.api.limits import MemoryLoginThrottle, Throttled
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore

ATTACKER, REAL_USER = ("203.0.113.9", 40000), ("198.51.100.7", 40001)


class CountingVerify:
    """Wraps the password hasher's verify: counts checks and makes each one slow, so that a
    burst of requests really overlaps."""

    def __init__(self, verify) -> None:
        self.verify = verify
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, hashed, password) -> bool:
        with self.lock:
            self.calls += 1
        time.sleep(0.05)
        return self.verify(hashed, password)


def test_a_parallel_burst_gets_no_more_password_checks_than_the_limit(world, monkeypatch):
    svc = world.client.app.state.services
    counter = CountingVerify(svc.directory.hasher.verify)
    monkeypatch.setattr(svc.directory.hasher, "verify", counter)
    with ThreadPoolExecutor(max_workers=40) as pool:
        codes = list(pool.map(lambda _: login(world.client, "res", "wrong password!")
                              .status_code, range(40)))
    limit = svc.settings.login_attempts
    assert counter.calls == limit  # reserved before the check: not 40 checks
    assert sorted(codes) == [401] * limit + [429] * (40 - limit)
    outcomes = [e.outcome for e in world.audit() if e.action == "login"
                and e.resource == "user:res"]
    assert outcomes.count("failure") == limit
    svc.close()  # the refused logins are aggregated: their window is audited now
    refused = [e.detail or "" for e in world.audit() if e.action == "authenticate"
               and "login refused" in (e.detail or "")]
    further = sum(int(d.split()[0]) for d in refused if " further " in d)
    assert len(refused) == 2 and 1 + further == 40 - limit  # first at once + one summary


def test_an_attacker_cannot_lock_the_real_user_out(world):
    app = world.client.app
    attacker, real = TestClient(app, client=ATTACKER), TestClient(app, client=REAL_USER)
    codes = [login(attacker, "dr_a", f"guess number {i}!").status_code for i in range(12)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    held = login(attacker, "dr_a")  # the guessing address waits even with the right password
    assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1
    ok = login(real, "dr_a")  # the real user, from their own address, signs in at once
    assert ok.status_code == 200, ok.text
    assert real.get("/patients/p1", headers={
        "Authorization": f"Bearer {ok.json()['access_token']}"}).status_code == 200


def test_the_backoff_grows_and_a_success_clears_it():
    now = [1000.0]
    limiter = MemoryLoginThrottle(5, 60, max_delay=30, clock=lambda: now[0])
    for _ in range(5):
        limiter.reserve("dr_a", "a")
    waits = []
    for _ in range(7):
        with pytest.raises(Throttled) as held:
            limiter.reserve("dr_a", "a")
        waits.append(held.value.retry_after)
        now[0] += held.value.retry_after
        limiter.reserve("dr_a", "a")  # allowed once the wait is over, and counted
    assert waits == [1, 2, 4, 8, 16, 30, 30]  # doubling, capped at max_delay
    ok = limiter.reserve("dr_a", "b")  # another address is not held back
    limiter.succeeded(ok)
    now[0] += 30
    limiter.succeeded(limiter.reserve("dr_a", "a"))  # the right password clears the pair
    for _ in range(5):
        limiter.reserve("dr_a", "a")


def test_address_and_account_caps():
    now = [0.0]
    limiter = MemoryLoginThrottle(5, 60, clock=lambda: now[0])
    for i in range(20):  # password spraying: one address, many accounts
        limiter.reserve(f"user{i}", "spray")
    with pytest.raises(Throttled):
        limiter.reserve("user99", "spray")
    now[0] += 61
    limiter.succeeded(limiter.reserve("dr_a", "home"))  # the user's usual address
    for i in range(50):  # many addresses guessing one account
        limiter.reserve("dr_a", f"bot{i}")
    with pytest.raises(Throttled):
        limiter.reserve("dr_a", "bot-new")
    limiter.succeeded(limiter.reserve("dr_a", "home"))  # where the user signs in still works


def _spoofing_world(tmp_path, **settings):
    keyring = KeyRing.generate()
    store = EventStore.open(tmp_path / "xff.sqlite", keyring=keyring)
    app = create_app(fast_settings(**settings), store, keyring)
    app.state.services.directory.add_user("res", "researcher", PASSWORD)
    return store, app


def test_x_forwarded_for_from_localhost_is_not_believed(tmp_path):
    store, app = _spoofing_world(tmp_path)
    try:
        local = TestClient(app, client=("127.0.0.1", 51000))
        codes = [local.post("/auth/token", data={"username": "res", "password": "wrong one!!"},
                            headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code
                 for i in range(8)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}  # the limit held
        sources = {e.source for e in app.state.services.audit.entries()}
        assert sources == {"127.0.0.1"}  # the real peer, never the spoofed header
    finally:
        store.close()


def test_x_forwarded_for_is_believed_from_a_configured_proxy(tmp_path):
    store, app = _spoofing_world(tmp_path, trusted_proxies=("10.0.0.5",))
    try:
        proxy = TestClient(app, client=("10.0.0.5", 51000))
        r = proxy.post("/auth/token", data={"username": "res", "password": PASSWORD},
                       headers={"X-Forwarded-For": "198.51.100.23"})
        assert r.status_code == 200
        other = TestClient(app, client=("10.0.0.6", 51000))  # not a configured proxy
        other.post("/auth/token", data={"username": "res", "password": PASSWORD},
                   headers={"X-Forwarded-For": "192.0.2.99"})
        sources = [e.source for e in app.state.services.audit.entries() if e.action == "login"]
        assert sources == ["198.51.100.23", "10.0.0.6"]
    finally:
        store.close()


def test_a_wildcard_proxy_setting_is_refused():
    from medtwin.api.settings import Settings
    from medtwin.core.errors import ValidationError

    with pytest.raises(ValidationError, match="not an IP address"):
        Settings.from_env({"MEDTWIN_TRUSTED_PROXIES": "*"})
    assert Settings.from_env({"MEDTWIN_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16"}
                             ).trusted_proxies == ("10.0.0.5", "10.1.0.0/16")
