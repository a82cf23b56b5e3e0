"""Issue 13 parts 2-3: the FHIR R4 REST API, through a FHIR client library (fhirpy) against a
real uvicorn server, and its security: nothing the caller may not see leaks through search,
_include/_revinclude, $everything, _history (type and system) or paging links."""

from __future__ import annotations

import re
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import uvicorn
from fhir.resources.R4B import get_fhir_model_class
from fhirpy import SyncFHIRClient
from tests.api.conftest import PASSWORD, fast_settings, login

from medtwin.api.app import create_app
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore

LOINC = "http://loinc.org"


def obs(pid: str, i: int, enc: str | None = None) -> dict:
    r = {"resourceType": "Observation", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
         "subject": {"reference": f"Patient/{pid}"},
         "effectiveDateTime": f"2024-03-0{1 + i % 5}T08:00:00Z",
         "valueQuantity": {"value": 60 + i, "unit": "/min",
                           "system": "http://unitsofmeasure.org", "code": "/min"}}
    if enc:
        r["encounter"] = {"reference": f"Encounter/{enc}"}
    return r


def seed_fhir(client, h) -> None:
    """p1 and p2 (teams ward-a, ward-b) with encounters and observations, as FHIR."""
    entries = []
    for pid in ("p1", "p2"):
        entries.append({"request": {"method": "PUT", "url": f"Patient/{pid}"}, "resource": {
            "resourceType": "Patient", "id": pid, "gender": "female",
            "name": [{"family": "Lovelace" if pid == "p1" else "Byron", "given": ["Ada"]}],
            "birthDate": "1960-04-02"}})
        entries.append({"request": {"method": "PUT", "url": f"Encounter/e-{pid}"}, "resource": {
            "resourceType": "Encounter", "id": f"e-{pid}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"}, "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": "2024-03-01T07:00:00Z", "end": "2024-03-01T09:00:00Z"}}})
        entries += [{"request": {"method": "POST", "url": "Observation"},
                     "resource": obs(pid, i, f"e-{pid}")} for i in range(7)]
    entries.append({"request": {"method": "PUT", "url": "Organization/org1"},
                    "resource": {"resourceType": "Organization", "id": "org1",
                                 "name": "General Hospital"}})
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction",
                                   "entry": entries}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "transaction-response"


@pytest.fixture
def fw(world):
    """The world with its data as FHIR resources too (written by an admin's break-glass)."""
    h = {**world.headers["admin"], "X-Break-Glass-Reason": "test data load"}
    seed_fhir(world.client, h)
    return world


def validate(body: dict) -> None:
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    for e in body.get("entry", []):
        if "resource" in e:
            get_fhir_model_class(e["resource"]["resourceType"]).model_validate(e["resource"])


