"""UCUM units, converted by name with pint (through ucumvert's UCUM grammar).

This is the one place where medtwin converts units: interop normalises values to the unit
each code needs (see :mod:`medtwin.interop.codes`) before anything reaches the store or a twin.
A substance conversion (mmol/L <-> mg/dL) uses the analyte's molar mass from the code table.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from medtwin.core.errors import UnitError


@lru_cache(maxsize=1)
def _registry() -> Any:
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@lru_cache(maxsize=512)
def parse_ucum(code: str) -> Any:
    """Return the pint unit of a UCUM code; :class:`UnitError` if it is not valid UCUM."""
    if not code or not code.strip():
        raise UnitError("empty unit; give a UCUM code such as 'mg/dL'", where="unit")
    try:
        return _registry().from_ucum(code.strip()).units
    except Exception as exc:  # ucumvert raises lark errors and AttributeError on annotations
        raise UnitError(
            f"{code!r} is not a UCUM unit ({str(exc).splitlines()[0]}); "
            "write units as UCUM codes, e.g. 'mg/dL', 'mm[Hg]', 'Cel', '[lb_av]'",
            where="unit",
        ) from exc


def is_ucum(code: str) -> bool:
    """True when ``code`` parses as a UCUM unit."""
    try:
        parse_ucum(code)
    except UnitError:
        return False
    return True


@lru_cache(maxsize=1024)
def _factor_offset(src: str, dst: str, molar_mass: float | None) -> tuple[float, float]:
    """Linear map (factor, offset) with dst = factor * src + offset, found by pint."""
    reg = _registry()
    a, b = parse_ucum(src), parse_ucum(dst)
    q = reg.Quantity
    try:
        if molar_mass is not None and not reg.Quantity(1.0, a).is_compatible_with(b):
            mm = q(molar_mass, reg.parse_units("g/mol"))
            conv = lambda x: (q(x, a) * mm).to(b).magnitude  # noqa: E731
            if not (q(1.0, a) * mm).is_compatible_with(b):
                conv = lambda x: (q(x, a) / mm).to(b).magnitude  # noqa: E731
        else:
            conv = lambda x: q(x, a).to(b).magnitude  # noqa: E731
        y0, y1 = float(conv(0.0)), float(conv(1.0))
    except Exception as exc:  # pint DimensionalityError and friends
        raise UnitError(
            f"cannot convert {src!r} to {dst!r}: the dimensions differ", where="unit"
        ) from exc
    return y1 - y0, y0


def convert(value: float, src: str, dst: str, *, molar_mass: float | None = None) -> float:
    """Convert ``value`` from UCUM unit ``src`` to ``dst`` (by name; molar mass for mol<->g)."""
    if src == dst:
        return value
    factor, offset = _factor_offset(src, dst, molar_mass)
    return float(f"{factor * value + offset:.12g}")  # no float noise: 104 [degF] is 40 Cel


# other units a sender commonly uses for a quantity medtwin keeps in the key's unit (what an
# error message suggests; any unit of the same dimension converts)
COMMON_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "Cel": ("[degF]",), "mg/dL": ("mmol/L",), "kg": ("[lb_av]",), "cm": ("[in_i]",),
    "mm[Hg]": ("kPa",), "mg/L": ("ug/mL",),
}


def accepted_units(canonical: str) -> str:
    """``canonical`` and its common alternatives as a phrase: ``Cel or [degF]``."""
    options = (canonical, *COMMON_ALTERNATIVES.get(canonical, ()))
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
