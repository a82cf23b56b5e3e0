"""Assemble a NEWS2 set of vitals from a patient's latest stored observations.

Only trusted readings count: the store leaves out readings with a data-quality flag (e.g.
dated in the future), so they are never "the latest". A parameter whose latest reading is
older than its staleness window (:data:`STALE_AFTER`) is not scored and is named as stale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from medtwin.core import codes
from medtwin.core.errors import ValidationError
from medtwin.core.records import Observation
from medtwin.interop.codes import BLOOD_PRESSURE_PANELS
from medtwin.monitor.news2 import (
    ITEMS,
    News2,
    Vitals,
    band_text,
    item_label,
    news2,
    untrusted_text,
)
from medtwin.store.event_store import EventStore
from medtwin.store.latest import latest_per_code

RR, PULSE, SBP = codes.RESPIRATORY_RATE, codes.HEART_RATE, codes.SYSTOLIC_BP
SPO2 = (codes.SPO2_PULSE_OXIMETRY, codes.SAO2)
TEMP = (codes.BODY_TEMPERATURE, codes.ORAL_TEMPERATURE)
O2_FLOW, FIO2, ACVPU_CODE = codes.O2_FLOW, codes.FIO2, codes.RESPONSIVENESS
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


# How old (before the time the score is for) an item's latest reading may be and still be
# scored, per item: a reading outside it is stale. One hour for each by default (the
# charting interval of an unwell patient); pass another mapping to change one.
STALE_AFTER: Mapping[str, timedelta] = {
    "respiration_rate": timedelta(hours=1), "spo2": timedelta(hours=1),
    "on_oxygen": timedelta(hours=1), "systolic_bp": timedelta(hours=1),
    "pulse": timedelta(hours=1), "consciousness": timedelta(hours=1),
    "temperature": timedelta(hours=1)}
_NEWS2_NAME = {"on_oxygen": "air_or_oxygen"}
_STORED_NAME = {"air_or_oxygen": "on_oxygen"}


def vitals_from_items(items: dict[str, tuple[datetime, object]], *,
                      window: timedelta | None = None, spo2_scale: int = 1,
                      at: datetime | None = None,
                      stale_after: Mapping[str, timedelta] = STALE_AFTER
                      ) -> tuple[Vitals, datetime | None]:
    """Vitals from the latest (time, value) of each item, keeping those that are current:
    within their staleness window (``window`` for every item, else ``stale_after``) before
    ``at`` (default: the newest reading). Stale items are named in ``Vitals.stale``. Also
    returns the newest time."""
    if not items:
        return Vitals(spo2_scale=spo2_scale), None
    newest = max(t for t, _ in items.values())
    ref = at or newest
    values, stale = {}, []
    for k, (t, v) in items.items():
        limit = window if window is not None else stale_after.get(k, timedelta(hours=1))
        if t >= ref - limit:
            values[k] = v
        else:
            stale.append(_NEWS2_NAME.get(k, k))
    return Vitals(spo2_scale=spo2_scale, stale=tuple(stale),
                  **values), newest  # type: ignore[arg-type]


def latest_vitals(store: EventStore, patient_id: str, *, at: datetime | None = None,
                  window: timedelta | None = None, spo2_scale: int = 1,
                  stale_after: Mapping[str, timedelta] = STALE_AFTER
                  ) -> tuple[Vitals, datetime | None]:
    """The latest trusted value of each NEWS2 item that is still current (see
    :func:`vitals_from_items`; with ``at``, current at that time).

    Returns the vitals and the time of the newest reading (None when there is none).
    Items with no current reading stay ``None`` (the score is then partial and says why).
    """
    return vitals_from_items(latest_items(store, patient_id, at=at), window=window,
                             spo2_scale=spo2_scale, at=at, stale_after=stale_after)


def latest_items(store: EventStore, patient_id: str, *, at: datetime | None = None
                 ) -> dict[str, tuple[datetime, object]]:
    """The latest stored (time, value) of each NEWS2 item before ``at``."""
    items: dict[str, tuple[datetime, object]] = {}
    for o in store.timeline(patient_id, kinds=["observation"], codes=CODES, until=at):
        hit = vital_item(o)
        if hit is not None:  # time-ordered: later readings overwrite earlier ones
            items[hit[0]] = (o.time, hit[1])
    return items


class ItemStatus(StrEnum):
    """Whether a NEWS2 item's latest reading was scored, and if not, why."""

    SCORED = "scored"
    STALE = "stale"  # measured, but longer ago than its window
    MISSING = "missing"  # never measured (or only by readings the store did not trust)
    UNTRUSTED = "untrusted"  # outside the plausible range: a data error, never scored


