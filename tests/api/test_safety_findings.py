"""Issue 12, findings 1-3 over REST, written as the tester attacked: a future-dated reading
must not silence NEWS2, units are normalised or refused, impossible values are refused, and
no writer can replace a stored reading through POST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.records import Observation
from medtwin.monitor.news2 import Risk, news2
from medtwin.monitor.vitals import latest_vitals
from medtwin.store.alerts import AlertStore

NOW = datetime.now(UTC).replace(microsecond=0)


def _post(world, role, body, pid="p1"):
    return world.client.post(f"/patients/{pid}/observations", headers=world.headers[role],
                             json=body)


def _vital(code, value, unit, when, sid=None):
    body = {"code": code, "value": value, "unit": unit, "time": when.isoformat()}
    if sid:
        body["source_id"] = sid
    return body


SICK = (("9279-1", 26, "/min"), ("59408-5", 88, "%"), ("8480-6", 88, "mm[Hg]"),
        ("8867-4", 135, "/min"), ("8310-5", 34.9, "Cel"))


def _score(world, pid="p1"):
    vitals, _ = latest_vitals(world.store, pid)
    return news2(vitals)


def test_a_heart_rate_dated_9999_is_quarantined_and_never_silences_news2(world):
    for code, value, unit in SICK:
        assert _post(world, "clinician", _vital(code, value, unit, NOW)).status_code == 201
    before = _score(world)
    assert before.risk is Risk.HIGH and before.total == 15
    r = _post(world, "device", _vital("8867-4", 60, "/min",
                                      datetime(9999, 1, 1, tzinfo=UTC), "hr-9999"))
    assert r.status_code == 201, r.text
    assert r.json()["quarantined"] == ["Observation/hr-9999"]
    after = _score(world)
    assert (after.total, after.risk) == (15, Risk.HIGH)  # not 0: the bad one is not "latest"
    # clinicians see it, flagged
    items = world.client.get("/patients/p1/timeline", headers=world.headers["clinician"]
                             ).json()["items"]
    (flagged,) = [i for i in items if i["source_id"] == "Observation/hr-9999"]
    assert flagged["quality"] == "future-dated"
    assert all(i["quality"] is None for i in items if i is not flagged)
    # a data-quality alert names the device
    (dq,) = [a for a in AlertStore(world.store).active("p1") if a.rule.startswith("data-q")]
    assert "cgm-1" in dq.message and dq.detail["device"] == "cgm-1"
    # a fresh good reading afterwards scores normally
    later = NOW + timedelta(minutes=1)
    assert _post(world, "device", _vital("8867-4", 72, "/min", later)).status_code == 201
    fresh = _score(world)
    assert fresh.points["pulse"] == 0 and fresh.total == 12


def test_clock_skew_within_the_tolerance_is_trusted(world):
    soon = datetime.now(UTC) + timedelta(minutes=2)
    r = _post(world, "clinician", _vital("8867-4", 131, "/min", soon))
    assert r.status_code == 201 and r.json()["quarantined"] == []
    assert _score(world).points["pulse"] == 3


def test_fahrenheit_is_stored_as_celsius_and_scores(world):
    r = _post(world, "clinician", _vital("8310-5", 104, "[degF]", NOW, "t-f"))
    assert r.status_code == 201, r.text
    (temp,) = world.store.timeline("p1", codes=["8310-5"])
    assert (temp.value, temp.unit) == (40.0, "Cel")
    assert _score(world).points["temperature"] == 2  # news2 works (it failed on 104 "Cel")


def test_a_unit_of_another_quantity_is_422_and_nothing_is_stored(world):
    before = world.store.timeline("p1")
    r = _post(world, "clinician", _vital("8310-5", 104, "kg", NOW))
    assert r.status_code == 422
    assert "kg is not a unit of body temperature; send Cel or [degF]" in r.json()["detail"]
    assert world.store.timeline("p1") == before


@pytest.mark.parametrize("value", [-5, 1e308, 301, 9.9])
def test_impossible_heart_rates_are_422_naming_the_field(world, value):
    before = world.store.timeline("p1", include_flagged=True)
    r = _post(world, "device", _vital("8867-4", value, "/min", NOW))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "body.value" in detail and "plausible range 10-300" in detail
    assert world.store.timeline("p1", include_flagged=True) == before


def test_nan_and_infinity_are_refused(world):
    for raw in ('NaN', 'Infinity', '-Infinity'):
        r = world.client.post("/patients/p1/observations", headers={
            **world.headers["device"], "Content-Type": "application/json"},
            content=f'{{"code": "8867-4", "unit": "/min", "time": "{NOW.isoformat()}", '
                    f'"value": {raw}}}')
        assert r.status_code == 422, (raw, r.text)


def test_a_device_key_cannot_replace_an_imported_reading(world):
    # the seeded Observation/p1-0 is an imported HR 60
    r = _post(world, "device", _vital("8867-4", 250, "/min", NOW, "p1-0"))
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "Observation/p1-0" in detail and "history" in detail
    (hr,) = [o for o in world.store.timeline("p1") if o.source_id == "Observation/p1-0"]
    assert hr.value == 60.0


def test_a_cgm_reading_cannot_take_over_an_heart_rate_id(world):
    r = _post(world, "device", _vital("99504-3", 120, "mg/dL",
                                      datetime(2020, 1, 1, tzinfo=UTC), "p1-1"))
    assert r.status_code == 409
    assert "code '8867-4'" in r.json()["detail"]
    (hr,) = [o for o in world.store.timeline("p1") if o.source_id == "Observation/p1-1"]
    assert (hr.code, hr.value, hr.time.year) == ("8867-4", 61.0, 2024)


def test_a_clinician_post_never_amends_and_a_resend_is_a_duplicate(world):
    body = _vital("8867-4", 80, "/min", NOW, "mine")
    assert _post(world, "clinician", body).json()["stored"] == 1
    again = _post(world, "clinician", body)
    assert again.status_code == 201 and again.json()["duplicates"] == 1  # a retry is fine
    changed = _post(world, "clinician", {**body, "value": 81})
    assert changed.status_code == 409
    assert "Observation/mine" in changed.json()["detail"]
    hist = world.client.get("/patients/p1/observations/Observation/mine/history",
                            headers=world.headers["clinician"]).json()
    assert [v["value"] for v in hist["versions"]] == [80.0]


def test_another_patients_record_id_is_refused_without_naming_the_patient(world):
    r = _post(world, "clinician", _vital("8867-4", 70, "/min", NOW, "p2-0"))
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert "another patient" in detail and "'p2'" not in detail


def test_history_shows_both_versions_after_an_importer_amend(world):
    sid = "Observation/p1-2"
    amended = Observation(subject="p1", code="8867-4", time=NOW - timedelta(hours=1),
                          value=64.0, unit="/min", source_id=sid, status="amended")
    world.store.append(records=[amended], may_amend=True)  # the EHR import's writer
    r = world.client.get(f"/patients/p1/observations/{sid}/history",
                         headers=world.headers["clinician"])
    assert r.status_code == 200, r.text
    versions = r.json()["versions"]
    assert [(v["version"], v["value"], v["status"]) for v in versions] == [
        (1, 62.0, "final"), (2, 64.0, "amended")]
    assert any(e.resource == "history" and e.patient_id == "p1" for e in world.audit())
    hidden = world.client.get(f"/patients/p2/observations/{sid}/history",
                              headers=world.headers["clinician"])
    assert hidden.status_code in (403, 404)
    missing = world.client.get("/patients/p1/observations/Observation/none/history",
                               headers=world.headers["clinician"])
    assert missing.status_code == 404


def test_timeline_pages_follow_the_cursor_without_overlap(world):
    for i in range(23):
        _post(world, "clinician", _vital("8867-4", 70 + i % 5, "/min",
                                         NOW - timedelta(minutes=30 - i // 2)))
    whole = world.store.timeline_entries("p1")
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = world.client.get("/patients/p1/timeline", headers=world.headers["clinician"],
                                params=params).json()
        assert page["count"] == len(page["items"]) <= 7
        seen += page["items"]
        pages += 1
        cursor = page.get("next")
        if not cursor:
            break
    assert pages == -(-len(whole) // 7)
    assert [i["source_id"] for i in seen] == [r["source_id"] for r in whole]
    bad = world.client.get("/patients/p1/timeline", headers=world.headers["clinician"],
                           params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422
    too_big = world.client.get("/patients/p1/timeline", headers=world.headers["clinician"],
                               params={"limit": 10_001})
    assert too_big.status_code == 422
