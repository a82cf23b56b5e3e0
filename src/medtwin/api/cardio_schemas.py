"""Request and response bodies of the cardio twin (``/twins/{id}/cardio``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from medtwin.api.schemas import _In
from medtwin.twin.cardio_service import DRAW_BUDGET, MAX_DRAWS, MAX_HORIZON, WHAT_IFS

#: a what-if scenario by name (``medtwin.twin.cardio.SCENARIOS``)
CardioScenario = Literal[WHAT_IFS]  # type: ignore[valid-type]


class CardioOutputs(BaseModel):
    """Cycle-averaged haemodynamics: means over the last five beats."""

    HR: float = Field(description="heart rate [/min] (LOINC 8867-4)")
    SBP: float = Field(description="systolic arterial pressure [mmHg] (LOINC 8480-6)")
    DBP: float = Field(description="diastolic arterial pressure [mmHg] (LOINC 8462-4)")
    MAP: float = Field(description="mean arterial pressure [mmHg] (LOINC 8478-0)")
    PAS: float = Field(description="pulmonary arterial systolic pressure [mmHg]")
    PAD: float = Field(description="pulmonary arterial diastolic pressure [mmHg]")
    mPAP: float = Field(description="mean pulmonary arterial pressure [mmHg]")
    CVP: float = Field(description="central venous pressure [mmHg] (LOINC 60985-9)")
    LVEDV: float = Field(description="left ventricular end-diastolic volume [mL]")
    LVESV: float = Field(description="left ventricular end-systolic volume [mL]")
    SV: float = Field(description="stroke volume [mL]")
    EF: float = Field(description="ejection fraction [1] (LOINC 10230-1)")
    CO: float = Field(description="cardiac output [L/min] (LOINC 8741-1)")


class ParameterOut(BaseModel):
    """A personalised parameter: its estimate and 95% interval."""

    name: str
    unit: str
    estimate: float
    low95: float
    high95: float
    log_sd: float = Field(description="posterior standard deviation of its logarithm")


class BandPoint(BaseModel):
    """One output at one time ahead: the mean over posterior draws and its 90% band."""

    seconds: float = Field(description="seconds after twin_time")
    time: datetime
    mean: float
    p05: float
    p95: float


class ScenarioOut(BaseModel):
    """The what-if that was run, and the physiology it stands for."""

    name: str
    description: str
    rationale: str


class CardioTwinOut(BaseModel):
    """The patient's personalised cardio twin now, its forecast band and, asked for, a
    what-if next to it (nothing of a what-if is stored)."""

    patient_id: str
    twin_time: datetime = Field(description="data cut-off: the newest reading personalised to")
    observed: dict[str, float] = Field(description="the readings fitted (SBP, DBP, HR, EF, CO)")
    current: CardioOutputs
    steady_state: bool = Field(description="cycle-to-cycle change of MAP, CO, CVP, mPAP "
                               "under 0.5% for three beats")
    converged: bool
    method: str
    parameters: list[ParameterOut]
    horizon_s: float
    draws: int = Field(description="posterior draws behind each band")
    collapsed: int = Field(description="draws whose circulation collapsed (left out)")
    forecast: dict[str, list[BandPoint]] = Field(description="per output, unchanged")
    scenario: ScenarioOut | None = None
    what_if: CardioOutputs | None = None
    what_if_forecast: dict[str, list[BandPoint]] | None = None
    what_if_collapsed: int = 0
    snapshot_version: int | None = None
    model: str
    model_version: str


class CardioWhatIfIn(_In):
    """A what-if on the cardio twin: a named scenario from the twin's state now."""

    scenario: CardioScenario = Field(description="heart failure (hfref), haemorrhage, "  # type: ignore[valid-type]
                                     "fluid-bolus, vasodilator, inotrope, beta-blocker, "
                                     "diuretic")
    horizon: float = Field(default=120.0, ge=10, le=MAX_HORIZON, description="seconds ahead")
    draws: int = Field(default=40, ge=4, le=MAX_DRAWS, description="posterior draws "
                       f"(draws x horizon at most {DRAW_BUDGET:g} s)")

    @model_validator(mode="after")
    def _within_budget(self) -> CardioWhatIfIn:
        if self.draws * self.horizon > DRAW_BUDGET:
            raise ValueError(f"draws x horizon is {self.draws * self.horizon:g} s, more than "
                             f"{DRAW_BUDGET:g}: use fewer draws or a shorter horizon")
        return self
