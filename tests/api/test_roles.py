"""Every role against every endpoint family, through the HTTP stack: allowed, denied, audited."""

from __future__ import annotations

import pytest

OBS = {"code": "8867-4", "time": "2024-03-01T09:00:00Z", "value": 72, "unit": "/min"}
FHIR_OBS = {"resourceType": "Observation", "id": "new-hr", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01T09:30:00Z",
            "valueQuantity": {"value": 70, "unit": "/min", "system":
                              "http://unitsofmeasure.org", "code": "/min"}}
BUNDLE = {"resourceType": "Bundle", "type": "collection",
          "entry": [{"fullUrl": "urn:uuid:4b1e3c1e-1f0e-4c55-9d2b-1b1d3a1b5e01",
                     "resource": {**FHIR_OBS, "id": "bundled-hr"}}]}

FAMILIES = {
    # family: (method, path, body, statuses for admin, clinician, patient, researcher, device)
    "patients": ("GET", "/patients", None, (403, 200, 200, 403, 403)),
    "patient": ("GET", "/patients/p1", None, (403, 200, 200, 403, 403)),
    "timeline": ("GET", "/patients/p1/timeline", None, (403, 200, 200, 403, 403)),
    "write": ("POST", "/patients/p1/observations", OBS, (403, 201, 403, 403, 201)),
    "fhir-patient": ("GET", "/fhir/Patient/p1", None, (403, 200, 200, 403, 403)),
    "fhir-search": ("GET", "/fhir/Observation?patient=p1&code=8867-4", None,
                    (403, 200, 200, 403, 403)),
    "fhir-create": ("POST", "/fhir/Observation", FHIR_OBS, (403, 201, 403, 403, 201)),
    "fhir-bundle": ("POST", "/fhir/Bundle", BUNDLE, (403, 200, 403, 403, 403)),
    "research": ("GET", "/research/patients", None, (403, 403, 403, 200, 403)),
    "audit": ("GET", "/audit/verify", None, (200, 403, 403, 403, 403)),
    "users": ("GET", "/users", None, (200, 403, 403, 403, 403)),
    "trials": ("GET", "/trials/0123456789abcdef", None, (404, 404, 403, 404, 403)),
    "alerts": ("GET", "/alerts?patient=p1", None, (403, 200, 200, 403, 403)),
    "alert-list": ("GET", "/alerts", None, (403, 200, 200, 403, 403)),
    # p1 has heart rates only: an allowed caller learns the twin has nothing to start from
    "twins": ("GET", "/twins/p1", None, (403, 200, 200, 403, 403)),
    "glucose-twin": ("GET", "/twins/p1/glucose", None, (403, 409, 409, 403, 403)),
    "dose": ("GET", "/twins/p1/dose", None, (403, 409, 409, 403, 403)),
}
ROLES = ("admin", "clinician", "patient", "researcher", "device")
CASES = [pytest.param(f, role, FAMILIES[f][3][i], id=f"{f}-{role}")
         for f in FAMILIES for i, role in enumerate(ROLES)]


@pytest.mark.parametrize(("family", "role", "expected"), CASES)
def test_role_matrix(world, family, role, expected):
    method, path, body, _ = FAMILIES[family]
    before = len(world.audit())
    r = world.client.request(method, path, json=body, headers=world.headers[role])
    assert r.status_code == expected, r.text
    assert r.status_code < 500
    new = world.audit()[before:]
    if expected == 403:
        assert r.headers["content-type"].startswith(
            "application/fhir+json" if path.startswith("/fhir") else "application/problem+json")
        assert any(e.outcome == "denied" and e.role == role for e in new), new
    elif expected < 300:
        assert any(e.outcome == "success" for e in new), new
        if family in {"patient", "timeline", "write", "fhir-patient", "fhir-search",
                      "fhir-create", "fhir-bundle"}:
            assert any(e.patient_id == "p1" for e in new)


