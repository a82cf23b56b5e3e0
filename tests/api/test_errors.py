"""Bad requests get a clear 4xx (problem or OperationOutcome), never a 5xx; nothing stored."""

from __future__ import annotations

import pytest

from medtwin.api.app import create_app
from medtwin.api.settings import Settings
from medtwin.core.errors import ValidationError


def test_malformed_json_and_wrong_types(world):
    h = {**world.headers["clinician"], "content-type": "application/json"}
    r = world.client.post("/patients/p1/observations", content=b"{not json", headers=h)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = world.client.post("/patients/p1/observations", json={"code": "x", "time": "soon",
                                                            "value": "high", "unit": "/min"},
                          headers=world.headers["clinician"])
    assert r.status_code == 422 and "time" in r.json()["detail"]
    naive = {"code": "8867-4", "time": "2024-03-01T09:00:00", "value": 1, "unit": "/min"}
    assert world.client.post("/patients/p1/observations", json=naive,
                             headers=world.headers["clinician"]).status_code == 422
    assert world.store.counts("p1")["observation"] == 5


def test_fhir_errors_are_operation_outcomes(world):
    h = world.headers["clinician"]
    bad = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": "NaN?"}}
    r = world.client.post("/fhir/Observation", json=bad, headers=h)
    assert r.status_code == 422
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    r = world.client.post("/fhir/Bundle", content=b"[1,", headers={
        **h, "content-type": "application/fhir+json"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = world.client.get("/fhir/Observation?patient=p1&date=yesterday", headers=h)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert world.client.get("/fhir/Patient/ghost", headers=h).json()["issue"][0]["code"] \
        == "not-found"


def test_oversized_body_is_413(world):
    big = b'{"resourceType": "Bundle", "type": "collection", "entry": [' + b" " * (3 << 20) + b"]}"
    r = world.client.post("/fhir/Bundle", content=big, headers={
        **world.headers["clinician"], "content-type": "application/fhir+json"})
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"


def test_observation_search_by_code_and_date(world):
    h = world.headers["clinician"]
    # issue 13: FHIR search reads the resource store; the readings go in as FHIR resources
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                      "subject": {"reference": "Patient/p1"},
                      "effectiveDateTime": f"2024-03-01T08:0{i}:00Z",
                      "valueQuantity": {"value": 60.0 + i, "unit": "/min",
                                        "system": "http://unitsofmeasure.org",
                                        "code": "/min"}}} for i in range(5)]}
    assert world.client.post("/fhir", json=tx, headers=h).status_code == 200
    r = world.client.get("/fhir/Observation", params=[
        ("patient", "Patient/p1"), ("code", "http://loinc.org|8867-4"),
        ("date", "ge2024-03-01T08:02:00Z"), ("date", "lt2024-03-01T08:04:00Z")], headers=h)
    assert r.status_code == 200
    bundle = r.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    assert [e["resource"]["valueQuantity"]["value"] for e in bundle["entry"]] == [62.0, 63.0]
    assert world.client.get("/fhir/Observation?patient=p1&code=0000-0",
                            headers=h).json()["total"] == 0


def test_settings_refuse_unsafe_production(tmp_path):
    with pytest.raises(ValidationError, match="MEDTWIN_SECRET"):
        Settings.from_env({"MEDTWIN_MODE": "production", "MEDTWIN_KEY_FILE": "/k"})
    with pytest.raises(ValidationError, match="MEDTWIN_SECRET"):
        Settings.from_env({"MEDTWIN_MODE": "production", "MEDTWIN_SECRET": "changeme",
                           "MEDTWIN_KEY_FILE": "/k"})
    strong = "s" * 10 + "0123456789abcdefghijklmnopqrstuvwxyz"
    with pytest.raises(ValidationError, match="encryption key"):
        Settings.from_env({"MEDTWIN_MODE": "production", "MEDTWIN_SECRET": strong})
    ok = Settings.from_env({"MEDTWIN_MODE": "production", "MEDTWIN_SECRET": strong,
                            "MEDTWIN_KEY_FILE": "/k"})
    with pytest.raises(ValueError, match="security cannot be switched off"):
        Settings(**{**ok.model_dump(), "secret": strong, "security_enabled": False})
    with pytest.raises(ValidationError, match="max_body_bytes"):
        Settings.from_env({"MEDTWIN_MAX_BODY_BYTES": "ten"})
    # the switch is never read from the environment
    assert Settings.from_env({"MEDTWIN_SECURITY_ENABLED": "0"}).security_enabled is True


def test_openapi_docs_are_served(world):
    spec = world.client.get("/openapi.json").json()
    assert {"/fhir/{rtype}", "/fhir/metadata", "/patients/{patient_id}/timeline",
            "/auth/token"} <= set(spec["paths"])
    assert world.client.get("/docs").status_code == 200
    assert create_app  # the factory is the public entry point
