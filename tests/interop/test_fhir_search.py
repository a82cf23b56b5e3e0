"""FHIR search semantics, case by case after the R4 Search page's own examples
(https://hl7.org/fhir/R4/search.html; section numbers in the test names' docstrings), on
SQLite and PostgreSQL through :class:`FhirRepository.search`."""

from __future__ import annotations

import pytest

from medtwin.core.errors import ValidationError
from medtwin.interop.fhir.repository import FhirRepository
from medtwin.interop.fhir.search import date_range, parse_search
from medtwin.security.crypto import KeyRing

LOINC = "http://loinc.org"


def _obs(rid: str, code: str, when: dict, *, system: str = LOINC, patient: str = "p1",
         status: str = "final", category: str | None = None) -> dict:
    res = {"resourceType": "Observation", "id": rid, "status": status,
           "code": {"coding": [{"system": system, "code": code}]},
           "subject": {"reference": f"Patient/{patient}"}, **when,
           "valueQuantity": {"value": 37.0, "unit": "Cel", "system": "http://unitsofmeasure.org",
                             "code": "Cel"}}
    if category:
        res["category"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                        "observation-category", "code": category}]}]
    return res


@pytest.fixture
def repo(store):
    store.keyring = KeyRing.generate()  # sealed: identifying parameters are searched blind
    r = FhirRepository(store)
    r.update("Organization", "org1", {"resourceType": "Organization", "id": "org1",
                                      "name": "Acme General Hospital"})
    for pid, family, given in (("p1", "Chalmers", ["Eve"]), ("p2", "Müller", ["Evelyn"]),
                               ("p3", "Severine", ["Séverine"])):
        r.update("Patient", pid, {"resourceType": "Patient", "id": pid, "gender":
                                  "female" if pid != "p3" else "male",
                                  "birthDate": "1974-12-25",
                                  "name": [{"family": family, "given": given}],
                                  "identifier": [{"system": "http://acme.org/patient",
                                                  "value": f"23{pid[1]}5"}]})
    r.update("Observation", "a", _obs("a", "8310-5", {"effectiveDateTime":
                                                      "2013-01-14T00:00:00Z"},
                                      category="vital-signs"))
    r.update("Observation", "b", _obs("b", "8310-5", {"effectiveDateTime":
                                                      "2013-01-14T10:00:00Z"}))
    r.update("Observation", "c", _obs("c", "ha125", {"effectiveDateTime":
                                                      "2013-01-15T00:00:00Z"},
                                      system="http://acme.org/codes"))
    r.update("Observation", "d", _obs("d", "8310-5", {"effectivePeriod": {
        "start": "2013-01-10", "end": "2013-01-20"}}, patient="p2"))
    return r


def _ids(repo, rtype, params, **kw):
    return sorted(r.id for r in repo.search(rtype, params, **kw).matches)


def test_date_eq_day_matches_the_whole_day(repo):
    """3.1.1.4.3: eq2013-01-14 matches 2013-01-14T00:00 and 2013-01-14T10:00, not
    2013-01-15T00:00 (the search value's precision is its range)."""
    assert _ids(repo, "Observation", [("date", "eq2013-01-14")]) == ["a", "b"]
    assert _ids(repo, "Observation", [("date", "2013-01-14")]) == ["a", "b"]


def test_date_ne(repo):
    """3.1.1.4.3: ne2013-01-14 matches 2013-01-15T00:00 but not 2013-01-14T00:00 or
    2013-01-14T10:00; a period reaching beyond the day is not contained: it matches."""
    assert _ids(repo, "Observation", [("date", "ne2013-01-14")]) == ["c", "d"]


def test_date_lt_gt_le_ge(repo):
    """3.1.1.4.3 (lt/gt/le/ge on 2013-01-14T10:00): gt is 'the range above the search value
    overlaps the target', so a period ending after it matches; le includes the minute."""
    assert _ids(repo, "Observation", [("date", "lt2013-01-14T10:00")]) == ["a", "d"]
    assert _ids(repo, "Observation", [("date", "gt2013-01-14T10:00")]) == ["c", "d"]
    assert _ids(repo, "Observation", [("date", "ge2013-01-14T10:00")]) == ["b", "c", "d"]
    assert _ids(repo, "Observation", [("date", "le2013-01-14T10:00")]) == ["a", "b", "d"]
    assert _ids(repo, "Observation", [("date", "ge2013-01-15")]) == ["c", "d"]


