"""The cardio twin: the patient's personalised circulation now, with its parameters'
uncertainty and a forecast band, and a what-if scenario next to it.

Served under ``/twins`` (included by :mod:`medtwin.api.routes.twins`), with the same access
checks and audit as every twin route: a patient outside the caller's care team is a 404.
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Query, Request

from medtwin.api.cardio_schemas import (
    BandPoint,
    CardioOutputs,
    CardioScenario,
    CardioTwinOut,
    CardioWhatIfIn,
    ParameterOut,
    ScenarioOut,
)
from medtwin.api.deps import Caller, Svc
from medtwin.api.routes import PATIENT_ERRORS
from medtwin.api.routes.twin_common import twin_view
from medtwin.api.schemas import Id
from medtwin.twin.cardio_service import (
    CARDIO_RESOURCE,
    MAX_DRAWS,
    MAX_HORIZON,
    N_DRAWS,
    CardioView,
    cardio_view,
)

router = APIRouter(tags=["twins"], responses={**PATIENT_ERRORS, 409: PATIENT_ERRORS[404]})


def _bands(frame: pd.DataFrame) -> dict[str, list[BandPoint]]:
    return {str(name): [BandPoint(seconds=r.seconds, time=r.time, mean=r.mean, p05=r.p05,
                                  p95=r.p95) for r in part.itertuples()]
            for name, part in frame.groupby("output", sort=False)}


def _out(view: CardioView) -> CardioTwinOut:
    sc = view.scenario
    return CardioTwinOut(
        patient_id=view.patient_id, twin_time=view.twin_time, observed=view.observed,
        current=CardioOutputs(**view.current), steady_state=view.steady_state,
        converged=view.posterior.converged, method=view.posterior.method,
        parameters=[ParameterOut(name=p.name, unit=p.unit, estimate=p.estimate, low95=p.low,
                                 high95=p.high, log_sd=p.log_sd) for p in view.parameters],
        horizon_s=view.horizon, draws=view.draws, collapsed=view.collapsed,
        forecast=_bands(view.forecast),
        scenario=ScenarioOut(name=sc.name, description=sc.description,
                             rationale=sc.rationale) if sc is not None else None,
        what_if=CardioOutputs(**view.what_if) if view.what_if is not None else None,
        what_if_forecast=_bands(view.what_if_forecast)
        if view.what_if_forecast is not None else None,
        what_if_collapsed=view.what_if_collapsed, snapshot_version=view.snapshot_version,
        model=view.model, model_version=view.model_version)


def _cardio(request: Request, svc: Svc, who: Caller, patient_id: str, scenario: str | None,
            horizon: float, draws: int) -> CardioTwinOut:
    view = twin_view(request, svc, who, patient_id, CARDIO_RESOURCE, lambda: cardio_view(
        svc.store, patient_id, scenario=scenario, horizon=horizon, draws=draws))
    return _out(view)


@router.get("/{patient_id}/cardio", response_model=CardioTwinOut)
def cardio_twin(request: Request, svc: Svc, who: Caller, patient_id: Id,
                horizon: float = Query(120.0, ge=10, le=MAX_HORIZON, description="seconds"),
                draws: int = Query(N_DRAWS, ge=4, le=MAX_DRAWS),
                scenario: Annotated[CardioScenario | None, Query(  # type: ignore[valid-type]
                    description="a what-if to run next to the current state")] = None
                ) -> CardioTwinOut:
    """Personalise the cardio twin to the stored BP, HR, EF and CO; its state now,
    parameter estimates with 95% intervals and the forecast band (with ``scenario``, the
    what-if's band next to it)."""
    return _cardio(request, svc, who, patient_id, scenario, horizon, draws)


@router.post("/{patient_id}/cardio/what-if", response_model=CardioTwinOut)
def cardio_what_if(request: Request, svc: Svc, who: Caller, patient_id: Id,
                   body: CardioWhatIfIn) -> CardioTwinOut:
    """The cardio twin's forecast unchanged and under a scenario (nothing is stored)."""
    return _cardio(request, svc, who, patient_id, body.scenario, body.horizon, body.draws)

