"""Issue 12, finding 7, over the research API: Safe Harbor by default, a limited data set only
when asked for by name, labelled and audited as one; neither leaks what the seeded bundle
(identifiers of all 18 Safe Harbor kinds in every free-text field) put in."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class

SEED = json.loads((Path(__file__).parents[1] / "security" / "seeded_phi.json").read_text())
IDENTIFIERS: dict[str, list[str]] = SEED["identifiers"]
_PSEUDONYMOUS = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                           r"[0-9a-f]{12}|(?<![0-9a-zA-Z])[0-9a-f]{24}(?![0-9a-zA-Z])")
_MONTH_OR_DAY = re.compile(r"(?<!\d)\d{4}-\d{2}|\d{2}:\d{2}")


def _leaks(text: str, skip: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    visible = _PSEUDONYMOUS.sub("<id>", text).lower()
    return [(kind, v) for kind, values in IDENTIFIERS.items() if kind not in skip
            for v in values if v.lower() in visible]


def _seeded(world) -> str:
    """Import the seeded bundle as its clinician would; the researcher's pseudonym for it."""
    r = world.client.post("/fhir/Bundle", json=SEED["bundle"],
                          headers=world.headers["clinician"])
    assert r.status_code == 200, r.text
    return world.client.app.state.services.deidentifier().pseudonym("zeb-patient-01")


def _check_bundle(bundle: dict) -> None:
    get_fhir_model_class("Bundle").model_validate(bundle)
    urls = {e["fullUrl"] for e in bundle["entry"]}
    for e in bundle["entry"]:
        get_fhir_model_class(e["resource"]["resourceType"]).model_validate(e["resource"])
    refs = re.findall(r'"reference":\s*"([^"]*)"', json.dumps(bundle))
    assert refs and set(refs) <= urls


def test_research_routes_are_safe_harbor_by_default(world):
    pseudo = _seeded(world)
    h = world.headers["researcher"]
    listed = {p["pseudonym"]: p for p in world.client.get("/research/patients",
                                                          headers=h).json()}
    assert listed[pseudo] == {"pseudonym": pseudo, "gender": "male", "birth_year": None,
                              "age_group": "90 or older"}

    tl = world.client.get(f"/research/patients/{pseudo}/timeline", headers=h)
    assert tl.status_code == 200
    body = tl.json()
    assert body["mode"] == "safe-harbor" and "164.514(b)(2)" in body["notice"]
    assert _leaks(tl.text) == [] and _MONTH_OR_DAY.findall(_PSEUDONYMOUS.sub("", tl.text)) == []
    assert all(i["time"] is None for i in body["items"])
    assert {i["year"] for i in body["items"] if i["kind"] != "device"} == {2022, 2023}
    hr = next(i for i in body["items"] if i["code"] == "8867-4")
    assert hr["value"] == 72 and hr["unit"] == "/min" and hr["display"] == "Heart rate"

    b = world.client.get(f"/research/patients/{pseudo}/bundle", headers=h)
    assert b.status_code == 200 and b.headers["x-medtwin-deidentification"] == "safe-harbor"
    assert _leaks(b.text) == [] and _MONTH_OR_DAY.findall(_PSEUDONYMOUS.sub("", b.text)) == []
    bundle = b.json()
    _check_bundle(bundle)
    assert bundle["meta"]["tag"][0]["code"] == "safe-harbor"
    audit = world.audit()
    assert [(e.resource, e.outcome) for e in audit[-2:]] == [
        ("research-timeline", "success"), ("research-bundle", "success")]


def test_limited_data_set_only_on_request_labelled_and_audited(world):
    pseudo = _seeded(world)
    h = world.headers["researcher"]
    b = world.client.get(f"/research/patients/{pseudo}/bundle", params={"mode": "limited"},
                         headers=h)
    assert b.status_code == 200 and b.headers["x-medtwin-deidentification"] == "limited"
    assert _leaks(b.text, skip=frozenset({"dates"})) == []
    assert not [d for d in IDENTIFIERS["dates"] if "-" in d and d in b.text]  # all shifted
    bundle = b.json()
    _check_bundle(bundle)
    tag = bundle["meta"]["tag"][0]
    assert tag["code"] == "limited" and "data use agreement" in tag["display"]
    assert "R" in {s["code"] for s in bundle["meta"]["security"]}
    entry = world.audit()[-1]
    assert (entry.resource, entry.outcome, entry.patient_id) == (
        "research-bundle-limited-data-set", "success", "zeb-patient-01")

    tl = world.client.get(f"/research/patients/{pseudo}/timeline", params={"mode": "limited"},
                          headers=h)
    body = tl.json()
    assert body["mode"] == "limited" and "data use agreement" in body["notice"]
    assert _leaks(tl.text, skip=frozenset({"dates"})) == []
    assert all(i["time"] is not None for i in body["items"] if i["kind"] != "device")
    visit = next(datetime.fromisoformat(i["time"]) for i in body["items"]
                 if i["kind"] == "encounter")
    hr = next(datetime.fromisoformat(i["time"]) for i in body["items"] if i["code"] == "8867-4")
    assert (hr - visit).total_seconds() == 15 * 60  # shifted together: the interval is kept
    assert visit.strftime("%H:%M") == "08:30" and visit.date().isoformat() != "2023-01-05"
    assert world.audit()[-1].resource == "research-timeline-limited-data-set"

    bad = world.client.get(f"/research/patients/{pseudo}/bundle",
                           params={"mode": "identified"}, headers=h)
    assert bad.status_code == 422
