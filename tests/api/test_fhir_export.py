"""Issue 13: Bulk Data ``$export`` (Bulk Data Access IG v2): kick-off, status polling,
NDJSON files for the caller only, cancel; access per role (researchers de-identified and
consenting patients only); audit of kick-off and downloads; import -> $export -> import
exact; a job survives a restart of the service."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, update
from tests.api.conftest import PASSWORD, fast_settings, login
from tests.api.test_fhir_rest import seed_fhir

from medtwin.api.app import create_app
from medtwin.api.routes.fhir.export import jobs_of
from medtwin.api.routes.fhir.export_jobs import RELEASED, ExportJobs
from medtwin.interop.fhir.repository import FhirRepository
from medtwin.interop.importer import import_paths
from medtwin.security.crypto import KeyRing
from medtwin.store import schema as t
from medtwin.store.event_store import EventStore

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
GLASS = {"X-Break-Glass-Reason": "export test"}


@pytest.fixture
def fw(world):
    seed_fhir(world.client, {**world.headers["admin"], **GLASS})
    return world


def kick_off(client, url: str, headers: dict) -> str:
    r = client.get(url, headers={**headers, **ASYNC})
    assert r.status_code == 202, r.text
    return r.headers["Content-Location"]


def wait(client, status_url: str, headers: dict, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(status_url, headers=headers)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/json")
            return r.json()
        assert r.status_code == 202, r.text
        assert r.headers["X-Progress"] and r.headers["Retry-After"]
        time.sleep(0.05)
    raise AssertionError("the export did not finish")


def files(client, manifest: dict, headers: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in manifest["output"]:
        r = client.get(item["url"], headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert len(lines) == item["count"] and all(x["resourceType"] == item["type"]
                                                   for x in lines)
        out.setdefault(item["type"], []).extend(lines)
    return out


def export(client, url: str, headers: dict) -> tuple[dict, dict[str, list[dict]]]:
    manifest = wait(client, kick_off(client, url, headers), headers)
    return manifest, files(client, manifest, headers)


def _subjects(found: dict[str, list[dict]]) -> set[str]:
    out = set()
    for rtype, rows in found.items():
        for r in rows:
            if rtype == "Patient":
                out.add(r["id"])
            ref = (r.get("subject") or {}).get("reference", "")
            if ref.startswith("Patient/"):
                out.add(ref.split("/")[1])
    return out


# --- the protocol ---------------------------------------------------------------------------
def test_kick_off_needs_prefer_respond_async_and_valid_parameters(fw):
    h = fw.headers["clinician"]
    for url, extra in (("/fhir/$export", {}),
                       ("/fhir/$export?_outputFormat=text/csv", ASYNC),
                       ("/fhir/$export?_type=Observation,Bogus", ASYNC),
                       ("/fhir/$export?_since=yesterday", ASYNC)):
        r = fw.client.get(url, headers={**h, **extra})
        assert r.status_code == 400, url
        assert r.json()["resourceType"] == "OperationOutcome"
    strict = fw.client.get("/fhir/$export?_typeFilter=x",
                           headers={**h, **ASYNC, "Prefer": "respond-async, handling=strict"})
    assert strict.status_code == 400 and "_typeFilter" in strict.text


def test_kick_off_poll_download_cancel(fw):
    h = fw.headers["clinician"]  # dr_a: ward-a has p1 only
    before = len(fw.audit())
    status_url = kick_off(fw.client, "/fhir/$export?_outputFormat=application/fhir%2Bndjson",
                          h)
    assert re.search(r"/fhir/\$export-poll-status/[0-9a-f]{32}$", status_url)
    manifest = wait(fw.client, status_url, h)
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"] == ("http://testserver/fhir/$export"
                                   "?_outputFormat=application/fhir%2Bndjson")
    datetime.fromisoformat(manifest["transactionTime"])
    found = files(fw.client, manifest, h)
    assert _subjects(found) == {"p1"}
    assert len(found["Observation"]) == 7 and [p["id"] for p in found["Patient"]] == ["p1"]
    assert [o["id"] for o in found["Organization"]] == ["org1"]  # shared, system level
    assert all(r["meta"]["versionId"] for rows in found.values() for r in rows)
    # audited: the kick-off and each download, with the patient covered
    entries = fw.audit()[before:]
    kick = [e for e in entries if e.resource == "$export" and "kick-off" in (e.detail or "")]
    assert {e.patient_id for e in kick} == {"p1", None}
    downloads = [e for e in entries if "file" in (e.detail or "")]
    assert len({e.detail for e in downloads}) == len(manifest["output"])
    assert {e.patient_id for e in downloads} == {"p1", None}
    # the files and the status are the caller's only
    other = {"Authorization": "Bearer " + login(fw.client, "dr_b").json()["access_token"]}
    for who in (other, fw.headers["patient"]):
        assert fw.client.get(status_url, headers=who).status_code == 404
        assert fw.client.get(manifest["output"][0]["url"], headers=who).status_code == 404
        assert fw.client.delete(status_url, headers=who).status_code == 404
    # cancel: the job and its files are gone
    assert fw.client.delete(status_url, headers=h).status_code == 202
    assert fw.client.get(status_url, headers=h).status_code == 404
    assert fw.client.get(manifest["output"][0]["url"], headers=h).status_code == 404


def test_type_and_since(fw):
    h = fw.headers["clinician"]
    _, found = export(fw.client, "/fhir/Patient/$export?_type=Observation,Encounter", h)
    assert set(found) == {"Observation", "Encounter"} and _subjects(found) == {"p1"}
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest, found = export(fw.client, f"/fhir/$export?_since={later}", h)
    assert found == {} and manifest["output"] == []
    ignored, _ = export(fw.client, "/fhir/$export?_type=Patient&_elements=id", h)
    assert len(ignored["error"]) == 1  # the unsupported parameter, named in an error file
    outcome = fw.client.get(ignored["error"][0]["url"], headers=h).json()
    assert "_elements" in outcome["issue"][0]["diagnostics"]


# --- who gets what --------------------------------------------------------------------------
def test_access_per_role(fw):
    c = fw.client
    dev = fw.headers["device"]
    assert c.get("/fhir/$export", headers={**dev, **ASYNC}).status_code == 403
    admin = fw.headers["admin"]
    assert c.get("/fhir/$export", headers={**admin, **ASYNC}).status_code == 403
    _, everyone = export(c, "/fhir/$export", {**admin, **GLASS})
    assert _subjects(everyone) == {"p1", "p2"}
    # a patient: their own compartment, no shared data, no groups
    pat = fw.headers["patient"]
    _, own = export(c, "/fhir/$export", pat)
    assert _subjects(own) == {"p1"} and "Organization" not in own
    # groups: the members the caller reaches
    group = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
             "member": [{"entity": {"reference": "Patient/p1"}},
                        {"entity": {"reference": "Patient/p2"}}]}
    assert c.put("/fhir/Group/g1", json=group, headers=fw.headers["clinician"]).status_code \
        == 201
    _, members = export(c, "/fhir/Group/g1/$export", fw.headers["clinician"])
    assert _subjects(members) == {"p1"} and "Organization" not in members
    assert c.get("/fhir/Group/g1/$export", headers={**pat, **ASYNC}).status_code == 403
    missing = c.get("/fhir/Group/nope/$export", headers={**fw.headers["clinician"], **ASYNC})
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_researchers_get_safe_harbor_data_of_consenting_patients(fw):
    h = fw.headers["researcher"]
    before = len(fw.audit())
    manifest, found = export(fw.client, "/fhir/$export", h)
    text = json.dumps(found)
    assert "Lovelace" not in text and "Byron" not in text and "1960-04-02" not in text
    assert "org1" not in text and "General Hospital" not in text
    deid = fw.client.app.state.services.deidentifier()
    assert _subjects(found) == {deid.pseudonym("p1")}  # p2 did not consent
    assert [p["birthDate"] for p in found["Patient"]] == ["1960"]
    ids = {f"{r['resourceType']}/{r['id']}" for rows in found.values() for r in rows}
    for rows in found.values():  # every reference resolves among the files
        for r in rows:
            for ref in re.findall(r'"reference": "([^"]+)"', json.dumps(r)):
                assert ref in ids, ref
    assert manifest["extension"]["https://medtwin.dev/fhir/deidentification"] == "safe-harbor"
    audited = [e for e in fw.audit()[before:] if e.resource == "$export"]
    assert {e.patient_id for e in audited} == {"p1"}
    assert {e.action for e in audited} == {"research"}
    # a type the de-identifier does not know: left out, and said so
    manifest, found = export(fw.client, "/fhir/$export?_type=Observation,Claim", h)
    assert set(found) == {"Observation"} and len(manifest["error"]) == 1


def test_a_download_needs_the_access_of_the_kick_off(fw):
    h = fw.headers["clinician"]
    manifest = wait(fw.client, kick_off(fw.client, "/fhir/$export?_type=Observation", h), h)
    fw.client.app.state.services.directory.remove_from_team("ward-a", "p1")
    r = fw.client.get(manifest["output"][0]["url"], headers=h)
    assert r.status_code == 403 and fw.audit()[-1].outcome == "denied"


# --- round trip -----------------------------------------------------------------------------
def test_import_export_import_is_exact(reference, tmp_path):
    synthea = sorted((reference / "fhir" / "synthea").glob("*.json"))[:3]
    keyring = KeyRing.generate()
    with EventStore.open(tmp_path / "a.sqlite", keyring=keyring) as a, \
            EventStore.open(tmp_path / "b.sqlite") as b:
        assert import_paths(a, synthea).rejected == 0
        app = create_app(fast_settings(security_enabled=False), a, keyring)
        with TestClient(app) as client:
            manifest, _ = export(client, "/fhir/$export", {})
            out = tmp_path / "bulk"
            out.mkdir()
            for item in manifest["output"]:
                text = client.get(item["url"]).text
                (out / f"{item['type']}-{item['url'].rsplit('/', 1)[1]}.ndjson").write_text(text)
        summary = import_paths(b, [out])
        assert summary.rejected == 0, summary.text()

        def content(store: EventStore) -> dict[str, str]:
            return {r.reference: r.content for r in FhirRepository(store).iter_resources()}

        assert content(b) == content(a) and len(content(a)) > 100


# --- restarts -------------------------------------------------------------------------------
def _service(store: EventStore, keyring: KeyRing, settings, *, users: bool) -> TestClient:
    app = create_app(settings, store, keyring)
    if users:
        d = app.state.services.directory
        clin = d.add_user("dr_a", "clinician", PASSWORD)
        d.add_to_team("ward-a", user_id=clin.id, patient_id="p1")
    return TestClient(app)


def test_a_job_survives_a_restart(tmp_path):
    keyring = KeyRing.generate()
    settings = fast_settings()
    with EventStore.open(tmp_path / "s.sqlite", keyring=keyring) as store:
        with _service(store, keyring, settings, users=True) as first:
            h = {"Authorization": "Bearer " + login(first, "dr_a").json()["access_token"]}
            seed_fhir(first, {**h})  # dr_a creates p1, p2 and cares for them
            jobs = jobs_of(first.app.state.services)
            jobs._start = lambda job: None  # the process dies before running it
            status_url = kick_off(first, "/fhir/$export", h)
            job_id = status_url.rsplit("/", 1)[1]
        # a new process over the same store: the job is not lost
        with _service(store, keyring, settings, users=False) as second:
            jobs = jobs_of(second.app.state.services)
            r = second.get(status_url, headers=h)
            assert r.status_code == 202  # its runner may still be alive: within the lease
            jobs.lease = timedelta(0)
            manifest = wait(second, status_url, h)  # lease over: taken up and finished
            counts = {i["type"]: i["count"] for i in manifest["output"]}
            assert counts["Observation"] == 14 and counts["Patient"] == 2
        # a job that died mid-run with a partial file: taken up at start, started afresh
        with store.engine.begin() as conn:
            conn.execute(update(t.fhir_export_jobs).where(t.fhir_export_jobs.c.id == job_id)
                         .values(status="running", progress="half way",
                                 updated_at=datetime(2020, 1, 1, tzinfo=UTC)))
            conn.execute(t.fhir_export_files.delete())
            conn.execute(insert(t.fhir_export_files).values(
                job_id=job_id, seq=1, type="Observation", count=1,
                content=keyring.encrypt(b'{"resourceType":"Observation"}\n',
                                        context=f"fhir-export:{job_id}:1")))
        with _service(store, keyring, settings, users=False) as third:
            manifest = wait(third, status_url, h)
            found = files(third, manifest, h)
            assert len(found["Observation"]) == 14 and all("id" in o for o in
                                                           found["Observation"])


def test_shutdown_releases_a_running_job_for_the_next_process(store):
    """On SQLite and PostgreSQL: the heartbeat claim works on both."""
    keyring = KeyRing.generate()
    started = threading.Event()

    def endless(job, write, progress):
        started.set()
        while True:
            progress("working")
            time.sleep(0.01)

    jobs = ExportJobs(store.engine, endless, keyring)
    job = jobs.create("someone", "http://x/fhir/$export", {})
    assert started.wait(10)
    jobs.close()
    released = jobs.get(job.id)
    assert released.status == "queued" and released.updated_at == RELEASED
    time.sleep(0.1)  # the old runner stopped: its heartbeat no longer moves
    assert jobs.get(job.id).updated_at == RELEASED
    nxt = ExportJobs(store.engine, lambda j, write, p: write("Patient", "{}\n", 1), keyring)
    assert nxt.take_up_all() == 1
    deadline = time.monotonic() + 10
    while nxt.get(job.id).status != "done" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert nxt.get(job.id).status == "done" and nxt.content(job.id, 1) == "{}\n"
    nxt.close()
