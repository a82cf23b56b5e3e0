"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017).

Seven items score 0-3 each: respiration rate, SpO2 (scale 1, or scale 2 for patients with
hypercapnic respiratory failure whose target is 88-92%), air or supplemental oxygen,
systolic blood pressure, pulse, consciousness (ACVPU: new confusion counts as C) and
temperature. The aggregate gives the clinical risk: low (0-4), low-medium when any single
item scores 3 (a "red score") and the aggregate is below 5, medium (5-6), high (>= 7).

Measured values are rounded as they are charted: rates, pressure, pulse and SpO2 to whole
numbers, temperature to one decimal. Missing items make the score *partial*: it is still
computed from what is there, and says which items are missing and which were left out as
stale (measured, but too long ago to describe the patient now).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from medtwin.core import codes
from medtwin.core.errors import ValidationError
from medtwin.interop.quality import PLAUSIBLE


class Risk(StrEnum):
    """NEWS2 clinical risk bands."""

    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"


ITEMS = ("respiration_rate", "spo2", "air_or_oxygen", "systolic_bp", "pulse",
         "consciousness", "temperature")
ACVPU = {"A": 0, "C": 3, "V": 3, "P": 3, "U": 3}

# (upper bound inclusive, points): a value scores the points of the first bound it is <= to
_RR = ((8, 3), (11, 1), (20, 0), (24, 2), (math.inf, 3))
_SPO2_1 = ((91, 3), (93, 2), (95, 1), (math.inf, 0))
_SPO2_2_LOW = ((83, 3), (85, 2), (87, 1), (92, 0))
_SPO2_2_O2 = ((94, 1), (96, 2), (math.inf, 3))  # >= 93 on oxygen
_SBP = ((90, 3), (100, 2), (110, 1), (219, 0), (math.inf, 3))
_PULSE = ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2), (math.inf, 3))
_TEMP = ((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1), (math.inf, 2))

# plausible ranges (the one table, in interop.quality): outside them a value is a data
# error, not a score
_RANGES = {item: PLAUSIBLE[code] for item, code in (
    ("respiration_rate", codes.RESPIRATORY_RATE), ("spo2", codes.SPO2_PULSE_OXIMETRY),
    ("systolic_bp", codes.SYSTOLIC_BP), ("pulse", codes.HEART_RATE),
    ("temperature", codes.BODY_TEMPERATURE))}


@dataclass(frozen=True, slots=True)
class Vitals:
    """One set of observations. ``None`` marks an item not measured."""

    respiration_rate: float | None = None
    spo2: float | None = None
    on_oxygen: bool | None = None
    systolic_bp: float | None = None
    pulse: float | None = None
    consciousness: str | None = None
    temperature: float | None = None
    spo2_scale: int = 1
    stale: tuple[str, ...] = ()  # items measured too long ago to be scored (left None)

    def __post_init__(self) -> None:
        for name, (lo, hi) in _RANGES.items():
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v)
                                      and lo <= v <= hi):
                raise ValidationError(f"{v!r} is outside the plausible range {lo}-{hi}; "
                                      "check the value and its unit", where=f"NEWS2.{name}")
        if self.consciousness is not None and self.consciousness.upper() not in ACVPU:
            raise ValidationError(f"{self.consciousness!r} is not one of A, C, V, P, U",
                                  where="NEWS2.consciousness")
        if self.spo2_scale not in (1, 2):
            raise ValidationError(f"SpO2 scale must be 1 or 2, got {self.spo2_scale}",
                                  where="NEWS2.spo2_scale")


@dataclass(frozen=True, slots=True)
class News2:
    """A NEWS2 result: the total, each item's points, the risk band, and what was missing."""

    total: int
    points: dict[str, int]
    risk: Risk
    missing: tuple[str, ...] = field(default=())
    stale: tuple[str, ...] = field(default=())

    @property
    def partial(self) -> bool:
        """True when some item was not measured or is stale (the score may understate the
        risk)."""
        return bool(self.missing or self.stale)

    def explain(self) -> str:
        """Why the score is partial, e.g. ``missing spo2; stale temperature`` ("" if whole)."""
        parts = [f"{what} {', '.join(items)}" for what, items in
                 (("missing", self.missing), ("stale", self.stale)) if items]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"total": self.total, "risk": self.risk.value, "points": dict(self.points),
                "partial": self.partial, "missing": list(self.missing),
                "stale": list(self.stale)}


def _band(value: float, table: tuple[tuple[float, int], ...]) -> int:
    for upper, points in table:
        if value <= upper:
            return points
    raise AssertionError("tables end at infinity")  # pragma: no cover


def _spo2_points(spo2: float, scale: int, on_oxygen: bool | None) -> int:
    s = round(spo2)
    if scale == 1:
        return _band(s, _SPO2_1)
    if s <= 92:
        return _band(s, _SPO2_2_LOW)
    return _band(s, _SPO2_2_O2) if on_oxygen else 0


#: each item as a clinician names it on the NEWS2 chart, and its unit ("" when it has none)
ITEM_WORDS: dict[str, tuple[str, str]] = {
    "respiration_rate": ("Respiration rate", "/min"), "spo2": ("SpO2", "%"),
    "air_or_oxygen": ("Air or oxygen", ""), "systolic_bp": ("Systolic BP", "mmHg"),
    "pulse": ("Heart rate", "/min"), "consciousness": ("Consciousness", ""),
    "temperature": ("Temperature", "°C")}
