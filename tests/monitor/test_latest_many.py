"""The ward's batched latest-vitals read gives exactly what the per-patient timeline fold gives,
including ties, amended records, panels without a systolic value and patients with nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from medtwin.core.records import Component, Observation, Patient
from medtwin.interop.fhir.read import parse_fhir
from medtwin.interop.fhir.synthetic import generate_patients
from medtwin.monitor.vitals import CODES, latest_items, latest_items_many

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
UNITS = {"9279-1": "/min", "8867-4": "/min", "8480-6": "mm[Hg]", "59408-5": "%",
         "2708-6": "%", "8310-5": "Cel", "8331-1": "Cel", "3151-8": "L/min", "3150-0": "%"}


def _random_patient(rng: np.random.Generator, pid: str) -> list[Observation]:
    """Vitals at a few shared instants (ties), some amended later, some BP panels without SBP."""
    out: list[Observation] = []
    for k in range(int(rng.integers(0, 30))):
        when = T0 + timedelta(minutes=int(rng.integers(0, 8)) * 15)
        code = str(rng.choice(list(UNITS) + ["85354-9"]))
        src = f"{pid}-{k}"
        if code == "85354-9":
            comps = [Component("8462-4", 70.0, "mm[Hg]")]
            if rng.random() < 0.7:
                comps.append(Component("8480-6", float(rng.integers(80, 180)), "mm[Hg]"))
            out.append(Observation(pid, code, when, None, None, src, components=tuple(comps)))
        else:
            value = float(rng.integers(1, 40) if code in ("3151-8", "3150-0")
                          else rng.integers(30, 140))
            out.append(Observation(pid, code, when, value, UNITS[code], src))
            if rng.random() < 0.3:  # an amended version of the same source record, at
                moved = when + timedelta(minutes=int(rng.integers(-2, 2)) * 15)  # any time
                out.append(Observation(pid, code, moved, value + 1, UNITS[code], src,
                                       status="amended"))
    return out


def test_matches_the_timeline_fold_on_random_wards(store):
    rng = np.random.default_rng(11)
    ids = [f"p{k}" for k in range(25)]
    store.append([Patient(id=p, source_id=p) for p in ids])
    for p in ids:  # one append per record: amended versions get later sequence numbers
        for obs in _random_patient(rng, p):
            store.append(records=[obs], may_amend=True)  # an EHR's amendments
    many = latest_items_many(store, ids)
    assert set(many) == set(ids)
    for p in ids:
        assert many[p] == latest_items(store, p), p
    assert any(many.values()) and not all(many.values())  # both kinds of patient present


def test_matches_on_the_synthetic_ward(store):
    bundles = generate_patients(3, seed=2, days=1, kinds=["stable", "deteriorating"])
    ids = []
    for b in bundles:
        parsed = parse_fhir(b)
        store.append(parsed.patients, parsed.records)
        ids.append(parsed.patients[0].id)
    many = latest_items_many(store, ids)
    assert all(many[p] == latest_items(store, p) for p in ids)
    assert {"pulse", "respiration_rate", "spo2", "systolic_bp"} <= set(many[ids[0]])
    assert set(CODES) >= {"8867-4", "9279-1"}
