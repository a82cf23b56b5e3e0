"""Import every Synthea reference bundle into SQLite and PostgreSQL and check what was kept."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medtwin.interop.importer import import_paths

KIND = {"Observation": "observation", "Condition": "condition", "Encounter": "encounter",
        "MedicationRequest": "medication_request"}


def _synthea(reference: Path) -> list[Path]:
    files = sorted((reference / "fhir" / "synthea").glob("*.json"))
    assert len(files) == 12
    return files


def test_every_synthea_bundle_is_stored_completely_and_once(store, reference):
    files = _synthea(reference)
    kinds = Counter()
    for f in files:
        bundle = json.loads(f.read_text())
        kinds[bundle["type"]] += 1
        before = store.counts()
        summary = import_paths(store, [f])
        assert summary.rejected == 0 and summary.files_refused == 0, summary.text()
        pid = next(e["resource"]["id"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "Patient")
        expected = Counter(KIND[e["resource"]["resourceType"]] for e in bundle["entry"]
                           if e["resource"]["resourceType"] in KIND)
        got = store.counts(pid)
        for kind, n in expected.items():
            assert got.get(kind, 0) == n, (f.name, kind)
        assert sum(store.counts().values()) - sum(before.values()) == summary.stored
    assert kinds == {"transaction": 8, "collection": 4}
    total = sum(store.counts().values())
    again = import_paths(store, files)
    assert again.stored == 0 and again.duplicates == total
    assert sum(store.counts().values()) == total


def test_vital_sign_values_and_units_survive(store, reference):
    f = next(p for p in _synthea(reference) if p.name.startswith("Brent_Beer"))
    import_paths(store, [f])
    bundle = json.loads(f.read_text())
    pid = next(e["resource"]["id"] for e in bundle["entry"]
               if e["resource"]["resourceType"] == "Patient")
    weights = {e["resource"]["id"]: e["resource"]["valueQuantity"] for e in bundle["entry"]
               if e["resource"]["resourceType"] == "Observation"
               and e["resource"]["code"]["coding"][0]["code"] == "29463-7"}
    stored = store.timeline(pid, codes=["29463-7"])
    assert len(stored) == len(weights) > 0
    for obs in stored:
        q = weights[obs.source_id.split("/")[1]]
        assert obs.unit == "kg" and obs.value == pytest.approx(q["value"])
    bps = store.timeline(pid, codes=["85354-9", "55284-4"])  # 2.4 uses the older 55284-4
    assert bps, "blood pressure panels were not stored"
    for bp in bps:
        parts = {c.code: c for c in bp.components}
        assert set(parts) == {"8480-6", "8462-4"}
        assert all(c.unit == "mm[Hg]" for c in parts.values())
        assert 60 < parts["8480-6"].value < 250 and 30 < parts["8462-4"].value < 150
        assert parts["8480-6"].value > parts["8462-4"].value
    frame = store.timeline_frame(pid, codes=["29463-7"])
    assert list(frame["unit"].unique()) == ["kg"]
    assert frame["time"].is_monotonic_increasing


def test_unmodelled_codes_are_stored_with_their_original_code(store, reference):
    f = next(p for p in _synthea(reference) if p.name.startswith("Brent_Beer"))
    import_paths(store, [f])
    bundle = json.loads(f.read_text())
    pid = next(e["resource"]["id"] for e in bundle["entry"]
               if e["resource"]["resourceType"] == "Patient")
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]
             if e["resource"]["resourceType"] == "Observation"}
    stored = {r.code for r in store.timeline(pid, kinds=["observation"])}
    assert stored == codes
    assert "72514-3" in stored  # pain severity score: not modelled, kept as it came
