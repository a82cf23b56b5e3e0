"""The LOINC codes medtwin models, with the unit each is stored in.

A value with a modelled code is converted to that unit at import; a value with any other
code is stored as it came (original code and unit), never dropped. Molar masses (g/mol) let
substance concentrations (mmol/L) convert to mass concentrations (mg/dL).
"""

from __future__ import annotations

from dataclasses import dataclass

from medtwin.core import codes
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
    CodeSpec(codes.HEART_RATE, "Heart rate", "/min"),
    CodeSpec(codes.RESPIRATORY_RATE, "Respiratory rate", "/min"),
    CodeSpec(codes.SPO2_PULSE_OXIMETRY, "Oxygen saturation in Arterial blood by Pulse oximetry",
             "%"),
    CodeSpec(codes.SAO2, "Oxygen saturation in Arterial blood", "%"),
    CodeSpec(codes.BODY_TEMPERATURE, "Body temperature", "Cel"),
    CodeSpec(codes.ORAL_TEMPERATURE, "Oral temperature", "Cel"),
    CodeSpec(codes.SYSTOLIC_BP, "Systolic blood pressure", "mm[Hg]"),
    CodeSpec(codes.DIASTOLIC_BP, "Diastolic blood pressure", "mm[Hg]"),
    CodeSpec(codes.MEAN_BP, "Mean blood pressure", "mm[Hg]"),
    CodeSpec(codes.BODY_WEIGHT, "Body weight", "kg"),
    CodeSpec(codes.BODY_HEIGHT, "Body height", "cm"),
    CodeSpec(codes.BMI, "Body mass index", "kg/m2"),
    CodeSpec(codes.O2_FLOW, "Inhaled oxygen flow rate", "L/min"),
    CodeSpec(codes.FIO2, "Inhaled oxygen concentration", "%"),
    # glucose, in every specimen medtwin's glucose twin reads
    CodeSpec(codes.GLUCOSE_BLOOD, "Glucose [Mass/volume] in Blood", "mg/dL",
             GLUCOSE_MOLAR_MASS),
    CodeSpec(codes.GLUCOSE_PLASMA, "Glucose [Mass/volume] in Serum or Plasma", "mg/dL",
             GLUCOSE_MOLAR_MASS),
    CodeSpec(codes.GLUCOSE_BLOOD_MOLAR, "Glucose [Moles/volume] in Blood", "mg/dL",
             GLUCOSE_MOLAR_MASS),
    CodeSpec(codes.GLUCOSE_PLASMA_MOLAR, "Glucose [Moles/volume] in Serum or Plasma", "mg/dL",
             GLUCOSE_MOLAR_MASS),
    CodeSpec(codes.GLUCOSE_CAPILLARY, "Glucose [Mass/volume] in Capillary blood by Glucometer",
             "mg/dL", GLUCOSE_MOLAR_MASS),
    CodeSpec(codes.GLUCOSE_INTERSTITIAL, "Glucose [Mass/volume] in Interstitial fluid", "mg/dL",
             GLUCOSE_MOLAR_MASS),
    CodeSpec(codes.HBA1C, "Hemoglobin A1c/Hemoglobin.total in Blood", "%"),
    # drug levels
    CodeSpec(codes.VANCOMYCIN_TROUGH, "Vancomycin [Mass/volume] in Serum or Plasma --trough",
             "mg/L"),
    CodeSpec(codes.VANCOMYCIN, "Vancomycin [Mass/volume] in Serum or Plasma", "mg/L"),
    CodeSpec(codes.THEOPHYLLINE, "Theophylline [Mass/volume] in Serum or Plasma", "mg/L"),
    CodeSpec(codes.CREATININE_BLOOD, "Creatinine [Mass/volume] in Blood", "mg/dL"),
    CodeSpec(codes.CREATININE_SERUM, "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"),
]

MODELLED: dict[str, CodeSpec] = {s.code: s for s in _SPECS}

BLOOD_PRESSURE_PANELS = set(codes.BP_PANELS)
VITAL_SIGNS = {codes.HEART_RATE, codes.RESPIRATORY_RATE, codes.SPO2_PULSE_OXIMETRY, codes.SAO2,
               codes.BODY_TEMPERATURE, codes.ORAL_TEMPERATURE, codes.SYSTOLIC_BP,
               codes.DIASTOLIC_BP, codes.BODY_WEIGHT, codes.BODY_HEIGHT, codes.BMI,
               *BLOOD_PRESSURE_PANELS}


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
