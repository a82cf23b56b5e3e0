"""The clinical-data policy every ingestion path applies: units, plausibility, clinical time.

REST writes, FHIR imports and device messages (MQTT; HL7 v2 next) all pass a reading through
:func:`admit` before it reaches the store. It lives in ``interop`` because that is the lowest
layer every ingestion path already imports and the one that knows codes and units (``core``
knows neither; ``store`` must not judge clinical content; ``monitor`` sits above the store and
would be a wrong dependency for the importer). ``monitor`` reads its plausible ranges from
here too, so there is one table.

- Units: a value of a modelled code is converted to the code's unit through
  :func:`medtwin.interop.codes.to_canonical` (the one conversion function); a unit of another
  dimension is refused saying which units are accepted.
- Plausibility: a value outside the physiologically possible range of its code (HR -5,
  1e308) is refused with the reason; such a value is a data error, never a score.
- Clinical time: a reading dated more than a clock-skew tolerance in the future (a device
  with a wrong clock) is *quarantined*: stored with the flag :data:`FUTURE_DATED` as evidence,
  shown flagged, never used as the latest value nor scored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from medtwin.core import codes
from medtwin.core.errors import UnitError, ValidationError
from medtwin.core.records import Component, Observation
from medtwin.interop.codes import spec, to_canonical
from medtwin.interop.units import accepted_units

FUTURE_TOLERANCE = timedelta(minutes=5)  # default clock-skew tolerance (Settings overrides)
FUTURE_DATED = "future-dated"

# Physiologically possible values per LOINC code, in the code's stored unit: outside them a
# value is a data error (a wrong unit, a sensor fault), not a measurement to score.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    codes.HEART_RATE: (10.0, 300.0),        # heart rate /min
    codes.RESPIRATORY_RATE: (0.0, 80.0),    # respiratory rate /min
    codes.SPO2_PULSE_OXIMETRY: (30.0, 100.0),  # SpO2 by pulse oximetry %
    codes.SAO2: (30.0, 100.0),              # SaO2 %
    codes.BODY_TEMPERATURE: (25.0, 45.0),   # body temperature Cel
    codes.ORAL_TEMPERATURE: (25.0, 45.0),   # oral temperature Cel
    codes.SYSTOLIC_BP: (30.0, 300.0),       # systolic BP mm[Hg]
    codes.DIASTOLIC_BP: (10.0, 250.0),      # diastolic BP mm[Hg]
    codes.MEAN_BP: (15.0, 280.0),           # mean BP mm[Hg]
    codes.BODY_WEIGHT: (0.2, 700.0),        # body weight kg
    codes.BODY_HEIGHT: (20.0, 280.0),       # body height cm
    codes.BMI: (5.0, 250.0),                # BMI kg/m2
    codes.O2_FLOW: (0.0, 80.0),             # inhaled O2 flow L/min
    codes.FIO2: (21.0, 100.0),              # FiO2 %
    codes.GLUCOSE_BLOOD: (5.0, 3000.0),     # glucose mg/dL (blood, serum, capillary, interstitial)
    codes.GLUCOSE_PLASMA: (5.0, 3000.0),
    codes.GLUCOSE_BLOOD_MOLAR: (5.0, 3000.0),
    codes.GLUCOSE_PLASMA_MOLAR: (5.0, 3000.0),
    codes.GLUCOSE_CAPILLARY: (5.0, 3000.0),
    codes.GLUCOSE_INTERSTITIAL: (5.0, 3000.0),
    codes.HBA1C: (2.0, 25.0),               # HbA1c %
}


@dataclass(frozen=True, slots=True)
class Admitted:
    """A reading ready for the store: normalised, plausible, and its data-quality flag
    (None: trusted)."""

    observation: Observation
    quality: str | None = None


def check_plausible(code: str, value: float | None, *, where: str = "value") -> None:
    """:class:`ValidationError` when ``value`` (in the code's stored unit) cannot be real."""
    if value is None:
        return
    bounds = PLAUSIBLE.get(code)
    if bounds is None:
        return
    lo, hi = bounds
    if not lo <= value <= hi:
        s = spec(code)
        what = s.display.lower() if s else f"LOINC {code}"
        unit = s.unit if s else ""
        raise ValidationError(f"{value:g} {unit} is outside the plausible range {lo:g}-{hi:g} "
                              f"{unit} for {what}; check the value and its unit", where=where)


def normalise(code: str, value: float, unit: str | None, *,
              where: str = "unit") -> tuple[float, str | None]:
    """``value`` in the unit medtwin keeps for ``code``; a unit that cannot be one of that
    quantity is refused with the units that are accepted."""
    try:
        out, canonical = to_canonical(code, value, unit, where=where)
    except UnitError as exc:
        s = spec(code)
        if s is None:  # pragma: no cover - to_canonical converts only modelled codes
            raise
        raise UnitError(f"{unit} is not a unit of {s.display.lower()}; send "
                        f"{accepted_units(s.unit)}", where=where) from exc
    return out, canonical


def clinical_time_flag(time: datetime, *, now: datetime | None = None,
                       tolerance: timedelta = FUTURE_TOLERANCE) -> str | None:
    """:data:`FUTURE_DATED` when ``time`` is more than ``tolerance`` after ``now``."""
    now = now or datetime.now(UTC)
    return FUTURE_DATED if time > now + tolerance else None


def admit(obs: Observation, *, now: datetime | None = None,
          tolerance: timedelta = FUTURE_TOLERANCE, where: str = "Observation") -> Admitted:
    """Apply the policy to one reading: normalise its units (value and components), refuse
    an implausible value (:class:`ValidationError` naming the field), and flag a reading
    dated beyond ``tolerance`` in the future."""
    changes: dict[str, object] = {}
    if obs.value is not None:
        value, unit = normalise(obs.code, obs.value, obs.unit, where=f"{where}.unit")
        check_plausible(obs.code, value, where=f"{where}.value")
        if (value, unit) != (obs.value, obs.unit):
            changes.update(value=value, unit=unit)
    if obs.components:
        comps = []
        for i, c in enumerate(obs.components):
            if c.value is None:
                comps.append(c)
                continue
            v, u = normalise(c.code, c.value, c.unit, where=f"{where}.component[{i}].unit")
            check_plausible(c.code, v, where=f"{where}.component[{i}].value")
            comps.append(c if (v, u) == (c.value, c.unit)
                         else Component(c.code, v, u, c.system, c.display))
        if tuple(comps) != obs.components:
            changes["components"] = tuple(comps)
    if changes:
        obs = dataclasses.replace(obs, **changes)  # type: ignore[arg-type]
    return Admitted(obs, clinical_time_flag(obs.time, now=now, tolerance=tolerance))
