"""The timeline page is serialised once (issue 16) and says exactly what it said before: the
bytes of FastAPI's serialisation of a TimelineOut built from the store's rows, including
displays read out of the payload, flagged readings, amended records and the next cursor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import TypeAdapter

from medtwin.api.schemas import TimelineItem, TimelineOut
from medtwin.api.timeline_cursor import decode_cursor, encode_cursor
from medtwin.core.records import Observation

T1 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
DISPLAYS = [None, "Heart rate", 'quote " and back\\slash', "unicode é ü 心拍 🫀", "null", "",
            "[1, 2]", "tab\tnew\nline"]


def _before(patient_id: str, rows: list[dict], more: tuple | None) -> bytes:
    """What the route sent before: TimelineOut of model_construct'ed items, serialised by
    FastAPI (the response model's TypeAdapter, by alias)."""
    out = TimelineOut(patient_id=patient_id, count=len(rows),
                      items=[TimelineItem.model_construct(**r) for r in rows],
                      next=encode_cursor(more) if more else None)
    return TypeAdapter(TimelineOut).dump_json(out, by_alias=True)


def _add_tricky_readings(world) -> None:
    recs = [Observation(subject="p1", code="8310-5", display=d, time=T1 + timedelta(minutes=i),
                        value=36.6 + i / 7, unit="Cel", source_id=f"Observation/t{i}")
            for i, d in enumerate(DISPLAYS)]
    world.store.append(records=recs)
    amended = Observation(subject="p1", code="8310-5", display="amended", value=39.25,
                          time=T1, unit="Cel", source_id="Observation/t0")
    world.store.append(records=[amended], may_amend=True)


def test_timeline_bytes_are_what_they_were(world):
    _add_tricky_readings(world)
    h = world.headers["clinician"]
    r = world.client.post("/patients/p1/observations", headers=world.headers["device"], json={
        "code": "8867-4", "value": 61, "unit": "/min",
        "time": (datetime.now(UTC) + timedelta(days=2)).isoformat()})  # quarantined
    assert r.status_code == 201 and r.json()["quarantined"]
    everything = world.store.timeline_entries("p1")  # the old reader: the payload's display
    assert {e["display"] for e in everything} >= {d for d in DISPLAYS[1:]} | {"amended"}
    assert any(e["quality"] for e in everything)
    r = world.client.get("/patients/p1/timeline", headers=h)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == _before("p1", everything, None)

    pages, cursor = [], None  # in pages of 4: each page's bytes, next cursor included
    while True:
        url = "/patients/p1/timeline?limit=4" + (f"&cursor={cursor}" if cursor else "")
        r = world.client.get(url, headers=h)
        assert r.status_code == 200
        rows = everything[len(pages) * 4:len(pages) * 4 + 4]
        cursor = r.json()["next"]
        more = decode_cursor(cursor) if cursor else None
        assert (more is None) == (len(pages) * 4 + 4 >= len(everything))
        assert more is None or more[0] == rows[-1]["time"]
        assert r.content == _before("p1", rows, more)
        pages.append(r.json())
        if cursor is None:
            break
    assert sum(p["count"] for p in pages) == len(everything)

    r = world.client.get("/patients/p1/timeline?code=8310-5&kind=observation", headers=h)
    assert r.content == _before("p1", world.store.timeline_entries(
        "p1", codes=["8310-5"], kinds=["observation"]), None)


def test_timeline_errors_and_schema_unchanged(world):
    h = world.headers["clinician"]
    assert world.client.get("/patients/p2/timeline", headers=h).status_code == 404  # not hers
    admin = {**world.headers["admin"],
             "X-Break-Glass-Reason": "unconscious patient, identity needed in ED"}
    r = world.client.get("/patients/nobody/timeline", headers=admin)
    assert r.json()["detail"] == "no patient 'nobody'"  # (status 400 today, as before)
    assert world.audit()[-1].outcome == "not-found"
    r = world.client.get("/patients/p1/timeline", headers=h)
    assert world.audit()[-1].resource == "timeline" and world.audit()[-1].outcome == "success"
    op = world.client.app.openapi()["paths"]["/patients/{patient_id}/timeline"]["get"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/TimelineOut"}
