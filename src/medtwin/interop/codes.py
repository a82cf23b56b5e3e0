"""The LOINC codes medtwin models, with the unit each is stored in.

A value with a modelled code is converted to that unit at import; a value with any other
code is stored as it came (original code and unit), never dropped. Molar masses (g/mol) let
substance concentrations (mmol/L) convert to mass concentrations (mg/dL).
"""

from __future__ import annotations

from dataclasses import dataclass

from medtwin.core.errors import UnitError
from medtwin.interop import units


@dataclass(frozen=True, slots=True)
class CodeSpec:
    """What medtwin knows of one LOINC code."""

    code: str
    display: str
    unit: str
    molar_mass: float | None = None


GLUCOSE_MOLAR_MASS = 180.156  # g/mol, D-glucose C6H12O6

_SPECS = [
    # vital signs (FHIR vital-signs profile codes)
    CodeSpec("8867-4", "Heart rate", "/min"),
    CodeSpec("9279-1", "Respiratory rate", "/min"),
    CodeSpec("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%"),
    CodeSpec("2708-6", "Oxygen saturation in Arterial blood", "%"),
    CodeSpec("8310-5", "Body temperature", "Cel"),
    CodeSpec("8331-1", "Oral temperature", "Cel"),
    CodeSpec("8480-6", "Systolic blood pressure", "mm[Hg]"),
    CodeSpec("8462-4", "Diastolic blood pressure", "mm[Hg]"),
    CodeSpec("8478-0", "Mean blood pressure", "mm[Hg]"),
    CodeSpec("29463-7", "Body weight", "kg"),
    CodeSpec("8302-2", "Body height", "cm"),
    CodeSpec("39156-5", "Body mass index", "kg/m2"),
    CodeSpec("3151-8", "Inhaled oxygen flow rate", "L/min"),
    CodeSpec("3150-0", "Inhaled oxygen concentration", "%"),
    # glucose, in every specimen medtwin's glucose twin reads
    CodeSpec("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", GLUCOSE_MOLAR_MASS),
    CodeSpec("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", GLUCOSE_MOLAR_MASS),
    CodeSpec("15074-8", "Glucose [Moles/volume] in Blood", "mg/dL", GLUCOSE_MOLAR_MASS),
    CodeSpec("14749-6", "Glucose [Moles/volume] in Serum or Plasma", "mg/dL", GLUCOSE_MOLAR_MASS),
    CodeSpec("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer", "mg/dL",
             GLUCOSE_MOLAR_MASS),
    CodeSpec("99504-3", "Glucose [Mass/volume] in Interstitial fluid", "mg/dL",
             GLUCOSE_MOLAR_MASS),
    CodeSpec("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%"),
    # drug levels
    CodeSpec("4092-3", "Vancomycin [Mass/volume] in Serum or Plasma --trough", "mg/L"),
    CodeSpec("20578-1", "Vancomycin [Mass/volume] in Serum or Plasma", "mg/L"),
    CodeSpec("4049-3", "Theophylline [Mass/volume] in Serum or Plasma", "mg/L"),
    CodeSpec("38483-4", "Creatinine [Mass/volume] in Blood", "mg/dL"),
    CodeSpec("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"),
]

MODELLED: dict[str, CodeSpec] = {s.code: s for s in _SPECS}

# the current blood-pressure panel, and the older one Synthea 2 uses
BLOOD_PRESSURE_PANELS = {"85354-9", "55284-4"}
VITAL_SIGNS = {"8867-4", "9279-1", "59408-5", "2708-6", "8310-5", "8331-1", "8480-6", "8462-4",
               "29463-7", "8302-2", "39156-5", *BLOOD_PRESSURE_PANELS}


def spec(code: str) -> CodeSpec | None:
    """The spec of a modelled LOINC code, or None when medtwin does not model it."""
    return MODELLED.get(code)


def to_canonical(code: str, value: float, unit: str | None, *,
                 where: str = "value") -> tuple[float, str | None]:
    """``value`` in the unit medtwin keeps for ``code`` (unchanged for unmodelled codes)."""
    s = spec(code)
    if s is None or unit is None or unit == s.unit:
        return value, unit
    try:
        return units.convert(value, unit, s.unit, molar_mass=s.molar_mass), s.unit
    except UnitError as exc:
        raise UnitError(f"{exc.message}; LOINC {code} is kept in {s.unit!r}", where=where) from exc
