"""Issue 12 findings 8, 9 and 11, as the attacks were: the sockpuppet patient-user, the alert
probe, refresh-token reuse, no logout, weak passwords, WebSocket tokens and denials, and the
unaudited dose 409."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.websockets import WebSocketDisconnect
from tests.api.conftest import login

from medtwin.api.limits import install_token_redaction
from medtwin.core.errors import ValidationError
from medtwin.store.alerts import AlertStore

STRONG = "violet anchor marmalade"
GLASS = {"X-Break-Glass-Reason": "unconscious patient, identity needed in ED"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sockpuppet(world, name: str = "sock", headers: dict | None = None):
    return world.client.post("/users", json={
        "username": name, "role": "patient", "password": STRONG, "patient_id": "p2"},
        headers={**world.headers["admin"], **(headers or {})})


# --- finding 8: an admin cannot grant themselves a patient by creating a user ---------------
def test_the_sockpuppet_patient_user_reads_nothing(world):
    made = _sockpuppet(world)
    assert made.status_code == 201, made.text
    assert made.json()["patient_id"] is None and made.json()["pending_binding"]
    token = login(world.client, "sock", STRONG).json()["access_token"]
    for path in ("/patients/p2", "/patients/p2/timeline", "/alerts?patient=p2"):
        assert world.client.get(path, headers=_bearer(token)).status_code == 404, path
    create = [e for e in world.audit() if e.action == "create" and e.resource == "user:sock"]
    assert len(create) == 1 and create[0].patient_id == "p2"
    assert "second admin" in create[0].detail
    denied = [e for e in world.audit() if e.actor == "patient:sock" and e.outcome == "denied"]
    assert denied and all(e.patient_id == "p2" for e in denied if e.patient_id)


def test_a_binding_needs_a_second_independent_admin(world):
    binding = _sockpuppet(world).json()["pending_binding"]
    listed = world.client.get("/users/bindings", headers=world.headers["admin"]).json()
    assert [b["id"] for b in listed] == [binding] and listed[0]["patient_id"] == "p2"
    approve = f"/users/bindings/{binding}/approve"
    own = world.client.post(approve, headers=world.headers["admin"])
    assert own.status_code == 403 and "second admin" in own.json()["detail"]
    # a second admin the requester created is a sockpuppet too
    assert world.client.post("/users", json={"username": "root2", "role": "admin",
                                             "password": STRONG},
                             headers=world.headers["admin"]).status_code == 201
    puppet = login(world.client, "root2", STRONG).json()["access_token"]
    assert world.client.post(approve, headers=_bearer(puppet)).status_code == 403
    refusals = [e for e in world.audit() if e.action == "approve" and e.outcome == "denied"]
    assert len(refusals) == 2 and {e.patient_id for e in refusals} == {"p2"}
    # an independent admin (created by the operator) may approve; then the binding holds
    world.client.app.state.services.directory.add_user("root3", "admin", STRONG)
    other = login(world.client, "root3", STRONG).json()["access_token"]
    ok = world.client.post(approve, headers=_bearer(other))
    assert ok.status_code == 200 and ok.json()["patient_id"] == "p2"
    assert any(e.action == "approve" and e.outcome == "success" and e.patient_id == "p2"
               for e in world.audit())
    assert world.client.post(approve, headers=_bearer(other)).status_code == 403  # once only
    token = login(world.client, "sock", STRONG).json()["access_token"]
    assert world.client.get("/patients/p2", headers=_bearer(token)).status_code == 200


def test_an_admin_cannot_approve_through_an_admin_it_created(world):
    """Review finding: root creates admin 'puppet'; puppet requests the binding and root
    approves it. The requester's creator is not a second admin."""
    assert world.client.post("/users", json={"username": "puppet", "role": "admin",
                                             "password": STRONG},
                             headers=world.headers["admin"]).status_code == 201
    puppet = _bearer(login(world.client, "puppet", STRONG).json()["access_token"])
    made = world.client.post("/users", json={"username": "sock2", "role": "patient",
                                             "password": STRONG, "patient_id": "p2"},
                             headers=puppet)
    binding = made.json()["pending_binding"]
    r = world.client.post(f"/users/bindings/{binding}/approve", headers=world.headers["admin"])
    assert r.status_code == 403 and "independent" in r.json()["detail"]
    token = login(world.client, "sock2", STRONG).json()["access_token"]
    assert world.client.get("/patients/p2", headers=_bearer(token)).status_code == 404


def test_break_glass_binds_at_once_and_is_audited(world):
    made = _sockpuppet(world, "er-patient", GLASS)
    assert made.status_code == 201 and made.json()["patient_id"] == "p2"
    assert made.json()["pending_binding"] is None
    entry = next(e for e in world.audit() if e.resource == "user:er-patient")
    assert entry.patient_id == "p2" and entry.detail.startswith("break-glass: unconscious")


