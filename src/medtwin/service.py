"""The edge of the HTTP service: an app factory for ASGI servers (``uvicorn --factory
medtwin.service:create_app``, ``medtwin serve --workers N``, gunicorn with uvicorn workers).

Each worker process builds its own app from the environment: the one :class:`Settings`
(``MEDTWIN_*``), the key ring (watched: a rotated key file is picked up without a restart),
the store, and the dashboard mounted under ``/ui``. Workers share nothing in memory: sessions,
login limits and failure windows live in PostgreSQL, so any worker answers any request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from fastapi import FastAPI

from medtwin.api.app import create_app as create_api
from medtwin.api.app import services_of
from medtwin.api.settings import Settings
from medtwin.core.errors import MedtwinError
from medtwin.security.crypto import watch_keyring
from medtwin.security.store_keys import check_store_keys
from medtwin.store.event_store import EventStore

log = logging.getLogger(__name__)

ENV_DASHBOARD = "MEDTWIN_DASHBOARD"  # "0" serves the API alone
ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess directory


class ServiceConfigError(MedtwinError):
    """The service cannot be built from this environment (the message says how to fix it)."""


def mount_dashboard(app: FastAPI) -> None:
    """Serve the web dashboard under ``/ui`` on ``app`` (once per process)."""
    from medtwin.ui.mount import mount_ui

    mount_ui(app, services_of(app))


def build_app(settings: Settings, *, dashboard: bool = True,
              env: Mapping[str, str] | None = None) -> FastAPI:
    """The service for ``settings``: opens the store with the watched key ring (closed when
    the app stops) and mounts the dashboard unless ``dashboard`` is False."""
    env = os.environ if env is None else env
    ring = watch_keyring(env)
    store = EventStore.open(settings.db, keyring=ring)
    try:
        check_store_keys(store.engine, ring)  # type: ignore[arg-type]
        app = create_api(settings, store, ring, metrics_dir=env.get(ENV_METRICS_DIR) or None,
                         on_shutdown=store.close)
        if dashboard:
            mount_dashboard(app)
    except BaseException:
        store.close()
        raise
    return app


def create_app() -> FastAPI:
    """The app factory of a worker: everything from the environment (``MEDTWIN_*``;
    ``MEDTWIN_DASHBOARD=0`` leaves the dashboard out)."""
    settings = Settings.from_env()
    if settings.secret_generated:
        raise ServiceConfigError("no MEDTWIN_SECRET: a worker cannot make its own (tokens of "
                                 "one worker would not open on another); set MEDTWIN_SECRET "
                                 "or start with `medtwin serve`")
    return build_app(settings, dashboard=os.environ.get(ENV_DASHBOARD, "1") != "0")
