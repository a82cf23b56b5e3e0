"""Issue 12, finding 7: de-identified exports leaked free text (text-only ``code.text``,
``valueCodeableConcept.text``, Device ``type.text``, medication display ...) and kept month,
day and time of shifted dates. Here a bundle with identifiers of all 18 Safe Harbor kinds in
every free-text field goes in through the real import, and the exports are searched, as
text, for every seeded value."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.security.crypto import KeyRing

SEED = json.loads(Path(__file__).with_name("seeded_phi.json").read_text())
IDENTIFIERS: dict[str, list[str]] = SEED["identifiers"]
SAFE_HARBOR_KINDS = {"names", "geographic", "dates", "phone", "fax", "email", "ssn", "mrn",
                     "health_plan", "account", "certificate_licence", "vehicle", "device",
                     "url", "ip", "biometric", "photo", "other_unique_id"}
# pseudonyms (24 hex digits) and urn:uuid full URLs are random-looking: a seeded number such
# as "1931" can turn up in them by chance, so they are masked before the search (their shape
# is checked separately: nothing else can hide in them)
_PSEUDONYMOUS = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                           r"[0-9a-f]{12}|(?<![0-9a-zA-Z])[0-9a-f]{24}(?![0-9a-zA-Z])")
_MONTH_OR_DAY = re.compile(r"(?<!\d)\d{4}-\d{2}|\d{2}:\d{2}")


def leaks(text: str, kinds: set[str]) -> list[tuple[str, str]]:
    """Every seeded identifier of ``kinds`` found in ``text`` (case-insensitive)."""
    visible = _PSEUDONYMOUS.sub("<id>", text).lower()
    return [(kind, value) for kind in sorted(kinds) for value in IDENTIFIERS[kind]
            if value.lower() in visible]


def check_fhir(bundle: dict) -> dict[str, dict]:
    """Valid FHIR R4 (fhir.resources models), every id a pseudonym and every reference
    resolving inside the bundle; the resources by full URL."""
    get_fhir_model_class("Bundle").model_validate(bundle)
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    for url, res in by_url.items():
        get_fhir_model_class(res["resourceType"]).model_validate(res)
        assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", url)
        assert re.fullmatch(r"[0-9a-f]{24}", res["id"]), res["id"]
    refs = re.findall(r'"reference":\s*"([^"]*)"', json.dumps(bundle))
    assert refs and all(r in by_url for r in refs), [r for r in refs if r not in by_url]
    return by_url


@pytest.fixture
def seeded(tmp_path, monkeypatch):
    """(runner, db, patient id) after importing the seeded bundle with ``medtwin import``."""
    keyfile = tmp_path / "keys.json"
    KeyRing.generate().save(keyfile)
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(keyfile))
    src = tmp_path / "seeded.json"
    src.write_text(json.dumps(SEED["bundle"]))
    db = str(tmp_path / "s.sqlite")
    runner = CliRunner()
    done = runner.invoke(app, ["import", str(src), "--db", db])
    assert done.exit_code == 0, done.output
    plain = runner.invoke(app, ["export", "zeb-patient-01", "--db", db])
    assert plain.exit_code == 0
    # the identifiers did reach the store: the identified export still shows them
    assert {k for k, _ in leaks(plain.stdout, SAFE_HARBOR_KINDS)} >= {
        "names", "geographic", "phone", "email", "ssn", "mrn", "certificate_licence",
        "vehicle", "device", "url", "ip", "other_unique_id"}
    return runner, db, "zeb-patient-01"


def test_seed_covers_all_18_safe_harbor_kinds():
    assert set(IDENTIFIERS) == SAFE_HARBOR_KINDS and len(SAFE_HARBOR_KINDS) == 18
    seeded_text = json.dumps(SEED["bundle"]).lower()
    assert all(v.lower() in seeded_text for values in IDENTIFIERS.values() for v in values)


def test_safe_harbor_export_leaks_no_identifier_and_no_month_or_day(seeded):
    runner, db, pid = seeded
    out = runner.invoke(app, ["export", pid, "--db", db, "--deidentify"])
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert leaks(text, SAFE_HARBOR_KINDS) == []
    assert _MONTH_OR_DAY.findall(_PSEUDONYMOUS.sub("<id>", text)) == []
    bundle = json.loads(text)
    by_url = check_fhir(bundle)
    assert "timestamp" not in bundle
    assert bundle["meta"]["tag"][0]["code"] == "safe-harbor"
    assert {s["code"] for s in bundle["meta"]["security"]} == {"PSEUDED", "REDACTED"}

    resources = list(by_url.values())
    patient = resources[0]
    assert patient["resourceType"] == "Patient" and "birthDate" not in patient  # over 89
    assert patient["extension"] == [{"url": "https://medtwin.dev/fhir/StructureDefinition/"
                                            "age-group", "valueString": "90 or older"}]
    assert patient["address"] == [{"state": "MA", "postalCode": "021", "country": "US"}]
    # what is coded survives, with medtwin's own display for the codes it ships
    hr = next(r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code")
              == "8867-4")
    assert hr["code"] == {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                                      "display": "Heart rate"}]}
    assert hr["valueQuantity"]["value"] == 72 and hr["effectiveDateTime"] == "2023"
    assert by_url[hr["encounter"]["reference"]]["resourceType"] == "Encounter"
    assert by_url[hr["device"]["reference"]]["resourceType"] == "Device"
    codes = {c["code"] for r in resources for c in r.get("code", {}).get("coding", [])}
    assert {"8867-4", "38341003", "85354-9", "76691-5", "8691-8", "2093-3"} <= codes
    meds = [r["medicationCodeableConcept"]["coding"][0] for r in resources
            if "medicationCodeableConcept" in r]
    assert {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"} in meds
    assert {m["code"] for m in meds} == {"314076", "masked"}  # the uncoded ones are masked
    # a value that was only free text is reported as masked, not left silently empty
    masked = [r for r in resources if r.get("dataAbsentReason", {}).get("coding", [{}])[0]
              .get("code") == "masked"]
    assert {r["code"]["coding"][0]["code"] for r in masked} == {"76691-5", "8691-8", "8310-5"}
    # records that held nothing but free text are left out (text-only codes)
    assert sum(r["resourceType"] == "Condition" for r in resources) == 1
    bp = next(r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code")
              == "85354-9")
    assert "encounter" not in bp  # its encounter is not in the export: no dangling reference
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6"]

    table = runner.invoke(app, ["export", pid, "--db", db, "--deidentify", "--table"])
    assert table.exit_code == 0 and table.stdout.startswith("subject,time,kind")
    assert leaks(table.stdout, SAFE_HARBOR_KINDS) == []
    assert _MONTH_OR_DAY.findall(_PSEUDONYMOUS.sub("<id>", table.stdout)) == []
    assert "2023" in table.stdout and "8867-4" in table.stdout


def test_limited_data_set_shifts_dates_drops_direct_identifiers_and_says_so(seeded):
    runner, db, pid = seeded
    out = runner.invoke(app, ["export", pid, "--db", db, "--limited-data-set"])
    assert out.exit_code == 0, out.output
    assert "limited data set" in out.stderr and "data use agreement" in out.stderr
    text = out.stdout
    assert leaks(text, SAFE_HARBOR_KINDS - {"dates"}) == []
    # dates are kept with day and time, but none as it was: all shifted by one offset
    assert [v for v in IDENTIFIERS["dates"] if "-" in v and v in text] == []
    bundle = json.loads(text)
    by_url = check_fhir(bundle)
    assert bundle["meta"]["tag"][0]["code"] == "limited"
    assert "data use agreement" in bundle["meta"]["tag"][0]["display"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R",
            "display": "restricted"} in bundle["meta"]["security"]
    resources = list(by_url.values())
    patient = resources[0]
    assert len(patient["birthDate"]) == 10 and patient["birthDate"] != "1931-07-23"
    encounter = next(r for r in resources if r["resourceType"] == "Encounter")
    hr = next(r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code")
              == "8867-4")
    from datetime import datetime, timedelta

    start = datetime.fromisoformat(encounter["period"]["start"])
    assert datetime.fromisoformat(hr["effectiveDateTime"]) - start == timedelta(minutes=15)
    assert start.strftime("%H:%M") == "08:30" and start.date().isoformat() != "2023-01-05"
    assert "Gpname" not in text and "Evergreen" not in text  # free text still removed


def test_the_two_modes_are_one_at_a_time(seeded):
    runner, db, pid = seeded
    both = runner.invoke(app, ["export", pid, "--db", db, "--deidentify", "--limited-data-set"])
    assert both.exit_code == 2 and "give one of them" in both.output
    table = runner.invoke(app, ["export", pid, "--db", db, "--table"])
    assert table.exit_code == 2 and "--table needs" in table.output


def test_digits_shaped_like_codes_but_not_codes_do_not_survive():
    """Review of issue 12: a phone number as a SNOMED code and an SSN-shaped number passed
    the code-shape checks. Check digits (SNOMED Verhoeff, LOINC mod 10) and tighter shapes
    refuse them, while real codes pass."""
    from medtwin.security.deid_terms import LOINC, RXNORM, SNOMED, is_code

    for system, code in ((SNOMED, "6175551234"), (SNOMED, "123456789"), (LOINC, "5551234-8"),
                         (RXNORM, "6175551234"), ("http://hl7.org/fhir/sid/ndc", "6175551234")):
        assert not is_code(system, code), (system, code)
    for system, code in ((SNOMED, "44054006"), (SNOMED, "248234008"), (LOINC, "8867-4"),
                         (LOINC, "59408-5"), (RXNORM, "1049502"),
                         ("http://hl7.org/fhir/sid/ndc", "0002-8215-01")):
        assert is_code(system, code), (system, code)
