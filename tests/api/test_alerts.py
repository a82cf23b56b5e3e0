"""Alerts through the API: each caller sees only alerts of patients they may see;
acknowledging is a write to the patient's record, checked and audited."""

from __future__ import annotations

from medtwin.store.alerts import AlertStore

T = "2024-03-01T09:00:00+00:00"


def _raise(world):
    alerts = AlertStore(world.store)
    a1 = alerts.raise_alert("p1", "news2", 3, "NEWS2 8: high risk", {"total": 8}, None)
    a2 = alerts.raise_alert("p2", "spo2-low", 2, "spo2 85 < 90", {"value": 85}, None)
    return a1, a2


def test_each_role_sees_only_its_patients_alerts(world):
    a1, a2 = _raise(world)
    c = world.client
    got = c.get("/alerts", headers=world.headers["clinician"])  # dr_a: ward-a = p1
    assert got.status_code == 200 and [a["id"] for a in got.json()] == [a1.id]
    assert [a["id"] for a in c.get("/alerts", headers=world.headers["patient"]).json()] == [
        a1.id]
    assert c.get("/alerts", headers=world.headers["researcher"]).status_code == 403
    assert c.get("/alerts?patient=p2", headers=world.headers["clinician"]).status_code == 404
    assert c.get("/alerts").status_code == 401
    one = c.get("/alerts?patient=p1", headers=world.headers["clinician"]).json()
    assert one[0]["severity"] == 3 and one[0]["rule"] == "news2"


def test_acknowledge_is_checked_and_audited(world):
    a1, a2 = _raise(world)
    c = world.client
    denied = c.post(f"/alerts/{a2.id}/acknowledge", headers=world.headers["clinician"])
    assert denied.status_code == 404  # p2 is not in dr_a's care: not even its existence
    ok = c.post(f"/alerts/{a1.id}/acknowledge", headers=world.headers["clinician"])
    assert ok.status_code == 200 and ok.json()["acknowledged_by"] == "dr_a"
    assert c.post("/alerts/999/acknowledge", headers=world.headers["clinician"]).status_code == 404
    entries = world.audit()
    assert any(e.resource == "alert" and e.patient_id == "p1" and e.outcome == "success"
               for e in entries)
    assert any(e.patient_id == "p2" and e.outcome == "denied" for e in entries)
    assert AlertStore(world.store).get(a2.id).acknowledged_by is None