def test_date_sa_eb_and_period_overlap(repo):
    """3.1.1.4.3: sa = starts after the search range, eb = ends before it; a Period is a
    range (2013-01-10 .. 2013-01-20) and is contained by eq2013-01 (the month)."""
    assert _ids(repo, "Observation", [("date", "sa2013-01-14")]) == ["c"]
    assert _ids(repo, "Observation", [("date", "eb2013-01-15")]) == ["a", "b"]
    assert _ids(repo, "Observation", [("date", "eq2013-01")]) == ["a", "b", "c", "d"]
    assert _ids(repo, "Observation", [("date", "2013-01-12")]) == []  # not contained


def test_date_and_range_by_repetition(repo):
    """3.1.1.4.3 / 3.1.1.5: date=ge2013-01-14&date=lt2013-01-15 is an AND (a range); the
    period 01-10..01-20 overlaps both sides (gt: it goes beyond; lt: it starts before),
    so it matches, while 2013-01-15T00:00 does not."""
    assert _ids(repo, "Observation", [("date", "ge2013-01-14"),
                                      ("date", "lt2013-01-15")]) == ["a", "b", "d"]
    assert _ids(repo, "Observation", [("date", "ge2013-01-14"), ("date", "lt2013-01-15"),
                                      ("patient", "p1")]) == ["a", "b"]


def test_token_system_code_forms(repo):
    """3.1.1.4.10: [code], [system]|[code], |[code] and [system]|."""
    assert _ids(repo, "Observation", [("code", "8310-5")]) == ["a", "b", "d"]
    assert _ids(repo, "Observation", [("code", f"{LOINC}|ha125")]) == []
    assert _ids(repo, "Observation", [("code", "http://acme.org/codes|ha125")]) == ["c"]
    assert _ids(repo, "Observation", [("code", "http://acme.org/codes|")]) == ["c"]
    assert _ids(repo, "Observation", [("code", "|ha125")]) == []  # c has a system


def test_comma_is_or_repetition_is_and(repo):
    """3.1.1.5 'Composite search parameters'/OR: code=a,b is OR; code=a&code=b is AND."""
    assert _ids(repo, "Observation", [("code", "8310-5,ha125")]) == ["a", "b", "c", "d"]
    assert _ids(repo, "Observation", [("code", "8310-5"), ("code", "ha125")]) == []
    assert _ids(repo, "Observation", [("code", "8310-5"), ("patient", "p2")]) == ["d"]


def test_token_not_and_missing(repo):
    """3.1.1.4.10 gender:not=male; 3.1.1.3 :missing."""
    assert _ids(repo, "Patient", [("gender:not", "male")]) == ["p1", "p2"]
    assert _ids(repo, "Observation", [("category:missing", "true")]) == ["b", "c", "d"]
    assert _ids(repo, "Observation", [("category", "vital-signs")]) == ["a"]


def test_identifier_token(repo):
    """3.1.1.4.10: identifier=http://acme.org/patient|2345."""
    assert _ids(repo, "Patient", [("identifier", "http://acme.org/patient|2315")]) == ["p1"]
    assert _ids(repo, "Patient", [("identifier", "2325")]) == ["p2"]


def test_string_starts_with_contains_exact(repo):
    """3.1.1.4.12: given=eve matches Eve and Evelyn; given:exact=Eve only Eve;
    Organization name:contains=general (accents, case ignored). A Patient's names are
    identifying and indexed blind (keyed hashes of their prefixes): :contains is refused
    with the reason, never answered wrongly."""
    assert _ids(repo, "Patient", [("given", "eve")]) == ["p1", "p2"]
    assert _ids(repo, "Patient", [("given", "séve")]) == ["p3"]
    assert _ids(repo, "Patient", [("given:exact", "Eve")]) == ["p1"]
    assert _ids(repo, "Patient", [("given:exact", "eve")]) == []
    assert _ids(repo, "Organization", [("name:contains", "GENERAL")]) == ["org1"]
    assert _ids(repo, "Organization", [("name", "general")]) == []
    with pytest.raises(ValidationError, match="indexed blind"):
        repo.search("Patient", [("given:contains", "eve")])
    with pytest.raises(ValidationError, match="indexed blind"):
        repo.search("Patient", [("_sort", "family")])
    assert _ids(repo, "Patient", [("family", "muller")]) == ["p2"]  # accent-insensitive
    assert _ids(repo, "Patient", [("name", "CHAL")]) == ["p1"]


def test_reference_forms(repo):
    """3.1.1.4.13: subject=Patient/p1, patient=p1, an absolute URL, subject:Patient=p1."""
    want = ["a", "b", "c"]
    assert _ids(repo, "Observation", [("patient", "p1")]) == want
    assert _ids(repo, "Observation", [("subject", "Patient/p1")]) == want
    assert _ids(repo, "Observation", [("subject", "http://x.org/fhir/Patient/p1")]) == want
    assert _ids(repo, "Observation", [("subject:Patient", "p1")]) == want
    assert _ids(repo, "Observation", [("patient", "p1,p2")]) == ["a", "b", "c", "d"]


