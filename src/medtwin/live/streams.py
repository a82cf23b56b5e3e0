"""Reading streams to test with: simulated ward patients, and replays of recorded signals.

Simulated vitals follow a mean-reverting random walk around each patient's baseline; a
deteriorating patient's baseline drifts towards sepsis (faster breathing and pulse, lower
SpO2 and blood pressure, fever). Recorded signals come from WFDB records: minute-by-minute
ICU numerics, or heart rate derived from an ECG by R-peak detection (wfdb's XQRS).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from medtwin.core import codes
from medtwin.core.errors import NotFoundError, ValidationError


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading ready to publish: which patient, which metric, the JSON payload."""

    patient: str
    metric: str
    time: datetime
    code: str
    value: float
    unit: str
    id: str

    def payload(self) -> bytes:
        """The JSON reading format the ingester reads."""
        return json.dumps({"code": self.code, "value": self.value, "unit": self.unit,
                           "time": self.time.isoformat(), "id": self.id}).encode()


# metric: (LOINC, unit, baseline mean, between-patient sd, within-patient sd, sepsis target)
VITALS = {
    "hr": (codes.HEART_RATE, "/min", 78.0, 8.0, 2.0, 125.0),
    "rr": (codes.RESPIRATORY_RATE, "/min", 16.0, 1.5, 0.8, 27.0),
    "spo2": (codes.SPO2_PULSE_OXIMETRY, "%", 97.0, 1.0, 0.5, 88.0),
    "sbp": (codes.SYSTOLIC_BP, "mm[Hg]", 125.0, 10.0, 3.0, 90.0),
    "temp": (codes.BODY_TEMPERATURE, "Cel", 36.9, 0.3, 0.05, 39.3),
}


#: ticks over which deteriorating patients worsen when the run has no end
DEFAULT_ONSET_STEPS = 60


def simulated_ward(n_patients: int, *, start: datetime, interval: timedelta,
                   steps: int | None, seed: int = 0, deteriorating: float = 0.2,
                   prefix_id: str = "sim", onset_steps: int | None = None
                   ) -> Iterator[list[Reading]]:
    """Yield, for each of ``steps`` ticks (``None``: without end), one reading of every vital
    for every patient.

    A fraction ``deteriorating`` of the patients (the first ones) drift towards sepsis over
    ``onset_steps`` ticks (default: the whole run, or :data:`DEFAULT_ONSET_STEPS` without
    end). Seeded and reproducible.
    """
    if n_patients < 1 or (steps is not None and steps < 1):
        raise ValidationError("need at least one patient and one step", where="stream")
    if not 0.0 <= deteriorating <= 1.0:
        raise ValidationError("deteriorating must be a fraction in [0, 1]", where="stream")
    rng = np.random.default_rng(seed)
    names = list(VITALS)
    spec = np.array([VITALS[m][2:] for m in names])  # (metrics, 4)
    base = spec[:, 0] + spec[:, 1] * rng.standard_normal((n_patients, len(names)))
    worse = np.arange(n_patients) < round(deteriorating * n_patients)
    onset = onset_steps or steps or DEFAULT_ONSET_STEPS
    dev = np.zeros_like(base)
    phi = 0.9
    for k in itertools.count() if steps is None else range(steps):
        frac = min(1.0, k / onset)
        mean = base + worse[:, None] * frac * (spec[:, 3] - base)
        dev = phi * dev + spec[:, 2] * np.sqrt(1 - phi**2) * rng.standard_normal(base.shape)
        values = mean + dev
        values[:, names.index("spo2")] = np.minimum(values[:, names.index("spo2")], 100.0)
        t = start + k * interval
        yield [Reading(patient=f"{prefix_id}-{p:04d}", metric=m, time=t, code=VITALS[m][0],
                       value=round(float(values[p, j]), 1), unit=VITALS[m][1],
                       id=f"{prefix_id}-{p:04d}-{m}-{k}")
               for p in range(n_patients) for j, m in enumerate(names)]


def _record(path: str | Path) -> tuple[str, Path]:
    p = Path(path)
    base = p.with_suffix("") if p.suffix in {".hea", ".dat"} else p
    if not base.with_suffix(".hea").exists():
        raise NotFoundError(f"no WFDB record at {base} (looked for {base}.hea)")
    return str(base), base


# WFDB numerics signal name -> (metric, LOINC, UCUM unit)
NUMERICS = {"HR": ("hr", codes.HEART_RATE, "/min"),
            "RESP": ("rr", codes.RESPIRATORY_RATE, "/min"),
            "SpO2": ("spo2", codes.SPO2_PULSE_OXIMETRY, "%"),
            "ABPSys": ("sbp", codes.SYSTOLIC_BP, "mm[Hg]"),
            "NBPSys": ("nbp_sys", codes.SYSTOLIC_BP, "mm[Hg]")}


def numerics_frame(path: str | Path) -> pd.DataFrame:
    """A WFDB numerics record (e.g. MIMIC minute numerics) as a tidy frame.

    Columns: offset (timedelta from the record start), metric, code, value, unit. Samples
    that are missing (NaN) or non-positive are dropped.
    """
    import wfdb

    name, _ = _record(path)
    rec = wfdb.rdrecord(name)
    step = timedelta(seconds=1.0 / float(rec.fs))
    rows = []
    for j, sig in enumerate(rec.sig_name):
        if sig not in NUMERICS:
            continue
        metric, code, unit = NUMERICS[sig]
        values = rec.p_signal[:, j]
        for i in np.flatnonzero(np.isfinite(values) & (values > 0)):
            rows.append((i * step, metric, code, float(values[i]), unit))
    return pd.DataFrame(rows, columns=["offset", "metric", "code", "value", "unit"])


def ecg_heart_rate(path: str | Path, *, channel: int = 0, seconds: float | None = None,
                   ) -> pd.DataFrame:
    """Beat-to-beat heart rate from an ECG record, by XQRS R-peak detection (wfdb).

    Returns offset (time of each beat after the first) and hr [/min] from the RR interval;
    physiologically impossible intervals (< 0.25 s or > 3 s) are dropped.
    """
    import wfdb
    from wfdb import processing

    name, _ = _record(path)
    sampto = int(seconds * wfdb.rdheader(name).fs) if seconds else None
    rec = wfdb.rdrecord(name, channels=[channel], sampto=sampto)
    fs = float(rec.fs)
    peaks = processing.xqrs_detect(sig=rec.p_signal[:, 0], fs=fs, verbose=False)
    return heart_rate_from_peaks(np.asarray(peaks), fs)


def heart_rate_from_peaks(peaks: np.ndarray, fs: float) -> pd.DataFrame:
    """Instantaneous heart rate at each beat from R-peak sample indices."""
    rr = np.diff(peaks) / fs
    keep = (rr >= 0.25) & (rr <= 3.0)
    return pd.DataFrame({"offset": pd.to_timedelta(peaks[1:][keep] / fs, unit="s"),
                         "hr": 60.0 / rr[keep]})


def replay_readings(frame: pd.DataFrame, *, patient: str, start: datetime,
                    source: str) -> list[Reading]:
    """Turn a numerics frame (or an ECG heart-rate frame) into timed readings."""
    if "metric" not in frame:
        frame = frame.assign(metric="hr", code=codes.HEART_RATE, unit="/min").rename(
            columns={"hr": "value"})
    return [Reading(patient=patient, metric=r.metric, time=start + r.offset, code=r.code,
                    value=round(float(r.value), 2), unit=r.unit, id=f"{source}-{r.metric}-{i}")
            for i, r in enumerate(frame.itertuples(index=False))]
