"""Twins: the glucose twin's state, forecast and what-if; the vancomycin dose recommendation.

Reads of a patient's twin are reads of their data: checked per patient and audited.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Query, Request

from medtwin.api.deps import Caller, Svc, audited, guard
from medtwin.api.problems import ApiError
from medtwin.api.routes import PATIENT_ERRORS
from medtwin.api.schemas import (
    DoseOut,
    ForecastPoint,
    GlucoseTwinOut,
    Id,
    PlannedIn,
    TwinSummary,
)
from medtwin.core.errors import MedtwinError, NotFoundError
from medtwin.core.records import Intervention
from medtwin.security.policy import Action, not_found
from medtwin.store.snapshots import latest_snapshot
from medtwin.twin.dosing import Target
from medtwin.twin.glucose import GLUCOSE_CODES, MODEL_NAME, MODEL_VERSION
from medtwin.twin.glucose_sync import GlucoseSync
from medtwin.twin.vancomycin import PK_MODEL, VANCO_LEVEL, pk_view

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
    audited(request, svc, who, grant, "twins")
    return [
        TwinSummary(kind="glucose", model=f"{MODEL_NAME} {MODEL_VERSION}",
                    ready=bool(codes & set(GLUCOSE_CODES)),
                    path=f"/twins/{patient_id}/glucose",
                    last_version=snap.version if snap else None,
                    last_time=snap.twin_time if snap else None),
        TwinSummary(kind="vancomycin", model=PK_MODEL, ready=VANCO_LEVEL in codes and doses,
                    path=f"/twins/{patient_id}/dose"),
    ]


def _points(frame: object) -> list[ForecastPoint]:
    return [ForecastPoint(time=r.time, mean=r.mean, p05=r.p05, p95=r.p95)
            for r in frame.itertuples()]  # type: ignore[attr-defined]


def _glucose(request: Request, svc: Svc, who: Caller, patient_id: str, horizon: int,
             planned: list[Intervention] | None) -> GlucoseTwinOut:
    grant = guard(request, svc, who, patient_id, Action.READ, "glucose-twin")
    if not svc.store.has_patient(patient_id):
        audited(request, svc, who, grant, "glucose-twin", "not-found")
        raise not_found(patient_id)
    sync = GlucoseSync(svc.store)
    try:
        sync.update(patient_id)
        twin, _ = sync.twin(patient_id)
        if not twin.started:
            raise ApiError(409, "no glucose reading for this patient yet: the twin has nothing "
                                "to start from")
        for d in planned or ():
            if not twin.time_ - timedelta(hours=1) <= d.time <= twin.time_ + timedelta(days=1):
                raise ApiError(422, f"planned {d.kind.value} at {d.time.isoformat()} is not "
                                    "within a day after the twin's time "
                                    f"{twin.time_.isoformat()}")
        p, minutes = twin.hypo_risk()
        out = GlucoseTwinOut(
            patient_id=patient_id, twin_time=twin.time_, glucose=twin.glucose_,
            insulin_sensitivity=twin.insulin_sensitivity_, hypo_probability=p,
            minutes_to_hypo=minutes, forecast=_points(twin.forecast(horizon)),
            what_if=_points(twin.forecast(horizon, planned=planned)) if planned else None,
            model=MODEL_NAME, model_version=MODEL_VERSION)
    except MedtwinError as exc:
        raise ApiError(422, str(exc)) from None
    audited(request, svc, who, grant, "glucose-twin")
    return out


@router.get("/{patient_id}/glucose", response_model=GlucoseTwinOut)
def glucose_forecast(request: Request, svc: Svc, who: Caller, patient_id: Id,
                     horizon: int = Query(120, ge=10, le=720)) -> GlucoseTwinOut:
    """Bring the glucose twin up to date with the store; its forecast and hypo risk."""
    return _glucose(request, svc, who, patient_id, horizon, None)


@router.post("/{patient_id}/glucose/what-if", response_model=GlucoseTwinOut)
def glucose_what_if(request: Request, svc: Svc, who: Caller, patient_id: Id,
                    body: PlannedIn) -> GlucoseTwinOut:
    """The forecast with and without planned meals and boluses (nothing is stored)."""
    planned = [Intervention(patient_id, "meal", t, g, "g", f"what-if-meal-{i}",
                            duration=timedelta(minutes=max(1.0, g / 5.0)))
               for i, (t, g) in enumerate(body.meals)]
    planned += [Intervention(patient_id, "insulin", t, u, "U", f"what-if-bolus-{i}")
                for i, (t, u) in enumerate(body.boluses)]
    return _glucose(request, svc, who, patient_id, body.horizon, planned)


@router.get("/{patient_id}/dose", response_model=DoseOut)
def dose(request: Request, svc: Svc, who: Caller, patient_id: Id,
         target: str = Query("auc24=400:600", max_length=40,
                             description="auc24=LOW:HIGH, cmin=LOW:HIGH or cmax=LOW:HIGH")
         ) -> DoseOut:
    """Personalise vancomycin (Goti 2018) to the stored doses and levels; recommend a regimen."""
    grant = guard(request, svc, who, patient_id, Action.READ, "dose")
    try:
        goal = Target.parse(target)
        view = pk_view(svc.store, patient_id, target=goal)
    except NotFoundError:
        audited(request, svc, who, grant, "dose", "not-found")
        raise not_found(patient_id) from None
    except MedtwinError as exc:
        raise ApiError(422, str(exc)) from None
    if view is None:
        raise ApiError(409, "no vancomycin doses and levels for this patient: nothing to "
                            "personalise from")
    rec = view.recommendation
    audited(request, svc, who, grant, "dose")
    return DoseOut(patient_id=patient_id, model=view.model, dose_mg=rec.dose,
                   interval_h=rec.interval, infusion_h=rec.duration, target=target,
                   probability=rec.probability, median=rec.median,
                   interval_90=rec.interval_90, parameters=view.parameters, text=rec.text())
