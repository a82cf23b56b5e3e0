"""Issue 12, finding 12: no 5xx from any input — times at the ends of the calendar, ids beyond
int64, NUL bytes — each request written as the tester sent it."""

from __future__ import annotations

import pytest

OVERFLOWING = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")
EDGE_TIMES = (*OVERFLOWING, "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z")


@pytest.mark.parametrize("when", OVERFLOWING)
def test_observation_time_beyond_utc_is_refused_not_500(world, when):
    before = world.store.timeline("p1")
    r = world.client.post("/patients/p1/observations", headers=world.headers["clinician"],
                          json={"code": "8867-4", "time": when, "value": 70, "unit": "/min"})
    assert r.status_code == 422, r.text
    assert "time" in r.json()["detail"]
    assert world.store.timeline("p1") == before  # nothing stored


@pytest.mark.parametrize("when", EDGE_TIMES)
def test_observation_time_at_the_ends_of_the_calendar_never_500(world, when):
    r = world.client.post("/patients/p1/observations", headers=world.headers["clinician"],
                          json={"code": "8867-4", "time": when, "value": 70, "unit": "/min"})
    assert r.status_code < 500, r.text


@pytest.mark.parametrize("when", EDGE_TIMES)
@pytest.mark.parametrize("name", ["since", "until"])
def test_timeline_bounds_at_the_ends_of_the_calendar_never_500(world, when, name):
    r = world.client.get("/patients/p1/timeline", headers=world.headers["clinician"],
                         params={name: when})
    assert r.status_code in (200, 422), r.text


@pytest.mark.parametrize("alert_id", ["9223372036854775808", "99999999999999999999999",
                                      "-9223372036854775809"])
def test_alert_id_beyond_int64_is_not_found_not_500(world, alert_id):
    r = world.client.post(f"/alerts/{alert_id}/acknowledge", headers=world.headers["clinician"])
    assert r.status_code in (404, 422), r.text


@pytest.mark.parametrize("field", ["unit", "code", "display", "source_id"])
def test_nul_bytes_in_text_are_refused_with_the_field_named(world, field):
    body = {"code": "8867-4", "time": "2024-03-01T09:00:00Z", "value": 70, "unit": "/min",
            field: "a\u0000b"}
    before = world.store.timeline("p1")
    r = world.client.post("/patients/p1/observations", headers=world.headers["clinician"],
                          json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    assert world.store.timeline("p1") == before


@pytest.mark.parametrize("when", OVERFLOWING)
def test_a_forged_timeline_cursor_at_the_ends_of_the_calendar_is_422(world, when):
    import base64
    import json

    token = base64.urlsafe_b64encode(json.dumps([when, 1]).encode()).decode().rstrip("=")
    r = world.client.get("/patients/p1/timeline", headers=world.headers["clinician"],
                         params={"cursor": token})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("date", ["ge0001-01-01T00:00:00+14:00", "le9999-12-31T23:59:59-14:00",
                                  "gt9999-12-31T23:59:59-14:00"])
def test_fhir_search_dates_at_the_ends_of_the_calendar_never_500(world, date):
    r = world.client.get("/fhir/Observation", headers=world.headers["clinician"],
                         params={"patient": "p1", "date": date})
    assert r.status_code < 500, r.text


def test_a_multipart_login_with_a_nul_is_refused_not_500(world):
    r = world.client.post("/auth/token", files={"username": (None, "dr_a\u0000x"),
                                                "password": (None, "whatever password")})
    assert r.status_code in (401, 422), r.text
