"""The importer's fast paths give the verdicts and the store the slow paths gave.

- the bundle shell is validated once per distinct entry shell, with the same issues as
  validating every entry;
- the extra rules (zones, per-1, HTML) run their full walk only when a quick scan says they
  could fire, and the scan never misses;
- files are written in groups (one transaction per group) by a writer thread, and parsed in
  worker processes: what is stored, reported and refused is what one file at a time gave.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.core.errors import NotFoundError
from medtwin.interop import importer
from medtwin.interop.fhir.issues import FhirIssue
from medtwin.interop.fhir.synthetic import generate_patients, write_bundles
from medtwin.interop.fhir.validate import (
    _ABSOLUTE,
    _extra_rules,
    _rules_may_fire,
    validate_bundle_shell,
    validate_resource,
)
from medtwin.interop.importer import auto_workers, import_paths
from medtwin.store.event_store import EventStore


def _every_shell(bundle: dict) -> list[FhirIssue]:
    """validate_bundle_shell as it was before the fast path: every entry shell validated."""
    where = {"resource_type": "Bundle", "resource_id": bundle.get("id"), "source": None}
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        return [FhirIssue("Bundle.entry must be an array", element="entry", **where)]
    shell = dict(bundle)
    shell["entry"] = [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict)
                      else e for e in entries]
    if not shell["entry"]:
        shell.pop("entry")
    _, issues = validate_resource(shell)
    for i, e in enumerate(entries):
        full = e.get("fullUrl") if isinstance(e, dict) else None
        if isinstance(full, str) and not _ABSOLUTE.match(full):
            issues.append(FhirIssue(f"fullUrl must be an absolute URL (got {full!r})",
                                    element=f"entry[{i}].fullUrl", code="value", **where))
    return issues


def _synthea(reference, kind: str) -> dict:
    for f in sorted((reference / "fhir" / "synthea").glob("*.json")):
        data = json.loads(f.read_text())
        if data["type"] == kind:
            return data
    raise AssertionError(kind)


MUTATIONS = {
    "as it is": lambda es: None,
    "unknown element": lambda es: es[3].update(colour="blue"),
    "bad method": lambda es: es[2].setdefault("request", {}).update(method="FETCH"),
    "url not a string": lambda es: es[1].setdefault("request", {}).update(url=7),
    "fullUrl not a string": lambda es: es[4].update(fullUrl=12),
    "relative fullUrl": lambda es: es[5].update(fullUrl="Patient/1"),
    "empty fullUrl": lambda es: es[5].update(fullUrl=""),
    "html in fullUrl": lambda es: es[6].update(fullUrl="urn:uuid:<script>x</script>"),
    "html in url": lambda es: es[6].setdefault("request", {}).update(url="<img src=x>"),
    "entry not an object": lambda es: es.insert(2, "entry"),
    "request without method": lambda es: es[2].update(request={"url": "Observation"}),
    "request as a list": lambda es: es[2].update(request=[{"method": "GET", "url": "x"}]),
    "search and response": lambda es: es[3].update(search={"mode": "match"},
                                                   response={"status": "201"}),
    "bad search mode": lambda es: es[3].update(search={"mode": "sometimes"}),
    "zoneless in response": lambda es: es[3].update(
        response={"status": "200", "lastModified": "2020-01-01T10:00"}),
    "empty entry list": lambda es: es.clear(),
}


@pytest.mark.parametrize("kind", ["transaction", "collection"])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_bundle_shell_verdict_is_that_of_every_entry(reference, kind, mutation):
    bundle = copy.deepcopy(_synthea(reference, kind))
    MUTATIONS[mutation](bundle["entry"])
    assert validate_bundle_shell(bundle) == _every_shell(bundle)


_KEYS = st.sampled_from(["start", "end", "div", "issued", "effectiveDateTime", "valueInstant",
                         "date", "text", "code", "authoredOn", "x", "timestamp"])
_STRINGS = st.one_of(
    st.sampled_from(["2020-01-01T10:00", "2020-01-01T10:00:00Z", "2020-01-01T10:00:00.5",
                     "2020-01-01T10:00\n", "2021-01-01", "2020-02", "2020", "plain",
                     "<script>alert(1)</script>", "<div>fine</div>", "<a href='x'>y</a>",
                     '<p onclick="x">', "javascript:void(0)", "< img src=x>", "a < b"]),
    st.text(max_size=12))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _STRINGS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=24)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _JSON, max_size=6))
def test_the_quick_scan_never_misses_what_the_rules_report(node):
    found: list = []
    _extra_rules(node, [], found)
    if found:
        assert _rules_may_fire(node)


def test_the_quick_scan_lets_plain_resources_through(reference):
    bundle = _synthea(reference, "collection")
    assert not any(_rules_may_fire(e["resource"]) for e in bundle["entry"])


def _files(tmp_path, n=5):
    paths = write_bundles(generate_patients(n, seed=11, days=1), tmp_path / "in")
    bad_entry = json.loads(paths[0].read_text())
    bad_entry["type"] = "collection"
    for e in bad_entry["entry"]:
        e.pop("request", None)
    bad_entry["entry"][3]["resource"]["colour"] = "blue"
    (tmp_path / "in" / "collection.json").write_text(json.dumps(bad_entry))
    (tmp_path / "in" / "broken.json").write_text('{"resourceType": "Bundle",')
    return sorted((tmp_path / "in").glob("*.json"))


def _outcome(store: EventStore, summary) -> tuple:
    letters = store.dead_letters()
    return (summary.to_dict(), store.counts(), sorted(store.patients()["id"]),
            sorted(zip(letters.source, letters.reason, strict=True)))


def test_parallel_import_stores_and_reports_what_one_process_does(store, tmp_path):
    files = _files(tmp_path)
    with EventStore.open(tmp_path / "serial.sqlite") as serial:
        expected = _outcome(serial, import_paths(serial, files, workers=1))
    calls: list[int] = []
    summary = import_paths(store, files, workers=2, progress=calls.append)
    assert _outcome(store, summary) == expected
    assert len(calls) == len(files)
    assert summary.files_refused == 1 and summary.rejected == 2 and summary.stored > 100
    again = import_paths(store, files, workers=2)
    assert again.stored == 0 and again.duplicates == summary.stored + summary.duplicates


@pytest.mark.parametrize("group_files", [2, 64])
def test_a_file_the_store_refuses_keeps_the_files_before_it(tmp_path, group_files,
                                                            monkeypatch):
    """As with one transaction per file: the files before the one at fault are stored, the
    import stops there, and nothing after it is written."""
    monkeypatch.setattr(importer, "GROUP_FILES", group_files)
    paths = write_bundles(generate_patients(4, seed=5, days=1), tmp_path / "in")
    orphan = json.loads(paths[2].read_text())  # its records, without their Patient
    orphan["entry"] = [e for e in orphan["entry"]
                       if e["resource"]["resourceType"] == "Observation"]
    for e in orphan["entry"]:
        e["resource"]["subject"] = {"reference": "Patient/nobody"}
        e["resource"].pop("encounter", None)
        e["resource"].pop("device", None)
    paths[2].write_text(json.dumps(orphan))
    with EventStore.open(tmp_path / "s.sqlite") as store:
        with pytest.raises(NotFoundError, match="nobody"):
            import_paths(store, paths)
        stored = set(store.patients()["id"])
    first_two = {json.loads(p.read_text())["entry"][0]["resource"]["id"] for p in paths[:2]}
    last = json.loads(paths[3].read_text())["entry"][0]["resource"]["id"]
    assert stored == first_two and last not in stored


def test_files_parsed_before_an_unexpected_error_are_still_written(tmp_path, monkeypatch):
    paths = write_bundles(generate_patients(3, seed=6, days=1), tmp_path / "in")
    real = importer._parse

    def parse(path):
        if path == paths[2]:
            raise RuntimeError("disk on fire")
        return real(path)

    monkeypatch.setattr(importer, "_parse", parse)
    with EventStore.open(tmp_path / "s.sqlite") as store:
        with pytest.raises(RuntimeError, match="disk on fire"):
            import_paths(store, paths)
        assert len(store.patients()) == 2


def test_a_large_import_uses_every_core_by_default(tmp_path, monkeypatch):
    paths = write_bundles(generate_patients(8, seed=1, days=1), tmp_path)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert auto_workers(paths[:3]) == 1
    monkeypatch.setattr(importer, "AUTO_MIN_BYTES", 1)
    assert auto_workers(paths) == (cores if cores and cores > 1 else 1)


def test_an_in_memory_store_is_written_in_the_calling_thread(tmp_path):
    """In-memory SQLite gives each thread a database of its own: no writer thread there."""
    paths = write_bundles(generate_patients(2, seed=2, days=1), tmp_path)
    with EventStore.open("sqlite://") as store:
        summary = import_paths(store, paths)
        assert summary.stored > 0 and sum(store.counts().values()) == summary.stored


def test_the_import_command_parses_in_workers(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medtwin.cli import app
    from medtwin.security.crypto import create_key_file

    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(tmp_path / "keys.json"))  # identities sealed
    create_key_file(tmp_path / "keys.json")
    paths = write_bundles(generate_patients(4, seed=4, days=1), tmp_path / "in")
    db = str(tmp_path / "s.sqlite")
    out = CliRunner().invoke(app, ["import", str(tmp_path / "in"), "--db", db, "-j", "2",
                                   "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["files"] == len(paths) and report["stored"] > 0
    with EventStore.open(db) as store:
        assert len(store.patients()) == 4
