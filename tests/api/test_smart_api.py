"""SMART v2 scopes enforced on top of roles, through the HTTP stack (external tokens and
medtwin's own), the audit of scope refusals, and the smart-configuration document."""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect
from tests.api.conftest import PASSWORD
from tests.api.smart_world import audit, bearer, oidc_service, tok


@pytest.fixture
def oidc_world(tmp_path):
    with oidc_service(tmp_path) as world:
        yield world


OBS = {"code": "8867-4", "time": "2024-03-01T09:00:00Z", "value": 72, "unit": "/min"}
FHIR_OBS = {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01T09:30:00Z",
            "valueQuantity": {"value": 70, "unit": "/min", "system":
                              "http://unitsofmeasure.org", "code": "/min"}}
OBS_RS = "launch/patient patient/Observation.rs"


def _denial(client, resource):
    return [e for e in audit(client) if e.resource == resource and e.outcome == "denied"][-1]


def test_patient_observation_rs_reads_and_searches_its_patient_only(oidc_world):
    client, idp = oidc_world
    h = bearer(tok(idp, "dr_a", scope=OBS_RS, patient="p1"))
    r = client.get("/fhir/Observation", params={"patient": "p1", "code": "8867-4"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["resourceType"] == "Bundle"
    r = client.get("/patients/p1/observations/Observation/p1-0/history", headers=h)
    assert r.status_code == 200, r.text  # a read of one Observation
    # p2 is in dr_a's care team (the role allows it) but outside the token's patient
    r = client.get("/fhir/Observation", params={"patient": "p2", "code": "8867-4"}, headers=h)
    assert r.status_code == 404
    e = _denial(client, "Observation")
    assert e.actor == "clinician:dr_a" and e.patient_id == "p2"
    assert "SMART scope missing: Observation." in e.detail and "patient context" in e.detail


def test_patient_observation_rs_cannot_create(oidc_world):
    client, idp = oidc_world
    h = bearer(tok(idp, "dr_a", scope=OBS_RS, patient="p1"))
    before = client.app.state.services.store.counts("p1")["observation"]
    r = client.post("/patients/p1/observations", json=OBS, headers=h)
    assert r.status_code == 403 and "Observation.c" in r.json()["detail"]
    assert 'insufficient_scope' in r.headers["www-authenticate"]
    e = _denial(client, "Observation")
    assert (e.actor, e.action, e.patient_id) == ("clinician:dr_a", "write", "p1")
    assert "SMART scope missing: Observation.c" in e.detail
    assert client.app.state.services.store.counts("p1")["observation"] == before


def test_fhir_create_needs_a_create_scope(oidc_world):
    client, idp = oidc_world
    r = client.post("/fhir/Observation", json=FHIR_OBS,
                    headers=bearer(tok(idp, "dr_a", scope=OBS_RS, patient="p1")))
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    r = client.post("/fhir/Observation", json=FHIR_OBS,
                    headers=bearer(tok(idp, "dr_a", scope="patient/Observation.c",
                                       patient="p1")))
    assert r.status_code == 201, r.text


def test_observation_scopes_reach_no_other_type_nor_the_whole_record(oidc_world):
    client, idp = oidc_world
    h = bearer(tok(idp, "dr_a", scope=OBS_RS, patient="p1"))
    assert client.get("/patients/p1", headers=h).status_code == 403       # Patient
    assert client.get("/fhir/Patient/p1", headers=h).status_code == 403
    assert client.get("/patients/p1/timeline", headers=h).status_code == 403  # every type
    assert client.get("/twins/p1", headers=h).status_code == 403
    assert client.get("/patients", headers=h).status_code == 403          # Patient search
    assert "Patient.s" in _denial(client, "patients").detail


def test_a_clinician_with_patient_scopes_cannot_see_other_patients_of_the_care_team(oidc_world):
    client, idp = oidc_world
    h = bearer(tok(idp, "dr_a", scope="launch/patient patient/*.rs", patient="p1"))
    assert client.get("/patients/p1", headers=h).status_code == 200
    assert client.get("/patients/p2", headers=h).status_code == 404
    assert client.get("/patients/p2/timeline", headers=h).status_code == 404
    listed = client.get("/patients", headers=h)
    assert listed.status_code == 200 and [p["id"] for p in listed.json()] == ["p1"]
    role_only = bearer(tok(idp, "dr_a", scope="user/*.rs"))
    assert sorted(p["id"] for p in client.get("/patients", headers=role_only).json()) == [
        "p1", "p2"]
    with pytest.raises(WebSocketDisconnect), client.websocket_connect(
            "/ws/patients/p2/readings", headers=h) as ws:
        ws.receive_json()


def test_live_readings_need_an_observation_read_scope(oidc_world):
    client, idp = oidc_world
    h = bearer(tok(idp, "dr_a", scope="patient/Patient.rs", patient="p1"))
    with pytest.raises(WebSocketDisconnect) as err, client.websocket_connect(
            "/ws/patients/p1/readings", headers=h) as ws:
        ws.receive_json()
    assert err.value.code == 1008
    e = _denial(client, "live-readings")
    assert e.actor == "clinician:dr_a" and "SMART scope missing: Observation.r" in e.detail
    ok = bearer(tok(idp, "dr_a", scope=OBS_RS, patient="p1"))
    with client.websocket_connect("/ws/patients/p1/readings", headers=ok):
        pass
    assert any(x.resource == "live-readings" and x.outcome == "success" for x in audit(client))


def test_patient_scopes_without_a_patient_context_grant_nothing(oidc_world):
    client, idp = oidc_world
    h = bearer(tok(idp, "dr_a", scope="patient/*.cruds"))  # no patient claim
    assert client.get("/patients/p1", headers=h).status_code == 404
    assert "launch patient" in _denial(client, "Patient").detail


def test_user_cruds_is_bounded_by_the_role(oidc_world):
    client, idp = oidc_world
    everything = "user/*.cruds"
    pat = bearer(tok(idp, "pat1", scope=everything))
    assert client.get("/patients/p1", headers=pat).status_code == 200
    assert client.post("/patients/p1/observations", json=OBS, headers=pat).status_code == 403
    assert client.get("/patients/p2", headers=pat).status_code == 404
    assert client.get("/users", headers=pat).status_code == 403
    dr_b = bearer(tok(idp, "dr_b", scope=everything))
    assert client.get("/patients/p1", headers=dr_b).status_code == 404  # not dr_b's team
    dr_a = bearer(tok(idp, "dr_a", scope=everything))
    assert client.post("/patients/p2/observations", json=OBS, headers=dr_a).status_code == 201


def test_a_token_with_no_resource_scope_reaches_nothing(oidc_world):
    client, idp = oidc_world
    h = bearer(tok(idp, "dr_a", scope="openid fhirUser"))
    assert client.get("/patients/p1", headers=h).status_code == 403
    assert client.get("/patients", headers=h).status_code == 403


def test_a_patient_user_external_token_uses_their_own_patient_as_context(oidc_world):
    client, idp = oidc_world
    h = bearer(tok(idp, "pat1", scope="patient/Observation.rs"))
    assert client.get("/fhir/Observation", params={"patient": "p1", "code": "8867-4"}, headers=h
                      ).status_code == 200
    assert client.get("/fhir/Observation", params={"patient": "p2", "code": "8867-4"}, headers=h
                      ).status_code == 404


def test_admin_resources_need_a_whole_record_scope(oidc_world):
    client, idp = oidc_world
    assert client.get("/users", headers=bearer(tok(idp, "root", scope="user/Patient.rs"))
                      ).status_code == 403
    assert client.get("/users", headers=bearer(tok(idp, "root", scope="user/*.rs"))
                      ).status_code == 200


# --- medtwin's own tokens ---------------------------------------------------------------
def _login(client, user, scope=None):
    data = {"username": user, "password": PASSWORD}
    if scope is not None:
        data["scope"] = scope
    return client.post("/auth/token", data=data)


def test_own_tokens_carry_the_granted_scopes_bounded_by_the_role(oidc_world):
    client, _ = oidc_world
    r = _login(client, "pat1", "patient/Observation.cruds patient/Patient.r")
    assert r.status_code == 200 and r.json()["scope"] == "patient/Observation.rs patient/Patient.r"
    h = bearer(r.json()["access_token"])
    assert client.get("/fhir/Observation", params={"patient": "p1", "code": "8867-4"}, headers=h
                      ).status_code == 200
    assert client.get("/patients/p1/timeline", headers=h).status_code == 403
    assert "SMART scope missing" in _denial(client, "timeline").detail
    # a refresh keeps the scopes
    fresh = client.post("/auth/refresh", json={"refresh_token": r.json()["refresh_token"]})
    assert fresh.status_code == 200 and fresh.json()["scope"] == r.json()["scope"]
    assert client.get("/patients/p1/timeline", headers=bearer(fresh.json()["access_token"])
                      ).status_code == 403


def test_own_tokens_without_scope_follow_the_role_alone(oidc_world):
    client, _ = oidc_world
    r = _login(client, "dr_a")
    assert r.json().get("scope") is None
    assert client.get("/patients/p2/timeline", headers=bearer(r.json()["access_token"])
                      ).status_code == 200


def test_a_malformed_scope_at_sign_in_is_422(oidc_world):
    client, _ = oidc_world
    r = _login(client, "dr_a", "user/Observation.sr")
    assert r.status_code == 422 and "cruds" in r.json()["detail"]


# --- discovery ----------------------------------------------------------------------------
def test_smart_configuration_without_a_provider_lists_only_the_password_endpoint(world):
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        r = world.client.get(path)
        assert r.status_code == 200, path
        doc = r.json()
        assert doc["token_endpoint"] == "http://testserver/auth/token"
        assert doc["grant_types_supported"] == ["password"]
        assert "permission-v2" in doc["capabilities"] and "launch-standalone" not in doc[
            "capabilities"]
        assert "patient/*.rs" in doc["scopes_supported"]
        for absent in ("authorization_endpoint", "code_challenge_methods_supported", "issuer"):
            assert absent not in doc
    # the password endpoint it names works, with a scope
    r = world.client.post(doc["token_endpoint"], data={
        "username": "pat1", "password": PASSWORD, "scope": "patient/*.rs"})
    assert r.status_code == 200 and r.json()["scope"] == "patient/*.rs"


def test_smart_configuration_with_a_provider_points_at_it(oidc_world):
    client, _ = oidc_world
    doc = client.get("/fhir/.well-known/smart-configuration").json()
    assert doc["issuer"] == "https://idp.example.test/realms/hospital"
    assert doc["authorization_endpoint"].endswith("/auth")
    assert doc["token_endpoint"].endswith("/token")
    assert doc["grant_types_supported"] == ["authorization_code"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["jwks_uri"].startswith("http://127.0.0.1:")
    assert {"launch-standalone", "context-standalone-patient", "permission-patient"} <= set(
        doc["capabilities"])
