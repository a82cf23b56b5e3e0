"""The WebSocket feed of a patient's readings, and background trial jobs."""

from __future__ import annotations

import time

import pytest
from starlette.websockets import WebSocketDisconnect

OBS = {"code": "8867-4", "time": "2024-03-01T10:00:00Z", "value": 99, "unit": "/min"}


def test_websocket_pushes_new_readings_to_the_care_team(world):
    h = world.headers["clinician"]
    with world.client.websocket_connect("/ws/patients/p1/readings", headers=h) as ws:
        r = world.client.post("/patients/p1/observations", json=OBS,
                              headers=world.headers["device"])
        assert r.status_code == 201
        msg = ws.receive_json()
    assert msg["type"] == "reading" and msg["observation"]["value"] == 99.0
    assert any(e.resource == "live-readings" and e.outcome == "success" for e in world.audit())


def test_websocket_pushes_new_alerts_of_the_patient_only(world):
    from medtwin.store.alerts import AlertStore

    alerts = AlertStore(world.store)
    h = world.headers["clinician"]
    with world.client.websocket_connect("/ws/patients/p1/readings", headers=h) as ws:
        alerts.raise_alert("p2", "news2", 3, "NEWS2 9: high risk", {}, None)  # not p1's
        mine = alerts.raise_alert("p1", "spo2-low", 2, "spo2 85 < 90", {"value": 85}, None)
        msg = ws.receive_json()
    assert msg["type"] == "alert" and msg["alert"]["id"] == mine.id
    assert msg["alert"]["patient"] == "p1" and msg["alert"]["severity"] == 2


@pytest.mark.parametrize(("who", "actor"), [("researcher", "researcher:res"),
                                             ("device", "device:cgm-1"), (None, "anonymous")])
def test_websocket_refuses_others(world, who, actor):
    token = world.headers[who]["Authorization"].split()[1] if who else "forged"
    with pytest.raises(WebSocketDisconnect) as err, world.client.websocket_connect(
            "/ws/patients/p1/readings", subprotocols=["medtwin.live", f"bearer.{token}"]) as ws:
        ws.receive_json()
    assert err.value.code == 1008
    assert (world.audit()[-1].outcome, world.audit()[-1].actor) == ("denied", actor)


def test_trial_job_runs_in_the_background(world):
    h = world.headers["researcher"]
    r = world.client.post("/trials", json={"subjects": "adult#001", "days": 0.25,
                                           "controller": "basal-bolus"}, headers=h)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert world.client.get(f"/trials/{job}", headers=world.headers["clinician"]
                            ).status_code == 404  # only its submitter (or an admin)
    deadline = time.monotonic() + 60
    while (status := world.client.get(f"/trials/{job}", headers=h).json()["status"]) in {
            "queued", "running"} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == "done"
    result = world.client.get(f"/trials/{job}/result", headers=h).json()
    assert len(result["rows"]) == 1 and result["rows"][0]["mean [mg/dL]"] > 40
    bad = world.client.post("/trials", json={"controller": "nope"}, headers=h)
    assert bad.status_code == 422 and "nope" in bad.json()["detail"]
    assert world.client.post("/trials", json={}, headers=world.headers["patient"]
                             ).status_code == 403