def test_clinician_sees_only_their_care_team(world):
    h = world.headers["clinician"]
    assert [p["id"] for p in world.client.get("/patients", headers=h).json()] == ["p1"]
    hidden = world.client.get("/patients/p2/timeline", headers=h)
    ghost = world.client.get("/patients/ghost/timeline", headers=h)
    assert hidden.status_code == ghost.status_code == 404  # existence not revealed
    assert hidden.json()["title"] == ghost.json()["title"]
    assert set(hidden.json()) == set(ghost.json())
    entries = world.audit()
    assert entries[-2].outcome == "denied" and entries[-2].patient_id == "p2"


def test_patient_sees_only_themselves(world):
    h = world.headers["patient"]
    assert world.client.get("/patients/p1", headers=h).json()["identity"]["name"][0][
        "family"] == "Lovelace"
    assert world.client.get("/patients/p2", headers=h).status_code == 404


def test_admin_break_glass_is_allowed_and_audited_with_its_reason(world):
    h = {**world.headers["admin"], "X-Break-Glass-Reason": "cardiac arrest, team unreachable"}
    r = world.client.get("/patients/p2/timeline", headers=h)
    assert r.status_code == 200 and r.json()["count"] == 5
    last = world.audit()[-1]
    assert last.patient_id == "p2" and "cardiac arrest" in last.detail
    assert last.role == "admin" and last.outcome == "success"


def test_device_key_for_another_patient_is_refused(world):
    r = world.client.post("/patients/p2/observations", json=OBS, headers=world.headers["device"])
    assert r.status_code == 403 and "another patient" in r.json()["detail"]
    assert world.audit()[-1].outcome == "denied"
    fhir = {**FHIR_OBS, "subject": {"reference": "Patient/p2"}}
    r = world.client.post("/fhir/Observation", json=fhir, headers=world.headers["device"])
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    assert world.store.counts("p2")["observation"] == 5  # nothing was written


def test_researcher_sees_only_deidentified_consented_data(world):
    h = world.headers["researcher"]
    listed = world.client.get("/research/patients", headers=h).json()
    assert len(listed) == 1  # p1 consented, p2 did not
    pseudo = listed[0]["pseudonym"]
    assert pseudo != "p1"
    tl = world.client.get(f"/research/patients/{pseudo}/timeline", headers=h)
    assert tl.status_code == 200 and tl.json()["count"] == 5
    assert "2024-03-01" not in tl.text  # dates shifted
    bundle = world.client.get(f"/research/patients/{pseudo}/bundle", headers=h)
    assert bundle.status_code == 200
    assert "Lovelace" not in bundle.text and "Boston" not in bundle.text
    svc = world.client.app.state.services
    p2 = svc.deidentifier().pseudonym("p2")
    refused = world.client.get(f"/research/patients/{p2}/timeline", headers=h)
    assert refused.status_code == 404 and "p2" not in refused.text
    assert world.audit()[-1].outcome == "denied"


def test_clinician_bundle_creates_a_patient_in_their_care(world):
    new = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:6a1e3c1e-1f0e-4c55-9d2b-1b1d3a1b5e02",
         "resource": {"resourceType": "Patient", "id": "p3", "gender": "male"}},
        {"fullUrl": "urn:uuid:6a1e3c1e-1f0e-4c55-9d2b-1b1d3a1b5e03",
         "resource": {**FHIR_OBS, "id": "p3-hr",
                      "subject": {"reference": "urn:uuid:6a1e3c1e-1f0e-4c55-9d2b-1b1d3a1b5e02"}}}]}
    r = world.client.post("/fhir/Bundle", json=new, headers=world.headers["clinician"])
    assert r.status_code == 200, r.text
    assert world.client.get("/patients/p3/timeline",
                            headers=world.headers["clinician"]).json()["count"] == 1
    other = {"Authorization": "Bearer " + world.client.post("/auth/token", data={
        "username": "dr_b", "password": "correct horse battery"}).json()["access_token"]}
    assert world.client.get("/patients/p3", headers=other).status_code == 404
