"""Shared pieces of every page: the context pages are built with, the header, risk badges."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nicegui import app, ui

from medtwin.api.deps import Services
from medtwin.monitor.news2 import News2, Risk
from medtwin.security.roles import Principal, Role

# colour AND text: the band is always written out
RISK_STYLE = {Risk.HIGH: ("bg-red-700 text-white", "HIGH"),
              Risk.MEDIUM: ("bg-orange-500 text-black", "MEDIUM"),
              Risk.LOW_MEDIUM: ("bg-yellow-300 text-black", "LOW-MEDIUM"),
              Risk.LOW: ("bg-green-700 text-white", "LOW")}


@dataclass(frozen=True)
class UiContext:
    """What every page needs: the app's services, where the UI is mounted, the live period."""

    svc: Services
    prefix: str = "/ui"
    refresh_seconds: float = 2.0

    def url(self, path: str) -> str:
        """An absolute URL of a dashboard page, for HTTP redirects (``ui.link`` and
        ``ui.navigate`` take paths relative to the mount: NiceGUI's client adds it)."""
        return f"{self.prefix}{path}" if self.prefix != "/" else path


def storage() -> MutableMapping[str, Any]:
    """This browser's server-side session storage."""
    return app.storage.user


def local_time(t: datetime | None) -> str:
    """A time in the server's (the demo machine's) local zone, with the zone name."""
    if t is None:
        return "no readings yet"
    return t.astimezone().strftime("%d %b %H:%M:%S %Z")


def risk_badge(score: News2 | None) -> None:
    """NEWS2 score and band as a coloured badge that also says the band in words."""
    if score is None:
        ui.label("NEWS2 -- no vitals").classes("px-2 py-1 rounded bg-gray-300 text-black "
                                               "font-semibold")
        return
    cls, text = RISK_STYLE[score.risk]
    partial = " (partial)" if score.partial else ""
    ui.label(f"NEWS2 {score.total} · {text}{partial}").classes(
        f"px-2 py-1 rounded font-semibold {cls}").props(
        f'aria-label="NEWS2 score {score.total}, {text.lower()} risk{partial}"')


def header(ctx: UiContext, who: Principal, on_sign_out: Any) -> None:
    """The top bar: navigation for the caller's role, who is signed in, sign-out."""
    with ui.header().classes("items-center justify-between bg-slate-800 px-4 py-2"):
        with ui.row().classes("items-center gap-4"):
            ui.label("medtwin").classes("text-xl font-bold text-white")
            if who.role in (Role.CLINICIAN, Role.PATIENT):
                ui.link("Ward", "/").classes("text-white")
            if who.role is Role.ADMIN:
                ui.link("Admin", "/admin").classes("text-white")
        with ui.row().classes("items-center gap-3"):
            ui.label(f"{who.name} ({who.role.value})").classes("text-white")
            ui.button("Sign out", on_click=on_sign_out).props("outline color=white")
