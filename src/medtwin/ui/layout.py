"""Shared pieces of every page: the context pages are built with, the header, risk badges."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from nicegui import app, ui

from medtwin.api.deps import Services
from medtwin.monitor.news2 import News2, Risk
from medtwin.security.roles import Principal, Role
from medtwin.ui import access, session

log = logging.getLogger(__name__)

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


def user_zone() -> ZoneInfo:
    """The time zone of this browser session (UTC when unknown or outside a page)."""
    try:
        return session.zone(storage())
    except RuntimeError:  # no page context (a test or a background task)
        return session.UTC_ZONE


def zone_label() -> str:
    """The name of the zone times are shown in, for labels (says when it is UTC by default)."""
    try:
        return session.zone_label(storage())
    except RuntimeError:
        return "UTC"


def local_time(t: datetime | None, zone: tzinfo | None = None) -> str:
    """A time in the user's zone (``zone``, default this browser's), with the zone's
    abbreviation, e.g. ``05 Mar 14:05:09 EST``."""
    if t is None:
        return "no readings yet"
    return t.astimezone(zone or user_zone()).strftime("%d %b %H:%M:%S %Z")


def age_text(t: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``t`` was, as a clinician says it: ``just now``, ``12 min ago``,
    ``1 h 5 min ago``, ``7 h ago``, ``3 days ago`` (a time up to the clock-skew tolerance
    ahead is "just now")."""
    if t is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - t).total_seconds()
    if seconds < 60:
        return "just now"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min ago"
    hours = minutes // 60
    if hours < 6:  # minutes still matter next to a 1 h window
        rest = minutes % 60
        return f"{hours} h {rest} min ago" if rest else f"{hours} h ago"
    if hours < 48:
        return f"{hours} h ago"
    return f"{hours // 24} days ago"


def duration_text(d: timedelta) -> str:
    """A window in words: ``1 h``, ``30 min``, ``2 days``."""
    minutes = int(d.total_seconds() // 60)
    if minutes % (24 * 60) == 0 and minutes >= 48 * 60:
        return f"{minutes // (24 * 60)} days"
    if minutes % 60 == 0:
        return f"{minutes // 60} h"
    return f"{minutes} min"


async def ask_zone() -> ZoneInfo | None:
    """Ask this browser for its time zone and keep it in the session (None if it did not
    answer in time: times stay in UTC, labelled so, and the next page asks again)."""
    try:
        name = await ui.run_javascript(session.ZONE_JS, timeout=5.0)
    except TimeoutError:
        log.info("the browser did not say its time zone in time")
        return None
    return session.remember_zone(storage(), name)


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


DEMO_BANNER = ("Demo data — not a real patient. Every patient on these pages is made up "
               "(synthetic) for the demonstration; do not use it for care.")


def demo_banner(svc: Services) -> None:
    """A banner saying the data are a demo's, when the store holds the demo's synthetic
    patients (nothing otherwise)."""
    if access.demo_store(svc):
        ui.label(DEMO_BANNER).classes(
            "w-full bg-yellow-300 text-black font-semibold px-3 py-1 rounded").props(
            'data-demo-banner role="note"')


def header(ctx: UiContext, who: Principal, on_sign_out: Any) -> None:
    """The top bar: navigation for the caller's role, who is signed in, the time zone times
    are shown in, sign-out, and the demo-data banner when the store is the demo's. A browser
    not yet asked for its zone is asked (then the page reloads once, in that zone)."""
    if not session.zone_known(storage()):
        async def ask() -> None:
            if await ask_zone() is not None:
                ui.navigate.reload()
        ui.timer(0.05, ask, once=True)
    with ui.header().classes("items-center justify-between bg-slate-800 px-4 py-2 flex-wrap "
                             "gap-y-1"):
        with ui.row().classes("items-center gap-4 flex-wrap"):
            ui.label("medtwin").classes("text-xl font-bold text-white")
            if who.role in (Role.CLINICIAN, Role.PATIENT):
                ui.link("Ward", "/").classes("text-white")
            if who.role in (Role.CLINICIAN, Role.RESEARCHER, Role.ADMIN):
                ui.link("Trials", "/trials").classes("text-white")
                ui.link("Operations", "/ops").classes("text-white")
            if who.role is Role.ADMIN:
                ui.link("Admin", "/admin").classes("text-white")
        with ui.row().classes("items-center gap-3 flex-wrap"):
            ui.label(f"Times in {zone_label()}").classes("text-white text-sm").props(
                'data-zone')
            ui.label(f"{who.name} ({who.role.value})").classes("text-white")
            ui.button("Sign out", on_click=on_sign_out).props("outline color=white")
        demo_banner(ctx.svc)
