"""The LOINC codes medtwin names in code: one constant each, the one place they are typed.

They live in ``core`` because every layer reads them: models tag their outputs with them,
``interop`` describes and converts them (:mod:`medtwin.interop.codes` keeps each one's
display name and canonical unit), the monitor, twins and dashboard select readings by them.
"""

from __future__ import annotations

# --- vital signs (FHIR vital-signs profile) ------------------------------------------------
HEART_RATE = "8867-4"
RESPIRATORY_RATE = "9279-1"
SPO2_PULSE_OXIMETRY = "59408-5"
SAO2 = "2708-6"
BODY_TEMPERATURE = "8310-5"
ORAL_TEMPERATURE = "8331-1"
SYSTOLIC_BP = "8480-6"
DIASTOLIC_BP = "8462-4"
MEAN_BP = "8478-0"
BODY_WEIGHT = "29463-7"
BODY_HEIGHT = "8302-2"
BMI = "39156-5"
O2_FLOW = "3151-8"
FIO2 = "3150-0"
#: level of responsiveness (ACVPU)
RESPONSIVENESS = "67775-7"
#: pain severity 0-10, verbal numeric rating
PAIN_SCORE = "72514-3"
#: the current blood-pressure panel, and the older one Synthea 2 uses
BP_PANEL = "85354-9"
BP_PANEL_OLD = "55284-4"
BP_PANELS = frozenset({BP_PANEL, BP_PANEL_OLD})

# --- haemodynamics -------------------------------------------------------------------------
CENTRAL_VENOUS_PRESSURE = "60985-9"
EJECTION_FRACTION = "10230-1"
CARDIAC_OUTPUT = "8741-1"

# --- glucose ---------------------------------------------------------------------------------
GLUCOSE_BLOOD = "2339-0"  # mass/volume in blood
GLUCOSE_PLASMA = "2345-7"  # mass/volume in serum or plasma
GLUCOSE_BLOOD_MOLAR = "15074-8"  # moles/volume in blood
GLUCOSE_PLASMA_MOLAR = "14749-6"  # moles/volume in serum or plasma
GLUCOSE_CAPILLARY = "41653-7"  # capillary blood by glucometer
GLUCOSE_INTERSTITIAL = "99504-3"  # interstitial fluid: what a CGM reads
CGM_GLUCOSE = GLUCOSE_INTERSTITIAL
#: every glucose code medtwin reads, in any specimen
GLUCOSE_CODES = frozenset({GLUCOSE_INTERSTITIAL, GLUCOSE_BLOOD, GLUCOSE_PLASMA,
                           GLUCOSE_CAPILLARY, GLUCOSE_BLOOD_MOLAR, GLUCOSE_PLASMA_MOLAR})
HBA1C = "4548-4"

# --- drug levels and renal function --------------------------------------------------------
VANCOMYCIN_TROUGH = "4092-3"
VANCOMYCIN = "20578-1"
THEOPHYLLINE = "4049-3"
CREATININE_BLOOD = "38483-4"
CREATININE_SERUM = "2160-0"
