"""De-identified exports of a Synthea patient: no identifier of the original survives; Safe
Harbor keeps only the years of dates, the limited data set keeps the intervals between events."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.core.records import Patient
from medtwin.security.crypto import KeyRing
from medtwin.security.deid import Deidentifier

SYNTHEA = "fhir/synthea/Edward_Gulgowski_43481611-2459-44f5-ab20-4b142dac160f.json"


def _times(bundle: dict, types: set[str] | None = None) -> list[datetime]:
    out = []
    for e in bundle["entry"]:
        r = e["resource"]
        if types is not None and r["resourceType"] not in types:
            continue
        t = (r.get("effectiveDateTime") or (r.get("period") or {}).get("start")
             or r.get("onsetDateTime") or r.get("authoredOn")
             or (r.get("effectivePeriod") or {}).get("start"))
        if t:
            out.append(datetime.fromisoformat(t))
    return sorted(out)


def _years(bundle: dict) -> list[str]:
    out = []
    for e in bundle["entry"]:
        r = e["resource"]
        t = (r.get("effectiveDateTime") or (r.get("period") or {}).get("start")
             or r.get("onsetDateTime") or r.get("authoredOn")
             or (r.get("effectivePeriod") or {}).get("start"))
        if t:
            assert len(t) == 4, t
            out.append(t)
    return out


def test_deidentified_export_of_a_synthea_bundle(tmp_path, reference, monkeypatch):
    src = reference / SYNTHEA
    original = json.loads(src.read_text())
    keyfile = tmp_path / "keys.json"
    KeyRing.generate().save(keyfile)
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(keyfile))
    db = str(tmp_path / "s.sqlite")
    runner = CliRunner()
    assert runner.invoke(app, ["import", str(src), "--db", db]).exit_code == 0
    pid = json.loads(runner.invoke(app, ["patients", "--db", db, "--json"]).output)[0]["id"]
    plain = runner.invoke(app, ["export", pid, "--db", db])
    deid = runner.invoke(app, ["export", pid, "--db", db, "--deidentify"])
    assert plain.exit_code == 0 and deid.exit_code == 0, deid.output
    out = json.loads(deid.output)
    text = deid.output

    patient = next(e["resource"] for e in original["entry"]
                   if e["resource"]["resourceType"] == "Patient")
    forbidden = [patient["id"], patient["birthDate"]]
    for n in patient["name"]:
        forbidden += n.get("given", []) + [n["family"]] + n.get("prefix", [])
    for a in patient["address"]:
        forbidden += a["line"] + [a["city"], a["postalCode"]]
    forbidden += [t["value"] for t in patient.get("telecom", [])]
    forbidden += [i["value"] for i in patient.get("identifier", [])]
    forbidden += [e["resource"]["id"] for e in original["entry"]]
    leaked = sorted({f for f in forbidden if f and f in text})
    assert not leaked, leaked
    assert patient["name"][0]["family"] in plain.output  # the plain export has them

    res = out["entry"][0]["resource"]
    assert res["resourceType"] == "Patient" and set(res) <= {
        "resourceType", "id", "gender", "birthDate", "address", "deceasedBoolean", "extension"}
    assert res.get("birthDate", "")[:4] == patient["birthDate"][:4] and len(
        res.get("birthDate", "0000")) == 4
    assert all(len(a.get("postalCode", "")) <= 3 for a in res.get("address", []))
    assert out["meta"]["security"][0]["code"] == "PSEUDED"

    # Safe Harbor: every date of the patient is cut to its year (issue 12, finding 7)
    # (the plain export holds every stored type; the de-identified one the modelled types,
    # whose allow-lists exist: compare the dates of those)
    before = _times(json.loads(plain.output), {e["resource"]["resourceType"]
                                               for e in out["entry"]})
    years = sorted(_years(out))
    assert len(before) == len(years) > 10
    assert years == sorted(str(t.astimezone(UTC).year) for t in before)

    # the limited data set keeps dates, shifted per patient, so intervals are unchanged
    limited = runner.invoke(app, ["export", pid, "--db", db, "--limited-data-set"])
    assert limited.exit_code == 0, limited.output
    assert "limited data set" in limited.stderr and "data use agreement" in limited.stderr
    lds = json.loads(limited.stdout)
    after = _times(lds)
    assert len(before) == len(after)
    shift = after[0] - before[0]
    assert shift.total_seconds() != 0
    assert all(a - b == shift for a, b in zip(after, before, strict=True))  # intervals kept
    assert lds["meta"]["tag"][0]["code"] == "limited"

    table = runner.invoke(app, ["export", pid, "--db", db, "--deidentify", "--table"])
    assert table.exit_code == 0 and table.output.startswith("subject,time,kind")
    assert patient["name"][0]["family"] not in table.output and pid not in table.output


def test_ages_over_89_are_grouped_and_rare_zip3_removed():
    d = Deidentifier(b"k" * 32, now=datetime(2025, 1, 1, tzinfo=UTC))
    old = Patient(id="a", source_id="Patient/a", birth_year=1930, identity={
        "birth_date": "1930-05-05", "address": [{"city": "X", "postalCode": "03601",
                                                 "state": "NH"}]})
    p = d.patient(old)
    assert p.birth_year is None and p.identity["age_group"] == "90 or older"
    assert p.identity["address"] == [{"state": "NH", "postalCode": "000"}]
    young = d.patient(Patient(id="b", source_id="Patient/b", birth_year=1990,
                              identity={"birth_date": "1990-02-03"}))
    assert young.identity == {"birth_date": "1990"}
    assert d.shift("a") == d.shift("a") and d.shift("a").days != 0
    assert d.pseudonym("a") != Deidentifier(b"j" * 32).pseudonym("a")
