"""Issue 12, findings 5 and 6 at the service edge: a flood of anonymous 401s writes a handful
of audit entries (the tester saw 5,826 rows in 30 s), authenticated denials stay one entry
each, and the service refuses a key ring that does not hold its store's key."""

from __future__ import annotations

import re

import pytest

from medtwin.api.app import create_app
from medtwin.api.settings import Settings
from medtwin.core.records import Patient
from medtwin.security.crypto import KeyRing
from medtwin.security.store_keys import StoreKeyError
from medtwin.store.event_store import EventStore

FLOOD = 2000


def test_refused_logins_under_many_names_and_junk_logouts_stay_a_handful(world):
    """Review of issue 12: throttled logins as nobody0..nobody299 opened one group each, and
    a junk logout wrote a row per request."""
    before = len(world.audit())
    for i in range(300):
        world.client.post("/auth/token", data={"username": f"nobody{i}", "password": "x" * 12})
        world.client.post("/auth/logout", headers={"Authorization": f"Bearer junk{i}"})
    during = [e for e in world.audit()[before:] if e.action != "login"]
    assert len(during) <= 4, [e.detail for e in during]


def test_a_flood_of_anonymous_401s_adds_a_handful_of_audit_rows(world):
    before = len(world.audit())
    for i in range(FLOOD):
        # no credential; a forged one; probing many paths to defeat the grouping
        headers = {"Authorization": "Bearer forged"} if i % 2 else {}
        r = world.client.get(f"/patients/p{i}/timeline", headers=headers)
        assert r.status_code == 401
    during = world.audit()[before:]
    assert len(during) <= 4, [e.detail for e in during]  # first of each (address, path, why)
    assert {e.detail for e in during} == {"missing credential",
                                          "invalid, expired or revoked credential"}
    world.client.app.state.services.close()  # shutdown audits the open windows
    summaries = [e for e in world.audit()[before:] if "further" in (e.detail or "")]
    counted = sum(int(re.match(r"(\d+) further", e.detail).group(1)) for e in summaries)
    assert counted == FLOOD - 2 and all(e.outcome == "denied" for e in summaries)
    assert all(e.source == "testclient" and e.resource == "/patients/..." for e in summaries)
    assert len(world.audit()) - before <= 6
    assert world.client.app.state.services.audit.verify().ok


def test_authenticated_denials_stay_individual_entries(world):
    before = len(world.audit())
    for _ in range(5):  # dr_a is not on p2's care team
        r = world.client.get("/patients/p2", headers=world.headers["clinician"])
        assert r.status_code in (403, 404)
    denied = [e for e in world.audit()[before:] if e.outcome == "denied"]
    assert len(denied) == 5 and all("dr_a" in e.actor for e in denied)
    assert all(e.patient_id == "p2" for e in denied)


def test_the_service_refuses_a_key_ring_without_its_stores_key(tmp_path):
    sealed_with = KeyRing.generate()
    with EventStore.open(tmp_path / "s.sqlite", keyring=sealed_with) as store:
        store.append([Patient(id="p1", source_id="Patient/p1",
                              identity={"name": [{"family": "Curie"}]})])
    other = KeyRing.generate()
    with EventStore.open(tmp_path / "s.sqlite", keyring=other) as store:
        with pytest.raises(StoreKeyError, match=f"sealed with key {sealed_with.current}"):
            create_app(Settings(argon2_memory_kib=256, argon2_time_cost=1), store, other)
        assert store.patients()["id"].tolist() == ["p1"]  # nothing was written
    with EventStore.open(tmp_path / "s.sqlite", keyring=sealed_with) as store:
        assert create_app(Settings(argon2_memory_kib=256, argon2_time_cost=1), store,
                          sealed_with) is not None
