"""Liveness: the one endpoint without an identity."""

from __future__ import annotations

from fastapi import APIRouter

from medtwin import __version__
from medtwin.api.deps import Svc
from medtwin.api.schemas import HealthOut
from medtwin.core.errors import StoreError
from medtwin.store.engine import ping

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
def health(svc: Svc) -> HealthOut:
    """Is the service up and the store reachable?"""
    try:
        ping(svc.store.engine)
    except StoreError:
        return HealthOut(status="degraded", store="unreachable", version=__version__)
    return HealthOut(status="ok", store="ok", version=__version__)
