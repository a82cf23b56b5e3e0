"""Tokens: forged, expired, of a disabled user, refreshed; login rate limiting."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
from tests.api.conftest import PASSWORD, login


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _claims(world) -> dict:
    token = world.headers["clinician"]["Authorization"].split()[1]
    return jwt.decode(token, options={"verify_signature": False})


def test_no_token_and_garbage_are_refused_and_audited(world):
    assert world.client.get("/health").status_code == 200  # the one open endpoint
    r = world.client.get("/patients/p1")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert world.audit()[-1].action == "authenticate" and world.audit()[-1].outcome == "denied"
    assert world.client.get("/patients/p1", headers=_bearer("not-a-jwt")).status_code == 401


def test_forged_tokens_are_refused(world):
    claims = _claims(world)
    forged = jwt.encode(claims, "x" * 40, algorithm="HS256")  # another secret
    assert world.client.get("/patients/p1", headers=_bearer(forged)).status_code == 401
    head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = base64.urlsafe_b64encode(json.dumps({**claims, "role": "admin"}).encode())
    none_alg = f"{head.decode().rstrip('=')}.{body.decode().rstrip('=')}."
    assert world.client.get("/patients/p1", headers=_bearer(none_alg)).status_code == 401
    parts = world.headers["clinician"]["Authorization"].split()[1].split(".")
    tampered = ".".join([parts[0], body.decode().rstrip("="), parts[2]])
    assert world.client.get("/patients/p1", headers=_bearer(tampered)).status_code == 401


def test_expired_token_is_refused(world):
    svc = world.client.app.state.services
    user = svc.directory.find("dr_a")
    old = svc.tokens.issue(user.id, "clinician", user.token_version,
                           now=datetime.now(UTC) - timedelta(hours=2))
    r = world.client.get("/patients/p1", headers=_bearer(old))
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_refresh_token_is_not_an_access_token_and_refresh_works(world):
    r = login(world.client, "dr_a").json()
    assert world.client.get("/patients/p1", headers=_bearer(r["refresh_token"])).status_code \
        == 401
    new = world.client.post("/auth/refresh", json={"refresh_token": r["refresh_token"]})
    assert new.status_code == 200
    assert world.client.get("/patients/p1",
                            headers=_bearer(new.json()["access_token"])).status_code == 200
    bad = world.client.post("/auth/refresh", json={"refresh_token": r["access_token"]})
    assert bad.status_code == 401


def test_disabled_user_tokens_stop_at_once(world):
    tokens = login(world.client, "dr_a").json()
    h = _bearer(tokens["access_token"])
    assert world.client.get("/patients/p1", headers=h).status_code == 200
    r = world.client.post("/users/dr_a/disable", headers=world.headers["admin"])
    assert r.status_code == 200 and r.json()["disabled"]
    assert world.client.get("/patients/p1", headers=h).status_code == 401
    assert world.client.post("/auth/refresh", json={
        "refresh_token": tokens["refresh_token"]}).status_code == 401
    assert login(world.client, "dr_a").status_code == 401


def test_revoked_and_forged_device_keys_are_refused(world):
    svc = world.client.app.state.services
    key_id = world.device_key.split("_")[1]
    forged = f"mtk_{key_id}_{'A' * 43}"
    obs = {"code": "8867-4", "time": "2024-03-01T09:00:00Z", "value": 72, "unit": "/min"}
    assert world.client.post("/patients/p1/observations", json=obs,
                             headers=_bearer(forged)).status_code == 401
    svc.directory.revoke_device_key(key_id)
    assert world.client.post("/patients/p1/observations", json=obs,
                             headers=world.headers["device"]).status_code == 401


def test_login_is_rate_limited(world):
    codes = [login(world.client, "res", "wrong password!").status_code for _ in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    r = login(world.client, "res", PASSWORD)  # even the right password waits
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    outcomes = [e.outcome for e in world.audit() if e.action == "login"]
    assert outcomes.count("failure") == 5
    refused = [e for e in world.audit() if e.action == "authenticate"
               and "login refused" in (e.detail or "")]
    assert [e.outcome for e in refused] == ["denied"]  # the first at once, then aggregated
    assert login(world.client, "dr_a").status_code == 200  # other users are not locked out