@dataclass(frozen=True, slots=True)
class ItemReading:
    """One NEWS2 item as a chart shows it: its latest reading, when it was taken, and the
    points it scored (None when it was not scored; ``status`` says why)."""

    item: str  # the NEWS2 item name (:data:`medtwin.monitor.news2.ITEMS`)
    label: str  # as charted, e.g. "SpO2 (scale 1)"
    status: ItemStatus
    value: object | None = None
    time: datetime | None = None
    points: int | None = None
    band: str = ""  # the NEWS2 band the scored value fell in, e.g. "21-24 /min"
    window: timedelta | None = None  # how old a reading may be and still be scored
    problem: str = ""  # why an untrusted value was not scored


@dataclass(frozen=True, slots=True)
class News2Breakdown:
    """A NEWS2 score with every item: what was scored for how many points, what was missing,
    stale or untrusted. ``score`` is None when no item could be scored."""

    score: News2 | None
    items: tuple[ItemReading, ...]
    at: datetime
    spo2_scale: int = 1

    def unscored(self) -> tuple[ItemReading, ...]:
        """The items that did not count towards the score."""
        return tuple(r for r in self.items if r.status is not ItemStatus.SCORED)


def news2_breakdown(items: Mapping[str, tuple[datetime, object]], *, at: datetime,
                    spo2_scale: int = 1,
                    stale_after: Mapping[str, timedelta] = STALE_AFTER) -> News2Breakdown:
    """Score the latest trusted (time, value) of each item as of ``at`` and say, item by
    item, what counted: a reading older than its window is stale, a value outside the
    plausible range is untrusted (neither is scored). The score's total is the sum of the
    items' points."""
    current: dict[str, object] = {}
    stale: list[str] = []
    pending: dict[str, ItemReading] = {}
    for item in ITEMS:
        key = _STORED_NAME.get(item, item)
        label = item_label(item, spo2_scale)
        window = stale_after.get(key, timedelta(hours=1))
        if key not in items:
            pending[item] = ItemReading(item, label, ItemStatus.MISSING, window=window)
            continue
        t, v = items[key]
        if t < at - window:
            stale.append(item)
            pending[item] = ItemReading(item, label, ItemStatus.STALE, v, t, window=window)
            continue
        try:
            Vitals(**{key: v})  # type: ignore[arg-type]
        except ValidationError as exc:
            problem = untrusted_text(item, v) if isinstance(v, int | float) else exc.message
            pending[item] = ItemReading(item, label, ItemStatus.UNTRUSTED, v, t,
                                        window=window, problem=problem)
            continue
        current[key] = v
        pending[item] = ItemReading(item, label, ItemStatus.SCORED, v, t, window=window)
    if not current:
        return News2Breakdown(None, tuple(pending.values()), at, spo2_scale)
    score = news2(Vitals(spo2_scale=spo2_scale, stale=tuple(stale),
                         **current))  # type: ignore[arg-type]
    on_oxygen = current.get("on_oxygen")
    out = []
    for item, r in pending.items():
        if r.status is ItemStatus.SCORED:
            r = ItemReading(item, r.label, r.status, r.value, r.time, score.points[item],
                            band_text(item, r.value, spo2_scale=spo2_scale,
                                      on_oxygen=on_oxygen),  # type: ignore[arg-type]
                            r.window)
        out.append(r)
    return News2Breakdown(score, tuple(out), at, spo2_scale)