def test_a_sockpuppet_clinician_gets_no_patients_from_its_creator(world):
    c, admin = world.client, world.headers["admin"]
    assert c.post("/users", json={"username": "mole", "role": "clinician", "password": STRONG},
                  headers=admin).status_code == 201
    joined = c.post("/care-teams/ward-b/members", json={"username": "mole"}, headers=admin)
    assert joined.status_code == 403 and "another admin" in joined.json()["detail"]
    token = login(c, "mole", STRONG).json()["access_token"]
    assert c.get("/patients/p2", headers=_bearer(token)).status_code == 404
    # another admin puts mole in an empty team; its creator cannot then add patients to it
    c.app.state.services.directory.add_user("root3", "admin", STRONG)
    other = _bearer(login(c, "root3", STRONG).json()["access_token"])
    assert c.post("/care-teams/t-mole/members", json={"username": "mole"},
                  headers=other).status_code == 204
    fed = c.post("/care-teams/t-mole/patients", json={"patient_id": "p2"}, headers=admin)
    assert fed.status_code == 403
    assert c.get("/patients/p2", headers=_bearer(token)).status_code == 404
    assert any(e.action == "update" and e.outcome == "denied" and e.patient_id == "p2"
               for e in world.audit())
    glass = c.post("/care-teams/t-mole/patients", json={"patient_id": "p2"},
                   headers={**admin, **GLASS})  # an emergency: allowed, and audited as such
    assert glass.status_code == 204
    assert c.get("/patients/p2", headers=_bearer(token)).status_code == 200
    granted = next(e for e in reversed(world.audit()) if e.action == "update")
    assert granted.outcome == "success" and granted.detail.startswith("break-glass: unconsc")


# --- finding 9: the alert probe -----------------------------------------------------------
def test_an_alert_id_reveals_nothing_about_its_patient(world):
    hidden = AlertStore(world.store).raise_alert("p2", "spo2-low", 2, "spo2 85 < 90", {}, None)
    missing = hidden.id + 1000
    c, h = world.client, world.headers["clinician"]
    a = c.post(f"/alerts/{hidden.id}/acknowledge", headers=h)
    b = c.post(f"/alerts/{missing}/acknowledge", headers=h)
    assert a.status_code == b.status_code == 404
    assert a.json()["detail"] == f"no alert {hidden.id}"
    assert a.json() == {**b.json(), "detail": b.json()["detail"].replace(str(missing),
                                                                         str(hidden.id))}
    assert "p2" not in a.text
    assert any(e.outcome == "denied" and e.patient_id == "p2" and e.actor == "clinician:dr_a"
               for e in world.audit())
    assert AlertStore(world.store).get(hidden.id).acknowledged_by is None


@pytest.mark.parametrize("alert_id", [2**63, 2**64, 10**30, 0, -1])
def test_huge_or_impossible_alert_ids_are_refused_not_500(world, alert_id):
    r = world.client.post(f"/alerts/{alert_id}/acknowledge", headers=world.headers["clinician"])
    assert r.status_code in (404, 422), r.text


def test_an_admin_without_break_glass_is_refused_before_the_lookup(world):
    hidden = AlertStore(world.store).raise_alert("p2", "news2", 3, "NEWS2 8", {}, None)
    there = world.client.post(f"/alerts/{hidden.id}/acknowledge", headers=world.headers["admin"])
    absent = world.client.post("/alerts/99999/acknowledge", headers=world.headers["admin"])
    assert there.status_code == absent.status_code == 403
    assert there.json() == absent.json()


# --- finding 11: refresh tokens, logout, passwords, WebSocket, dose 409 ----------------------
def test_a_reused_refresh_token_ends_the_whole_session(world):
    c = world.client
    first = login(c, "dr_a").json()
    second = c.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    stolen = c.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert stolen.status_code == 401 and "already used" in stolen.json()["detail"]
    # the thief and the victim are both out: every token of the session stops
    assert c.post("/auth/refresh", json={
        "refresh_token": second.json()["refresh_token"]}).status_code == 401
    assert c.get("/patients/p1", headers=_bearer(second.json()["access_token"])
                 ).status_code == 401
    assert c.get("/patients/p1", headers=_bearer(first["access_token"])).status_code == 401
    reuse = [e for e in world.audit() if e.action == "refresh" and e.outcome == "denied"]
    assert reuse[0].actor == "clinician:dr_a" and "reused" in reuse[0].detail
    assert login(c, "dr_a").status_code == 200  # signing in again starts a new session


def test_parallel_refreshes_with_one_token_succeed_once(world):
    token = login(world.client, "dr_a").json()["refresh_token"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda _: world.client.post(
            "/auth/refresh", json={"refresh_token": token}).status_code, range(8)))
    assert codes.count(200) == 1 and codes.count(401) == 7


