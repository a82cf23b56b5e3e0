"""Stores filled with encounters generated from a known model (for calibration/forecast)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from medtwin.core.records import Encounter, Patient
from medtwin.store.event_store import EventStore

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
TRUE_RATES = np.array([3 + 2 * np.sin(2 * np.pi * (h - 9) / 24) for h in range(24)])


def generate_encounters(rng, days, rates, los_sampler, klass="EMER", now=None):
    """Arrivals from an hourly-rate Poisson process; LOS from ``los_sampler`` (minutes).

    Encounters still open at ``now`` (if given) are stored without an end.
    """
    out = []
    for d in range(days):
        for h in range(24):
            n = rng.poisson(rates[h])
            t0 = START + timedelta(days=d, hours=h)
            for u in np.sort(rng.uniform(0, 3600, n)):
                out.append((t0 + timedelta(seconds=float(u)), float(los_sampler(rng))))
    recs, pats = [], [Patient(id=f"p{i}", source_id=f"src-p{i}") for i in range(50)]
    for i, (start, los) in enumerate(out):
        end = start + timedelta(minutes=los)
        if now is not None:
            if start > now:
                continue
            if end > now:
                end = None
        recs.append(Encounter(subject=f"p{i % 50}", source_id=f"enc-{klass}-{i}", start=start,
                              end=end, klass=klass, code="50849002", display="Emergency"))
    return pats, recs


@pytest.fixture
def encounter_store(tmp_path):
    def make(days=28, rates=TRUE_RATES, los=None, klass="EMER", now=None, seed=11):
        rng = np.random.default_rng(seed)
        los = los or (lambda r: r.lognormal(*_ln(240.0, 120.0**2)))
        pats, recs = generate_encounters(rng, days, rates, los, klass, now)
        store = EventStore.open(tmp_path / f"enc{seed}.sqlite")
        store.append(pats, recs)
        return store, recs
    return make


def _ln(mean, var):
    s2 = np.log(1 + var / mean**2)
    return np.log(mean) - s2 / 2, np.sqrt(s2)


@pytest.fixture
def true_rates():
    """The hourly arrival rates the generated encounters come from."""
    return TRUE_RATES


@pytest.fixture
def data_start():
    """Start of the generated encounter data (a Monday, UTC)."""
    return START
