"""Durable jobs over HTTP: queue, follow, cancel, fetch; the same answers from any worker."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient


def _wait(client: TestClient, job: str, headers: dict, until: set[str], timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job}", headers=headers).json()
        if body["status"] in until:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job} is still {body['status']}")


def test_ops_job_from_submit_to_result(world):
    h = world.headers["researcher"]
    r = world.client.post("/jobs/ops", json={"model": "mm1", "reps": 3, "seed": 2}, headers=h)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "ops" and job["status"] in {"queued", "running"}
    assert world.client.get(f"/jobs/{job['id']}/result", headers=h).status_code in (200, 409)
    done = _wait(world.client, job["id"], h, {"done", "failed"})
    assert done["status"] == "done" and done["progress"] == 1.0 and done["attempts"] == 1
    res = world.client.get(f"/jobs/{job['id']}/result", headers=h).json()
    assert [row["rep"] for row in res["result"]["per_rep"]] == [0, 1, 2]
    assert any(j["id"] == job["id"] for j in world.client.get("/jobs", headers=h).json())
    # another user sees no such job, an admin does
    other = world.headers["clinician"]
    assert world.client.get(f"/jobs/{job['id']}", headers=other).status_code == 404
    assert all(j["id"] != job["id"] for j in world.client.get("/jobs", headers=other).json())
    assert world.client.get(f"/jobs/{job['id']}", headers=world.headers["admin"]).status_code \
        == 200
    actions = [(e.action, e.resource) for e in world.audit()]
    assert ("create", f"job:{job['id']}") in actions


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/jobs/ops", {"model": "no-such-model"}, "model"),
    ("/jobs/ops", {"model": "mm1", "reps": 1}, "reps"),
    ("/jobs/ops", {"model": "mm1", "colour": "red"}, "colour"),
    ("/jobs/ops-optimise", {"model": "mm1", "target": "nonsense"}, "target"),
    ("/jobs/pk-population", {"model": "theophylline-nlme", "data_csv": "a,b\n1"}, "data_csv"),
])
def test_bad_job_requests_are_422_and_queue_nothing(world, path, body, field):
    h = world.headers["researcher"]
    r = world.client.post(path, json=body, headers=h)
    assert r.status_code in (404, 422), r.text
    assert field in r.text
    assert world.client.get("/jobs", headers=h).json() == []


def test_patients_and_devices_cannot_queue_jobs(world):
    for who in ("patient", "device"):
        r = world.client.post("/jobs/ops", json={"model": "mm1"}, headers=world.headers[who])
        assert r.status_code == 403


def test_cancel_a_running_job(world):
    h = world.headers["researcher"]
    job = world.client.post("/jobs/ops", json={"model": "nelson", "reps": 200},
                            headers=h).json()
    _wait(world.client, job["id"], h, {"running"})
    r = world.client.delete(f"/jobs/{job['id']}", headers=h)
    assert r.status_code == 202
    end = _wait(world.client, job["id"], h, {"cancelled", "done", "failed"})
    assert end["status"] == "cancelled"
    assert world.client.get(f"/jobs/{job['id']}/result", headers=h).status_code == 409


CARDIO = {"scenario": "beta-blocker", "subjects": 3, "duration": 15.0, "warmup": 5.0, "seed": 1}


def test_cardio_trial_job_from_submit_to_result(world):
    h = world.headers["researcher"]
    r = world.client.post("/jobs/cardio-trial", json=CARDIO, headers=h)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "cardio-trial"
    done = _wait(world.client, job["id"], h, {"done", "failed"})
    assert done["status"] == "done", done["error"]
    res = world.client.get(f"/jobs/{job['id']}/result", headers=h).json()["result"]
    assert res["meta"]["scenario"] == "beta-blocker" and len(res["rows"]) == 6
    hr = {e["output"]: e for e in res["effects"]}["HR"]
    assert hr["ci_low"] < hr["difference"] < hr["ci_high"] < 0
    # clinicians may run one too; patients and devices may not
    clin = world.client.post("/jobs/cardio-trial", json={**CARDIO, "subjects": 1},
                             headers=world.headers["clinician"])
    assert clin.status_code == 202, clin.text
    for who in ("patient", "device"):
        assert world.client.post("/jobs/cardio-trial", json=CARDIO,
                                 headers=world.headers[who]).status_code == 403


@pytest.mark.parametrize(("change", "field"), [
    ({"colour": "red"}, "colour"),
    ({"subjects": 0}, "subjects"),
    ({"subjects": 31}, "subjects"),  # over the server's trial_max_subjects
    ({"subjects": "many"}, "subjects"),
    ({"duration": 0}, "duration"),
    ({"duration": 3600}, "duration"),  # over the server's limit
    ({"warmup": -5}, "warmup"),
    ({"scenario": "aspirin"}, "scenario"),
    ({"scenario": "baseline"}, "scenario"),
    ({"scenario": "beta blocker; drop"}, "scenario"),
    ({"cv": {"R_sys [mmHg*s/mL]": 1.5}}, "cv"),
    ({"cv": {"no such parameter": 0.1}}, "cv"),
    ({"seed": -1}, "seed"),
])
def test_bad_cardio_trial_requests_are_422_naming_the_field(world, change, field):
    h = world.headers["researcher"]
    r = world.client.post("/jobs/cardio-trial", json={**CARDIO, **change}, headers=h)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert world.client.get("/jobs", headers=h).json() == []


def test_a_cardio_trial_without_subjects_or_scenario_is_422(world):
    h = world.headers["researcher"]
    for missing in ("subjects", "scenario"):
        body = {k: v for k, v in CARDIO.items() if k != missing}
        r = world.client.post("/jobs/cardio-trial", json=body, headers=h)
        assert r.status_code == 422 and missing in r.text, r.text
