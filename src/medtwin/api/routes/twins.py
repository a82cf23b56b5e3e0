"""Twins: the glucose twin's state, forecast and what-if; the vancomycin dose recommendation;
the cardio twin (its routes in :mod:`medtwin.api.routes.cardio`, served under this router).

Reads of a patient's twin are reads of their data: checked per patient and audited.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from medtwin.api.deps import Caller, Svc, audited, guard
from medtwin.api.routes import PATIENT_ERRORS, cardio
from medtwin.api.routes.twin_common import twin_view
from medtwin.api.schemas import (
    DoseOut,
    ForecastPoint,
    GlucoseTwinOut,
    Id,
    PlannedIn,
    TwinSummary,
)
from medtwin.security.policy import Action, not_found
from medtwin.store.snapshots import latest_snapshot
from medtwin.twin import cardio_service
from medtwin.twin.dosing import Target
from medtwin.twin.glucose import GLUCOSE_CODES, MODEL_NAME, MODEL_VERSION
from medtwin.twin.service import (
    DOSE_RESOURCE,
    GLUCOSE_RESOURCE,
    GlucosePlan,
    dose_view,
    glucose_view,
)
from medtwin.twin.vancomycin import PK_MODEL, VANCO_LEVEL

router = APIRouter(prefix="/twins", tags=["twins"], responses=PATIENT_ERRORS)


@router.get("/{patient_id}", response_model=list[TwinSummary])
def list_twins(request: Request, svc: Svc, who: Caller, patient_id: Id) -> list[TwinSummary]:
    """The patient's twins: whether each has the data it needs, and its last stored state."""
    grant = guard(request, svc, who, patient_id, Action.READ, "twins")
    if not svc.store.has_patient(patient_id):
        audited(request, svc, who, grant, "twins", "not-found")
        raise not_found(patient_id)
    codes = set(svc.store.timeline_frame(patient_id, kinds=["observation"])["code"])
    doses = svc.store.counts(patient_id).get("intervention", 0) > 0
    snap = latest_snapshot(svc.store, patient_id, model=MODEL_NAME)
    heart = latest_snapshot(svc.store, patient_id, model=cardio_service.MODEL_NAME)
    audited(request, svc, who, grant, "twins")
    return [
        TwinSummary(kind="glucose", model=f"{MODEL_NAME} {MODEL_VERSION}",
                    ready=bool(codes & set(GLUCOSE_CODES)),
                    path=f"/twins/{patient_id}/glucose",
                    last_version=snap.version if snap else None,
                    last_time=snap.twin_time if snap else None),
        TwinSummary(kind="vancomycin", model=PK_MODEL, ready=VANCO_LEVEL in codes and doses,
                    path=f"/twins/{patient_id}/dose"),
        TwinSummary(kind="cardio", model=f"{cardio_service.MODEL_NAME} "
                    f"{cardio_service.MODEL_VERSION}",
                    ready=bool(codes & set(cardio_service.CARDIO_CODES)),
                    path=f"/twins/{patient_id}/cardio",
                    last_version=heart.version if heart else None,
                    last_time=heart.twin_time if heart else None),
    ]


def _points(frame: object) -> list[ForecastPoint]:
    return [ForecastPoint(time=r.time, mean=r.mean, p05=r.p05, p95=r.p95)
            for r in frame.itertuples()]  # type: ignore[attr-defined]


def _glucose(request: Request, svc: Svc, who: Caller, patient_id: str, horizon: int,
             plan: GlucosePlan | None) -> GlucoseTwinOut:
    view = twin_view(request, svc, who, patient_id, GLUCOSE_RESOURCE, lambda: glucose_view(
        svc.store, patient_id, horizon=horizon, plan=plan))
    return GlucoseTwinOut(
        patient_id=patient_id, twin_time=view.twin_time, glucose=view.glucose,
        insulin_sensitivity=view.insulin_sensitivity, hypo_probability=view.hypo_probability,
        minutes_to_hypo=view.minutes_to_hypo, forecast=_points(view.forecast),
        what_if=_points(view.what_if) if view.what_if is not None else None,
        model=view.model, model_version=view.model_version)


@router.get("/{patient_id}/glucose", response_model=GlucoseTwinOut)
def glucose_forecast(request: Request, svc: Svc, who: Caller, patient_id: Id,
                     horizon: int = Query(120, ge=10, le=720)) -> GlucoseTwinOut:
    """Bring the glucose twin up to date with the store; its forecast and hypo risk."""
    return _glucose(request, svc, who, patient_id, horizon, None)


@router.post("/{patient_id}/glucose/what-if", response_model=GlucoseTwinOut)
def glucose_what_if(request: Request, svc: Svc, who: Caller, patient_id: Id,
                    body: PlannedIn) -> GlucoseTwinOut:
    """The forecast with and without planned meals, boluses and a basal rate (nothing is
    stored)."""
    plan = GlucosePlan(meals=tuple(body.meals), boluses=tuple(body.boluses), basal=body.basal)
    return _glucose(request, svc, who, patient_id, body.horizon, plan)


@router.get("/{patient_id}/dose", response_model=DoseOut)
def dose(request: Request, svc: Svc, who: Caller, patient_id: Id,
         target: str = Query("auc24=400:600", max_length=40,
                             description="auc24=LOW:HIGH, cmin=LOW:HIGH or cmax=LOW:HIGH")
         ) -> DoseOut:
    """Personalise vancomycin (Goti 2018) to the stored doses and levels; recommend a regimen."""
    view = twin_view(request, svc, who, patient_id, DOSE_RESOURCE, lambda: dose_view(
        svc.store, patient_id, target=Target.parse(target)))
    rec = view.recommendation
    return DoseOut(patient_id=patient_id, model=view.model, dose_mg=rec.dose,
                   interval_h=rec.interval, infusion_h=rec.duration, target=target,
                   probability=rec.probability, median=rec.median,
                   interval_90=rec.interval_90, parameters=view.parameters, text=rec.text())


router.include_router(cardio.router)