def test_logout_revokes_the_session(world):
    c = world.client
    tokens = login(c, "dr_a").json()
    h = _bearer(tokens["access_token"])
    assert c.get("/patients/p1", headers=h).status_code == 200
    assert c.post("/auth/logout", headers=h).status_code == 204
    assert c.get("/patients/p1", headers=h).status_code == 401
    assert c.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
                  ).status_code == 401
    other = login(c, "dr_a").json()  # with only the refresh token (access token expired)
    assert c.post("/auth/logout", json={"refresh_token": other["refresh_token"]}
                  ).status_code == 204
    assert c.get("/patients/p1", headers=_bearer(other["access_token"])).status_code == 401
    assert c.post("/auth/logout").status_code == 401
    outs = [e for e in world.audit() if e.action == "logout"]
    assert [e.actor for e in outs if e.outcome == "success"] == ["clinician:dr_a"] * 2
    # another session of the same user is unaffected
    assert c.get("/patients/p1", headers=world.headers["clinician"]).status_code == 200


@pytest.mark.parametrize(("password", "reason"), [
    ("password12", "very common password"), (" " * 10, "cannot be only spaces"),
    ("1234567890", "common password"), ("qwertyuiop", "common password"),
    ("short", "at least 10 characters")])
def test_weak_passwords_are_refused_with_the_reason(world, password, reason):
    r = world.client.post("/users", json={"username": "newbie", "role": "clinician",
                                          "password": password},
                          headers=world.headers["admin"])
    assert r.status_code == 422
    assert reason in r.text
    assert world.client.app.state.services.directory.find("newbie") is None
    with pytest.raises(ValidationError, match="password"):
        world.client.app.state.services.directory.add_user("newbie", "clinician", password)


def test_a_password_built_from_the_user_name_is_refused(world):
    with pytest.raises(ValidationError, match="easy to guess"):
        world.client.app.state.services.directory.add_user("margaretha", "clinician",
                                                           "margaretha1")
    assert world.client.app.state.services.directory.add_user(
        "margaretha", "clinician", STRONG).username == "margaretha"


def _access(world, who: str) -> str:
    return world.headers[who]["Authorization"].split()[1]


def test_the_websocket_takes_the_token_as_a_subprotocol(world):
    protocols = ["medtwin.live", f"bearer.{_access(world, 'clinician')}"]
    with world.client.websocket_connect("/ws/patients/p1/readings",
                                        subprotocols=protocols) as ws:
        assert ws.accepted_subprotocol == "medtwin.live"  # the token is never echoed
        world.client.post("/patients/p1/observations", headers=world.headers["device"], json={
            "code": "8867-4", "time": "2024-03-01T10:00:00Z", "value": 88, "unit": "/min"})
        assert ws.receive_json()["type"] == "reading"


def test_a_token_in_the_websocket_url_is_refused(world):
    token = _access(world, "clinician")  # valid, but in the URL (and so in access logs)
    with pytest.raises(WebSocketDisconnect) as err, world.client.websocket_connect(
            f"/ws/patients/p1/readings?token={token}") as ws:
        ws.receive_json()
    assert err.value.code == 1008
    last = world.audit()[-1]
    assert last.outcome == "denied" and "URL" in last.detail and token not in last.detail


def test_websocket_denials_name_the_signed_in_caller(world):
    with pytest.raises(WebSocketDisconnect), world.client.websocket_connect(
            "/ws/patients/p2/readings", headers=world.headers["clinician"]) as ws:
        ws.receive_json()
    last = world.audit()[-1]
    assert (last.actor, last.outcome, last.patient_id) == ("clinician:dr_a", "denied", "p2")
    assert last.source == "testclient"


def test_tokens_in_uvicorn_log_lines_are_redacted(caplog):
    install_token_redaction()
    log = logging.getLogger("uvicorn.error")
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        log.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000",
                 "/ws/patients/p1/readings?token=eyJhbGciOi.secret.sig&x=1")
    assert "eyJhbGciOi" not in caplog.text and "token=[redacted]&x=1" in caplog.text


def test_a_dose_request_without_data_is_audited(world):
    r = world.client.get("/twins/p1/dose", headers=world.headers["clinician"])
    assert r.status_code == 409
    last = world.audit()[-1]
    assert (last.actor, last.resource, last.outcome, last.patient_id) == (
        "clinician:dr_a", "dose", "not-ready", "p1")


def test_an_open_live_feed_ends_when_its_session_ends(world, monkeypatch):
    """Review of issue 12: a WebSocket opened before a logout kept streaming the patient's
    readings. The feed re-checks its caller's access and closes once the session is over."""
    import threading

    from medtwin.api.routes import live

    monkeypatch.setattr(live, "RECHECK_SECONDS", 0.1)
    token = _access(world, "clinician")
    closed = threading.Event()
    with world.client.websocket_connect("/ws/patients/p1/readings",
                                        headers=_bearer(token)) as ws:
        assert world.client.post("/auth/logout", headers=_bearer(token)).status_code == 204

        def wait_close() -> None:
            try:
                while True:
                    ws.receive_json()
            except WebSocketDisconnect as exc:
                if exc.code == 1008:
                    closed.set()

        reader = threading.Thread(target=wait_close, daemon=True)
        reader.start()
        assert closed.wait(10), "the feed kept running after the logout"
    ended = [e for e in world.audit() if e.outcome == "ended"]
    assert ended and ended[-1].actor == "clinician:dr_a" and ended[-1].patient_id == "p1"