# --- formats and errors -------------------------------------------------------------------
def test_xml_is_406_with_an_operation_outcome(fw):
    h = fw.headers["clinician"]
    for url, extra in (("/fhir/Patient/p1?_format=xml", {}),
                       ("/fhir/Patient/p1", {"Accept": "application/fhir+xml"}),
                       ("/fhir/metadata", {"Accept": "application/xml"})):
        r = fw.client.get(url, headers={**h, **extra})
        assert r.status_code == 406, url
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert r.json()["resourceType"] == "OperationOutcome"
    ok = fw.client.get("/fhir/Patient/p1", headers={**h, "Accept": "application/fhir+json"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith(
        "application/fhir+json")


def test_every_error_under_fhir_is_an_operation_outcome(fw):
    h = fw.headers["clinician"]
    for method, url in (("GET", "/fhir/NoSuchType/1"), ("GET", "/fhir/Patient/ghost"),
                        ("PATCH", "/fhir/Patient/p1"), ("GET", "/fhir/Observation?date=x")):
        r = fw.client.request(method, url, headers=h)
        assert r.status_code >= 400, url
        assert r.json()["resourceType"] == "OperationOutcome", url


# --- capabilities: every listed type, interaction and parameter works ---------------------
def test_capability_statement_is_true(fw):
    h = {**fw.headers["admin"], "X-Break-Glass-Reason": "capability walk"}
    cs = fw.client.get("/fhir/metadata").json()
    validate(cs)
    rest = cs["rest"][0]
    assert {i["code"] for i in rest["interaction"]} >= {"transaction", "batch",
                                                        "history-system"}
    for res in rest["resource"]:
        t = res["type"]
        r = fw.client.get(f"/fhir/{t}?_count=1", headers=h)
        assert r.status_code == 200, (t, r.text)
        assert fw.client.get(f"/fhir/{t}/_history?_count=1", headers=h).status_code == 200
        for p in res["searchParam"]:
            value = {"date": "ge2000-01-01", "token": "x", "string": "x",
                     "reference": "Patient/p1"}.get(p["type"], "x")
            r = fw.client.get(f"/fhir/{t}", params={p["name"]: value},
                              headers={**h, "Prefer": "handling=strict"})
            assert r.status_code == 200, (t, p, r.text)
        for inc in res["searchInclude"]:
            r = fw.client.get(f"/fhir/{t}", params={"_include": inc}, headers=h)
            assert r.status_code == 200, (t, inc, r.text)
        for op in res.get("operation", []):  # type and instance operations
            url = {("Patient", "everything"): "/fhir/Patient/p1/$everything",
                   ("Patient", "export"): "/fhir/Patient/$export",
                   ("Group", "export"): "/fhir/Group/g-cs/$export"}[(t, op["name"])]
            if t == "Group":
                group = {"resourceType": "Group", "id": "g-cs", "type": "person",
                         "actual": True, "member": [{"entity": {"reference": "Patient/p1"}}]}
                assert fw.client.put("/fhir/Group/g-cs", json=group, headers=h).is_success
            r = fw.client.get(url, headers={**h, "Prefer": "respond-async"})
            assert r.status_code in (200, 202), (url, r.text)
    for op in rest["operation"]:  # system operations
        assert op["name"] == "export"
        r = fw.client.get("/fhir/$export", headers={**h, "Prefer": "respond-async"})
        assert r.status_code == 202 and "Content-Location" in r.headers
    for code in ("transaction", "batch"):
        r = fw.client.post("/fhir", json={"resourceType": "Bundle", "type": code,
                                          "entry": []}, headers=h)
        assert r.status_code == 200 and r.json()["type"] == f"{code}-response"
    assert fw.client.get("/fhir/_history", headers=h).json()["type"] == "history"
    # security: SMART, with the discovery document it names
    security = rest["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    smart_url = re.search(r"https?://\S+/\.well-known/smart-configuration",
                          security["description"]).group(0)
    smart = fw.client.get(smart_url).json()
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"] == smart["token_endpoint"]


def test_unknown_parameters_warn_or_fail_when_strict(fw):
    h = fw.headers["clinician"]
    r = fw.client.get("/fhir/Observation?patient=p1&colour=blue", headers=h)
    assert r.status_code == 200
    outcome = [e for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = fw.client.get("/fhir/Observation?patient=p1&colour=blue",
                           headers={**h, "Prefer": "handling=strict"})
    assert strict.status_code == 400 and "colour" in strict.text


# --- security ---------------------------------------------------------------------------
def _ids(bundle: dict) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in bundle.get("entry", []) if e["search"]["mode"] != "outcome"}


def _patients_in(bundle: dict) -> set[str]:
    out = set()
    for e in bundle.get("entry", []):
        r = e.get("resource", {})
        if r.get("resourceType") == "Patient":
            out.add(r["id"])
        ref = (r.get("subject") or {}).get("reference", "")
        if ref.startswith("Patient/"):
            out.add(ref.split("/")[1])
    return out


def test_search_include_revinclude_never_leak_another_care_team(fw):
    h = fw.headers["clinician"]  # dr_a: ward-a has p1 only
    b = fw.client.get("/fhir/Observation?_include=Observation:subject"
                      "&_include=Observation:encounter&_count=100", headers=h).json()
    assert _patients_in(b) == {"p1"} and b["total"] == 7
    assert {"Patient/p1", "Encounter/e-p1"} <= _ids(b)
    validate(b)
    for e in b["entry"]:
        assert e["fullUrl"].startswith("http://testserver/fhir/")
    b = fw.client.get("/fhir/Patient?_revinclude=Observation:subject", headers=h).json()
    assert _patients_in(b) == {"p1"}
    b = fw.client.get("/fhir/Encounter", headers=h).json()
    assert _ids(b) == {"Encounter/e-p1"}
    hidden = fw.client.get("/fhir/Observation?patient=p2", headers=h)
    assert hidden.status_code == 404


def test_history_type_and_system_never_leak(fw):
    h = fw.headers["clinician"]
    for url in ("/fhir/_history?_count=1000", "/fhir/Observation/_history?_count=1000",
                "/fhir/Patient/_history"):
        b = fw.client.get(url, headers=h).json()
        assert b["type"] == "history"
        refs = {e["fullUrl"].split("/fhir/")[1] for e in b["entry"]}
        assert "Patient/p2" not in refs and "Encounter/e-p2" not in refs, url
        assert all(_patients_in({"entry": [x]}) <= {"p1"} for x in b["entry"]
                   if "resource" in x)
    pat = fw.headers["patient"]  # patients do not see shared data either
    b = fw.client.get("/fhir/_history", headers=pat).json()
    assert not any(e["fullUrl"].endswith("Organization/org1") for e in b.get("entry", []))


def test_paging_links_follow_and_are_bound_to_the_caller(fw):
    h = fw.headers["clinician"]
    first = fw.client.get("/fhir/Observation?_count=3&_sort=date", headers=h).json()
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert "Observation?_page_token=" in nxt
    token = parse_qs(urlsplit(nxt).query)["_page_token"][0]
    # opaque: nothing of the query or its results in clear (a 2-letter id such as 'p1' may
    # occur in any random token, so the check is on words)
    assert set(parse_qs(urlsplit(nxt).query)) == {"_page_token"}
    assert not any(w in token for w in ("patient", "_sort", "Observation", "_count"))
    seen = _ids(first)
    url = nxt
    while url:
        page = fw.client.get(url, headers=h).json()
        assert not (_ids(page) & seen)
        seen |= _ids(page)
        url = next((x["url"] for x in page["link"] if x["relation"] == "next"), None)
    assert len(seen) == 7
    prev = fw.client.get(nxt, headers=h).json()
    back = next(x["url"] for x in prev["link"] if x["relation"] == "previous")
    assert _ids(fw.client.get(back, headers=h).json()) == _ids(first)
    # another caller (the patient) cannot use the clinician's link
    assert fw.client.get(nxt, headers=fw.headers["patient"]).status_code == 400
    forged = nxt[:-5] + "AAAAA"
    assert fw.client.get(forged, headers=h).status_code == 400


def test_everything_is_the_patients_compartment_only(fw):
    h = fw.headers["clinician"]
    b = fw.client.get("/fhir/Patient/p1/$everything", headers=h).json()
    assert _patients_in(b) == {"p1"} and "Encounter/e-p1" in _ids(b)
    validate(b)
    assert fw.client.get("/fhir/Patient/p2/$everything", headers=h).status_code == 404
    assert fw.client.get("/fhir/Patient/p1/$everything",
                         headers=fw.headers["researcher"]).status_code == 403


def test_roles_on_shared_and_patient_resources(fw):
    assert fw.client.get("/fhir/Organization/org1",
                         headers=fw.headers["clinician"]).status_code == 200
    assert fw.client.get("/fhir/Organization/org1",
                         headers=fw.headers["admin"]).status_code == 200  # not patient data
    for role in ("patient", "researcher", "device"):
        assert fw.client.get("/fhir/Organization/org1",
                             headers=fw.headers[role]).status_code == 403, role
    # a device creates Observations for its own patient only, and nothing else
    dev = fw.headers["device"]
    assert fw.client.post("/fhir/Observation", json=obs("p1", 1), headers=dev).status_code == 201
    assert fw.client.post("/fhir/Observation", json=obs("p2", 1), headers=dev).status_code == 403
    enc = {"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"},
           "subject": {"reference": "Patient/p1"}}
    assert fw.client.post("/fhir/Encounter", json=enc, headers=dev).status_code == 403
    before = len(fw.audit())
    fw.client.get("/fhir/Observation?_count=2", headers=fw.headers["clinician"])
    assert any(e.patient_id == "p1" and e.outcome == "success" for e in fw.audit()[before:])


# --- a scripted session with a FHIR client library against a real server ------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    keyring = KeyRing.generate()
    store = EventStore.open(tmp_path / "live.sqlite", keyring=keyring)
    app = create_app(fast_settings(), store, keyring)
    d = app.state.services.directory
    clin = d.add_user("dr_a", "clinician", PASSWORD)
    d.add_to_team("ward-a", user_id=clin.id)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)
    store.close()