def test_id_lastupdated_birthdate(repo):
    """3.1.1.1 _id, _lastUpdated; Patient birthdate (a date: the day)."""
    assert _ids(repo, "Observation", [("_id", "a,c")]) == ["a", "c"]
    assert _ids(repo, "Patient", [("birthdate", "1974-12-25")]) == ["p1", "p2", "p3"]
    assert _ids(repo, "Patient", [("birthdate", "1974-12")]) == ["p1", "p2", "p3"]
    assert _ids(repo, "Patient", [("birthdate", "1974")]) == ["p1", "p2", "p3"]
    assert _ids(repo, "Patient", [("birthdate", "1974-12-24")]) == []
    assert _ids(repo, "Patient", [("birthdate", "ne1974-12-25")]) == []
    # blind: ranges only at a year edge (the year is kept in the clear, like birth_year)
    assert _ids(repo, "Patient", [("birthdate", "gt1974")]) == []
    assert _ids(repo, "Patient", [("birthdate", "ge1974-01-01")]) == ["p1", "p2", "p3"]
    assert _ids(repo, "Patient", [("birthdate", "lt1975-01-01")]) == ["p1", "p2", "p3"]
    assert _ids(repo, "Patient", [("birthdate", "sa1974")]) == []
    with pytest.raises(ValidationError, match="year boundary"):
        repo.search("Patient", [("birthdate", "gt1974-12-25")])
    assert _ids(repo, "Observation", [("_lastUpdated", "gt2000-01-01")]) == ["a", "b", "c", "d"]
    assert _ids(repo, "Observation", [("_lastUpdated", "lt2000-01-01")]) == []


def test_sort_count_offset_total(repo):
    """3.1.1.6 _sort=date / -date; 3.1.1.7 _count with pages that never overlap; total."""
    asc = repo.search("Observation", [("_sort", "date")])
    assert [r.id for r in asc.matches] == ["d", "a", "b", "c"]
    desc = repo.search("Observation", [("_sort", "-date")])
    assert [r.id for r in desc.matches] == ["d", "c", "b", "a"]  # d ends last
    seen = []
    offset = 0
    while True:
        page = repo.search("Observation", [("_sort", "_id"), ("_count", "3")], offset=offset)
        assert page.total == 4
        seen += [r.id for r in page.matches]
        if not page.more:
            break
        offset += 3
    assert seen == ["a", "b", "c", "d"]
    count = repo.search("Observation", [("_summary", "count")])
    assert count.total == 4 and count.matches == []


def test_include_and_revinclude(repo):
    """3.1.1.8: _include=Observation:subject adds the Patient; _revinclude=Observation:subject
    on Patient adds its observations; both respect the caller's patient scope."""
    res = repo.search("Observation", [("code", "8310-5"), ("_include", "Observation:subject")])
    assert sorted(r.reference for r in res.included) == ["Patient/p1", "Patient/p2"]
    scoped = repo.search("Observation", [("_include", "Observation:subject")],
                         patients={"p1"})
    assert {r.id for r in scoped.matches} == {"a", "b", "c"}
    assert [r.reference for r in scoped.included] == ["Patient/p1"]
    rev = repo.search("Patient", [("_id", "p2"), ("_revinclude", "Observation:subject")])
    assert [r.reference for r in rev.included] == ["Observation/d"]
    rev2 = repo.search("Patient", [("_id", "p2"), ("_revinclude", "Observation:patient")],
                       patients={"p1"})
    assert rev2.matches == [] and rev2.included == []


def test_unknown_and_bad_parameters(repo):
    """3.1.1.2: unknown parameters are reported (the caller decides: ignore or 400);
    bad values raise a ValidationError naming the parameter."""
    res = repo.search("Observation", [("foo", "1"), ("code", "8310-5")])
    assert res.search.unknown == ["foo"] and len(res.matches) == 3
    with pytest.raises(ValidationError, match="date"):
        repo.search("Observation", [("date", "2013-13-45")])
    with pytest.raises(ValidationError, match="_sort"):
        repo.search("Observation", [("_sort", "nope")])


def test_date_precision_ranges():
    lo, hi = date_range("2026-01-05")
    assert (hi - lo).days == 1
    lo, hi = date_range("2026-01-05T10:00+02:00")
    assert lo.hour == 8 and (hi - lo).seconds == 60
    assert date_range("2024-02")[1].day == 1 and date_range("2024-02")[1].month == 3
    assert parse_search("Observation", [("code", "a\\,b")]).query.clauses[0].tests[0].code == "a,b"
