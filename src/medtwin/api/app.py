"""The FastAPI app: settings, the store and the key ring are built at the edge and handed in
(``medtwin.service`` builds them from the environment and mounts the dashboard)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from medtwin import __version__
from medtwin.api import docs, metrics, openapi, problems
from medtwin.api.deps import Services, build_services
from medtwin.api.input_guard import RefuseNul
from medtwin.api.limits import BodySizeLimit, TrustedProxies, install_token_redaction
from medtwin.api.request_log import RequestId
from medtwin.api.routes import (
    alerts,
    audit,
    auth,
    fhir,
    health,
    live,
    patients,
    research,
    smart,
    trials,
    twins,
    users,
)
from medtwin.api.routes import jobs as jobs_routes
from medtwin.api.settings import Settings
from medtwin.jobs.service import JobService, default_kinds
from medtwin.security.crypto import KeyRing, WatchedKeyRing
from medtwin.store.event_store import EventStore

log = logging.getLogger(__name__)

DESCRIPTION = """medtwin's service: patients and timelines, FHIR R4 endpoints, de-identified
research data, in-silico trials, live readings. Every endpoint but `/health` needs an
identity: `POST /auth/token` (OAuth2 password flow) gives a bearer JWT; devices use an API
key as the bearer credential. Every access to patient data is audited in a hash chain.
`/health/live`, `/health/ready` and `/metrics` (Prometheus) serve operators."""


def create_app(settings: Settings, store: EventStore, keyring: KeyRing | WatchedKeyRing, *,
               metrics_dir: str | None = None,
               on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The service over an open ``store`` (the caller closes it, or passes ``on_shutdown``
    to have it closed when the app stops). ``metrics_dir``: prometheus_client's
    multiprocess directory when several workers serve the app."""
    if not settings.security_enabled:
        log.warning("SECURITY IS OFF: no authentication, no audit (benchmark mode)")
    if settings.secret_generated:
        log.warning("no MEDTWIN_SECRET: a random one was made; tokens end with this process")
    svc = build_services(settings, store, keyring)
    jobs = JobService(
        store.engine,
        default_kinds(trial_max_subjects=settings.trial_max_subjects,
                      trial_max_days=settings.trial_max_days, ops_max_reps=settings.ops_max_reps,
                      cardio_max_subjects=settings.cardio_max_subjects,
                      cardio_max_seconds=settings.cardio_max_seconds),
        run=settings.jobs_run, scheduler=settings.scheduler,
        n_workers=settings.jobs_local_workers, processes=settings.jobs_local_processes,
        stale_after=settings.jobs_stale_seconds)
    svc.extras["jobs"] = jobs

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Everything loaded at start-up (models, schemas, numba, pandas) lives as long as the
        # process: freeze it out of the cyclic collector, whose full passes over that heap
        # otherwise cost a request 100+ ms now and then (p99 of a timeline read 158 -> 37 ms).
        gc.collect()
        gc.freeze()
        jobs.start()
        yield
        jobs.close()
        svc.close()  # audit the open anonymous-failure windows, anchor the audit head
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="medtwin", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # docs.install: offline
    app.state.services = svc
    problems.install(app)
    # smart before fhir: /fhir/.well-known is not a FHIR type
    for module in (health, smart, auth, users, patients, alerts, twins, fhir, research, audit,
                   trials, jobs_routes, live):
        app.include_router(module.router)
    openapi.install(app)
    docs.install(app)
    app.add_middleware(RefuseNul)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)  # before the NUL scan
    metrics.install(app, store.engine, multiprocess_dir=metrics_dir)  # latency incl. refusals
    app.add_middleware(TrustedProxies, proxies=settings.trusted_proxies)  # the real client
    app.add_middleware(RequestId)  # outermost: every log line of a request carries its id
    install_token_redaction()
    return app


def services_of(app: FastAPI) -> Services:
    """The services an app was built with (for tests and tools)."""
    return app.state.services
