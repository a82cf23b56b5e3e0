"""Assemble a NEWS2 set of vitals from a patient's latest stored observations."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from medtwin.core.records import Observation
from medtwin.interop.codes import BLOOD_PRESSURE_PANELS
from medtwin.monitor.news2 import Vitals
from medtwin.store.event_store import EventStore
from medtwin.store.latest import latest_per_code

RR, PULSE, SBP = "9279-1", "8867-4", "8480-6"
SPO2 = ("59408-5", "2708-6")
TEMP = ("8310-5", "8331-1")
O2_FLOW, FIO2, ACVPU_CODE = "3151-8", "3150-0", "67775-7"
# SNOMED CT answers for level of consciousness -> ACVPU
ACVPU_SNOMED = {"248234008": "A", "286933003": "C", "130987000": "C", "450847001": "V",
                "450848006": "P", "422768004": "U"}
CODES = [RR, PULSE, SBP, *SPO2, *TEMP, O2_FLOW, FIO2, ACVPU_CODE, *BLOOD_PRESSURE_PANELS]


def _value(obs: Observation, item: str) -> float | str | bool | None:
    if item == "systolic_bp" and obs.code != SBP:
        comp = next((c for c in obs.components if c.code == SBP), None)
        return comp.value if comp else None
    if item == "on_oxygen":
        if obs.value is None:
            return None
        return obs.value > (21.0 if obs.code == FIO2 else 0.0)
    if item == "consciousness":
        return ACVPU_SNOMED.get(obs.value_code or "")
    return obs.value


_ITEM_OF = {RR: "respiration_rate", PULSE: "pulse", SBP: "systolic_bp", O2_FLOW: "on_oxygen",
            FIO2: "on_oxygen", ACVPU_CODE: "consciousness",
            **{c: "spo2" for c in SPO2}, **{c: "temperature" for c in TEMP},
            **{c: "systolic_bp" for c in BLOOD_PRESSURE_PANELS}}


def vital_item(obs: Observation) -> tuple[str, object] | None:
    """The NEWS2 item an observation measures and its value, or None if it measures none."""
    item = _ITEM_OF.get(obs.code)
    if item is None:
        return None
    value = _value(obs, item)
    return None if value is None else (item, value)


def latest_items_many(store: EventStore, patient_ids: Sequence[str]
                      ) -> dict[str, dict[str, tuple[datetime, object]]]:
    """:func:`latest_items` for many patients, reading only each code's newest records.

    Exactly the same answer: where a code's newest record measures no item (e.g. a blood
    pressure panel without a systolic component), an older record might, so that patient's
    full timeline is read instead.
    """
    out = {}
    for pid, records in latest_per_code(store, patient_ids, CODES).items():
        items: dict[str, tuple[datetime, object]] = {}
        for o in records:
            hit = vital_item(o)  # type: ignore[arg-type]
            if hit is None:
                items = latest_items(store, pid)
                break
            items[hit[0]] = (o.time, hit[1])  # type: ignore[attr-defined]
        out[pid] = items
    return out


def vitals_from_items(items: dict[str, tuple[datetime, object]], *,
                      window: timedelta = timedelta(hours=1), spo2_scale: int = 1
                      ) -> tuple[Vitals, datetime | None]:
    """Vitals from the latest (time, value) of each item, keeping those within ``window`` of
    the newest; also returns the newest time."""
    if not items:
        return Vitals(spo2_scale=spo2_scale), None
    newest = max(t for t, _ in items.values())
    values = {k: v for k, (t, v) in items.items() if t >= newest - window}
    return Vitals(spo2_scale=spo2_scale, **values), newest  # type: ignore[arg-type]


def latest_vitals(store: EventStore, patient_id: str, *, at: datetime | None = None,
                  window: timedelta = timedelta(hours=1), spo2_scale: int = 1
                  ) -> tuple[Vitals, datetime | None]:
    """The latest value of each NEWS2 item taken within ``window`` of the newest reading.

    Returns the vitals and the time of the newest reading (None when there is none).
    Items with no reading in the window stay ``None`` (the score is then partial).
    """
    return vitals_from_items(latest_items(store, patient_id, at=at), window=window,
                             spo2_scale=spo2_scale)


def latest_items(store: EventStore, patient_id: str, *, at: datetime | None = None
                 ) -> dict[str, tuple[datetime, object]]:
    """The latest stored (time, value) of each NEWS2 item before ``at``."""
    items: dict[str, tuple[datetime, object]] = {}
    for o in store.timeline(patient_id, kinds=["observation"], codes=CODES, until=at):
        hit = vital_item(o)
        if hit is not None:  # time-ordered: later readings overwrite earlier ones
            items[hit[0]] = (o.time, hit[1])
    return items
