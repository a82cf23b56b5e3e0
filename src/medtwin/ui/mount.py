"""Mount the dashboard on the service's FastAPI app (NiceGUI, served from the package)."""

from __future__ import annotations

import hashlib

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from medtwin.api.deps import Services
from medtwin.core.errors import MedtwinError
from medtwin.ui.layout import UiContext

PREFIX = "/ui"


def mount_ui(app: FastAPI, svc: Services, *, refresh_seconds: float = 2.0) -> None:
    """Serve the dashboard under ``/ui`` (``/`` redirects there).

    NiceGUI keeps one page registry per process, so one process serves one dashboard; a
    second call raises. Every asset (Vue, Quasar, plotly) comes from the installed nicegui
    package: the pages make no request to another host.
    """
    from nicegui import app as nicegui_app
    from nicegui import ui

    if getattr(nicegui_app.state, "medtwin_mounted", False):
        raise MedtwinError("the dashboard is already mounted in this process")
    nicegui_app.state.medtwin_mounted = True
    from medtwin.ui.pages import register

    register(UiContext(svc, PREFIX, refresh_seconds))

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/")

    # the session cookie is signed with a key derived from the token secret (never stored)
    secret = hashlib.sha256(b"medtwin-ui\0" + svc.settings.token_secret.encode()).hexdigest()
    ui.run_with(app, mount_path=PREFIX, storage_secret=secret, title="medtwin",
                show_welcome_message=False, reconnect_timeout=10.0)
