"""Health: ``/health`` (the store), ``/health/live`` (the process answers) and
``/health/ready`` (the store, the MQTT broker and the Dask scheduler answer): the endpoints
without an identity, for load balancers and orchestrators."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medtwin import __version__
from medtwin.api.deps import Svc
from medtwin.api.schemas import HealthOut
from medtwin.core.errors import StoreError
from medtwin.store.engine import ping

router = APIRouter(tags=["health"])

PROBE_TIMEOUT = 2.0  # seconds a dependency has to answer a readiness probe
TLS_SCHEMES = {"mqtts", "ssl"}  # MQTT over TLS listens on 8883 by default


@router.get("/health", response_model=HealthOut)
def health(svc: Svc) -> HealthOut:
    """Is the service up and the store reachable?"""
    try:
        ping(svc.store.engine)
    except StoreError:
        return HealthOut(status="degraded", store="unreachable", version=__version__)
    return HealthOut(status="ok", store="ok", version=__version__)


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process answers (restart it when this fails); checks nothing else."""
    return {"status": "ok", "version": __version__}


def _tcp(address: str, default_port: int) -> str | None:
    """None when ``address`` (a URL) accepts a TCP connection; else why not."""
    parts = urlsplit(address)
    host = parts.hostname
    if not host:
        return f"{address!r} names no host"
    try:
        port = parts.port or default_port
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return None
    except (OSError, ValueError) as exc:
        return f"{host}:{parts.port or default_port} does not answer ({type(exc).__name__})"


def _checks(svc: Svc) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    try:
        ping(svc.store.engine)
        out["store"] = {"status": "ok"}
    except StoreError as exc:
        out["store"] = {"status": "down", "detail": str(exc)[:200]}
    s = svc.settings
    mqtt_port = 8883 if s.mqtt_url and urlsplit(s.mqtt_url).scheme in TLS_SCHEMES else 1883
    for name, address, port in (("broker", s.mqtt_url, mqtt_port),
                                ("dask", s.scheduler, 8786)):
        if not address:
            out[name] = {"status": "not configured"}
            continue
        problem = _tcp(address, port)
        out[name] = {"status": "ok"} if problem is None else {"status": "down",
                                                               "detail": problem}
    return out


@router.get("/health/ready", responses={503: {"description": "A dependency is down (named "
                                                              "in `down`)."}})
async def ready(svc: Svc) -> JSONResponse:
    """Can the service do its work: the store, the MQTT broker (``MEDTWIN_MQTT_URL``) and the
    Dask scheduler (``MEDTWIN_SCHEDULER``) answer? 503 naming what is down otherwise."""
    checks = await run_in_threadpool(_checks, svc)
    down = sorted(k for k, v in checks.items() if v["status"] == "down")
    body = {"status": "ready" if not down else "not ready", "down": down, "checks": checks,
            "version": __version__}
    return JSONResponse(body, status_code=503 if down else 200)
