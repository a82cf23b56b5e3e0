"""A service over a fresh SQLite store with one user per role, two care teams, two patients
(p1 consented to research, p2 did not) and a device bound to p1."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from medtwin.api.app import create_app
from medtwin.api.settings import Settings
from medtwin.core.records import Consent, Observation, Patient
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore

PASSWORD = "correct horse battery"
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def fast_settings(**kw) -> Settings:
    """Development settings with cheap argon2 (and jobs on a Dask cluster of threads) so
    tests stay quick."""
    kw.setdefault("jobs_local_processes", False)
    kw.setdefault("jobs_local_workers", 1)
    return Settings(argon2_memory_kib=256, argon2_time_cost=1, ws_poll_seconds=0.05, **kw)


def seed(store: EventStore) -> None:
    """Two patients with readings; p1 consented to research use."""
    pts = [Patient(id=pid, source_id=f"Patient/{pid}", gender="female", birth_year=1960,
                   identity={"name": [{"family": fam, "given": ["Ada"]}],
                             "birth_date": "1960-04-02",
                             "address": [{"line": ["1 Main St"], "city": "Boston",
                                          "state": "MA", "postalCode": "02118"}]})
           for pid, fam in (("p1", "Lovelace"), ("p2", "Byron"))]
    recs = [Observation(subject=pid, code="8867-4", time=T0 + timedelta(minutes=i),
                        value=60.0 + i, unit="/min", source_id=f"Observation/{pid}-{i}")
            for pid in ("p1", "p2") for i in range(5)]
    recs.append(Consent(subject="p1", source_id="Consent/c1", status="active",
                        scope="research", provision="permit", time=T0))
    store.append(pts, recs)


@dataclass
class World:
    client: TestClient
    store: EventStore
    headers: dict[str, dict[str, str]]
    device_key: str
    other_device_key: str

    def audit(self):
        return self.client.app.state.services.audit.entries()


def login(client: TestClient, username: str, password: str = PASSWORD):
    return client.post("/auth/token", data={"username": username, "password": password})


@pytest.fixture
def world(tmp_path) -> World:
    keyring = KeyRing.generate()
    store = EventStore.open(tmp_path / "api.sqlite", keyring=keyring)
    seed(store)
    app = create_app(fast_settings(), store, keyring)
    svc = app.state.services
    d = svc.directory
    d.add_user("root", "admin", PASSWORD)
    clin = d.add_user("dr_a", "clinician", PASSWORD)
    clin_b = d.add_user("dr_b", "clinician", PASSWORD)
    d.add_user("pat1", "patient", PASSWORD, patient_id="p1")
    d.add_user("res", "researcher", PASSWORD)
    d.add_to_team("ward-a", user_id=clin.id, patient_id="p1")
    d.add_to_team("ward-b", user_id=clin_b.id, patient_id="p2")
    key = d.add_device_key("cgm-1", "p1")
    other = d.add_device_key("cgm-2", "p2")
    with TestClient(app) as client:
        headers = {}
        for role, name in (("admin", "root"), ("clinician", "dr_a"), ("patient", "pat1"),
                           ("researcher", "res")):
            r = login(client, name)
            assert r.status_code == 200, r.text
            headers[role] = {"Authorization": f"Bearer {r.json()['access_token']}"}
        headers["device"] = {"Authorization": f"Bearer {key}"}
        yield World(client, store, headers, key, other)
    store.close()