def test_fhirpy_session(server):
    import httpx

    url, _app = server
    token = httpx.post(f"{url}/auth/token", data={"username": "dr_a", "password": PASSWORD})
    client = SyncFHIRClient(f"{url}/fhir", authorization=f"Bearer {token.json()['access_token']}")
    # capabilities
    cs = client.execute("metadata", method="get")
    assert cs["resourceType"] == "CapabilityStatement"
    # create (a patient the clinician then cares for) and read
    patient = client.resource("Patient", id="fp1", name=[{"family": "Hopper"}], gender="female")
    patient.save()  # PUT Patient/fp1 (update-as-create)
    assert client.reference("Patient", "fp1").to_resource()["name"][0]["family"] == "Hopper"
    # transaction with urn:uuid references
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6a1e3c1e-1f0e-4c55-9d2b-1b1d3a1b5e10",
         "request": {"method": "POST", "url": "Encounter"},
         "resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"code": "AMB"}, "subject": {"reference": "Patient/fp1"}}},
        *[{"request": {"method": "POST", "url": "Observation"},
           "resource": {**obs("fp1", i), "encounter": {
               "reference": "urn:uuid:6a1e3c1e-1f0e-4c55-9d2b-1b1d3a1b5e10"}}}
          for i in range(5)]]}
    resp = client.execute("", method="post", data=tx)
    assert resp["type"] == "transaction-response"
    assert all(e["response"]["status"].startswith("201") for e in resp["entry"])
    # search with paging (fhirpy follows the next links)
    found = client.resources("Observation").search(patient="fp1").limit(2).fetch_all()
    assert len(found) == 5
    assert all(o["encounter"]["reference"].startswith("Encounter/") for o in found)
    # _include
    raw = client.resources("Observation").search(patient="fp1").include(
        "Observation", "subject").fetch_raw()
    assert any(e["resource"]["resourceType"] == "Patient" for e in raw["entry"])
    # update, history
    o = found[0]
    o["status"] = "amended"
    o.save()
    hist = client.execute(f"Observation/{o['id']}/_history", method="get")
    assert hist["total"] == 2 and hist["entry"][0]["resource"]["status"] == "amended"
    # delete, then 410
    o.delete()
    gone = httpx.get(f"{url}/fhir/Observation/{o['id']}",
                     headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    assert gone.status_code == 410 and gone.json()["resourceType"] == "OperationOutcome"


def test_create_update_conditional_and_versions(fw):
    h = fw.headers["clinician"]
    r = fw.client.post("/fhir/Observation", json=obs("p1", 3), headers=h)
    assert r.status_code == 201
    rid = r.json()["id"]
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"].endswith(f"/fhir/Observation/{rid}/_history/1")
    assert "Last-Modified" in r.headers
    body = {**r.json(), "status": "amended"}
    stale = fw.client.put(f"/fhir/Observation/{rid}", json=body,
                          headers={**h, "If-Match": 'W/"7"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    ok = fw.client.put(f"/fhir/Observation/{rid}", json=body,
                       headers={**h, "If-Match": 'W/"1"', "Prefer": "return=minimal"})
    assert ok.status_code == 200 and ok.content == b"" and ok.headers["ETag"] == 'W/"2"'
    assert fw.client.get(f"/fhir/Observation/{rid}/_history/1",
                         headers=h).json()["status"] == "final"
    cond = {**h, "If-None-Exist": f"_id={rid}"}
    again = fw.client.post("/fhir/Observation", json=obs("p1", 3), headers=cond)
    assert again.status_code == 200 and again.json()["id"] == rid
    assert fw.client.delete(f"/fhir/Observation/{rid}", headers=h).status_code == 204
    assert fw.client.get(f"/fhir/Observation/{rid}", headers=h).status_code == 410
    # another care team cannot touch it
    other = {"Authorization": "Bearer " + login(fw.client, "dr_b").json()["access_token"]}
    assert fw.client.get("/fhir/Patient/p1", headers=other).status_code == 404