_ACVPU_WORDS = {"A": "alert", "C": "new confusion", "V": "responds to voice",
                "P": "responds to pain", "U": "unresponsive"}
_TABLES = {"respiration_rate": _RR, "systolic_bp": _SBP, "pulse": _PULSE, "temperature": _TEMP}


def untrusted_text(item: str, value: object) -> str:
    """Why a value is not scored, in words with its unit (outside the plausible range)."""
    unit = ITEM_WORDS[item][1]
    lo, hi = _RANGES[item]
    return (f"{value:g} {unit} is outside the plausible range {lo:g}-{hi:g} {unit}: check the "
            "reading and its unit").replace(" %", "%")


def item_label(item: str, spo2_scale: int = 1) -> str:
    """An item's name as charted, e.g. ``SpO2 (scale 2)`` (the scale is part of the name)."""
    label = ITEM_WORDS[item][0]
    return f"{label} (scale {spo2_scale})" if item == "spo2" else label


def amount(value: float, unit: str, *, decimals: int = 0) -> str:
    """A value with its unit as written on a chart: ``94%``, ``25 /min``, ``37.2 °C``."""
    number = f"{value:.{decimals}f}"
    return f"{number}{unit}" if unit == "%" else f"{number} {unit}".rstrip()


def value_text(item: str, value: object) -> str:
    """An item's value in words with its unit, rounded as NEWS2 scores it."""
    if item == "air_or_oxygen":
        return "on supplemental oxygen" if value else "on room air"
    if item == "consciousness":
        letter = str(value).upper()
        return f"{_ACVPU_WORDS.get(letter, letter)} ({letter})"
    unit = ITEM_WORDS[item][1]
    return amount(float(value), unit, decimals=1 if item == "temperature" else 0)  # type: ignore[arg-type]


def _range_text(table: tuple[tuple[float, int], ...], value: float, unit: str, *,
                step: float = 1.0, floor: float | None = None) -> str:
    """The band of ``table`` that ``value`` falls in, e.g. ``21-24 /min``, ``<= 8 /min``."""
    decimals = 1 if step < 1 else 0
    lower = None if floor is None else floor - step
    upper = math.inf
    for upper, _ in table:
        if value <= upper:
            break
        lower = upper
    lo = None if lower is None else lower + step
    if lo is None:
        return f"≤ {amount(upper, unit, decimals=decimals)}"
    if math.isinf(upper):
        return f"≥ {amount(lo, unit, decimals=decimals)}"
    if lo == upper:
        return amount(lo, unit, decimals=decimals)
    return f"{lo:.{decimals}f}-{amount(upper, unit, decimals=decimals)}"


def band_text(item: str, value: object, *, spo2_scale: int = 1,
              on_oxygen: bool | None = None) -> str:
    """The NEWS2 band a measured value falls in (the threshold behind its points), in words;
    "" for air or oxygen and consciousness, whose value is its own band."""
    if item in ("air_or_oxygen", "consciousness"):
        return ""
    unit = ITEM_WORDS[item][1]
    if item == "spo2":
        s = round(float(value))  # type: ignore[arg-type]
        if spo2_scale == 1:
            return _range_text(_SPO2_1, s, unit)
        if s <= 92:
            return _range_text(_SPO2_2_LOW, s, unit)
        if on_oxygen:
            return _range_text(_SPO2_2_O2, s, unit, floor=93) + " on oxygen"
        return f"≥ 93% on {'room air' if on_oxygen is False else 'air or unknown oxygen'}"
    step = 0.1 if item == "temperature" else 1.0
    v = round(float(value), 1) if item == "temperature" else round(float(value))  # type: ignore[arg-type]
    return _range_text(_TABLES[item], v, unit, step=step)


def news2(v: Vitals) -> News2:
    """Score one set of vitals."""
    points: dict[str, int] = {}
    if v.respiration_rate is not None:
        points["respiration_rate"] = _band(round(v.respiration_rate), _RR)
    if v.spo2 is not None:
        points["spo2"] = _spo2_points(v.spo2, v.spo2_scale, v.on_oxygen)
    if v.on_oxygen is not None:
        points["air_or_oxygen"] = 2 if v.on_oxygen else 0
    if v.systolic_bp is not None:
        points["systolic_bp"] = _band(round(v.systolic_bp), _SBP)
    if v.pulse is not None:
        points["pulse"] = _band(round(v.pulse), _PULSE)
    if v.consciousness is not None:
        points["consciousness"] = ACVPU[v.consciousness.upper()]
    if v.temperature is not None:
        points["temperature"] = _band(round(v.temperature, 1), _TEMP)
    total = sum(points.values())
    if total >= 7:
        risk = Risk.HIGH
    elif total >= 5:
        risk = Risk.MEDIUM
    elif 3 in points.values():
        risk = Risk.LOW_MEDIUM
    else:
        risk = Risk.LOW
    stale = tuple(i for i in ITEMS if i in v.stale and i not in points)
    missing = tuple(i for i in ITEMS if i not in points and i not in stale)
    return News2(total=total, points=points, risk=risk, missing=missing, stale=stale)
