"""UCUM conversion by name, checked against exact definitions."""

from __future__ import annotations

import pytest

from medtwin.core.errors import UnitError
from medtwin.interop.units import convert, is_ucum


def test_exact_definitions():
    assert convert(212, "[degF]", "Cel") == pytest.approx(100.0)
    assert convert(-40, "[degF]", "Cel") == pytest.approx(-40.0)
    assert convert(1, "[lb_av]", "kg") == pytest.approx(0.45359237)  # the avoirdupois pound
    assert convert(1, "[in_i]", "cm") == pytest.approx(2.54)
    assert convert(760, "mm[Hg]", "kPa") == pytest.approx(101.325, rel=1e-4)
    assert convert(1, "mmol/L", "mg/dL", molar_mass=180.156) == pytest.approx(18.0156)
    assert convert(180.156, "mg/dL", "mmol/L", molar_mass=180.156) == pytest.approx(10.0)


def test_bad_units_are_typed_errors():
    assert is_ucum("mg/dL") and not is_ucum("furlongs per fortnight")
    with pytest.raises(UnitError, match="not a UCUM unit"):
        convert(1, "bananas", "kg")
    with pytest.raises(UnitError, match="dimensions differ"):
        convert(1, "kg", "Cel")
