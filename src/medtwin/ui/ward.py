"""The ward overview's tiles: one per patient, sickest first, kept live.

A tile is a card holding the patient link and one HTML block (NEWS2 badge, vitals, alerts,
last reading, the twin's last synchronisation): three page elements per patient, so a ward
of 100 renders quickly. Four times a second a timer asks the store two tiny questions (the
newest event number, the newest alert numbers); only patients with new events are re-read
(batched), only tiles whose text changed are sent, and cards move only when the order by
risk changed. The link is a real element that is never replaced, so keyboard focus survives
the updates.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from datetime import tzinfo

from nicegui import ui
from starlette.requests import Request

from medtwin.security.roles import Principal
from medtwin.store.alerts import AlertStore
from medtwin.store.latest import ChangeFeed
from medtwin.ui import access
from medtwin.ui.access import WardRow
from medtwin.ui.layout import RISK_STYLE, UiContext, local_time, user_zone

LIVE_PERIOD = 0.25  # seconds between checks for new readings
FULL_EVERY = 10.0  # seconds between re-reading the whole ward (a care-team change shows)


def badge_html(r: WardRow) -> str:
    """NEWS2 score and band in colour and in words (never colour alone)."""
    base = "px-2 py-1 rounded font-semibold inline-block"
    if r.score is None:
        return (f'<span class="{base} bg-gray-300 text-black" aria-label="NEWS2: no vital '
                f'signs yet">NEWS2 -- no vitals</span>')
    cls, text = RISK_STYLE[r.score.risk]
    partial = " (partial)" if r.score.partial else ""
    return (f'<span class="{base} {cls}" aria-label="NEWS2 score {r.score.total}, '
            f'{text.lower()} risk{partial}">NEWS2 {r.score.total} · {text}{partial}</span>')


def tile_html(r: WardRow, zone: tzinfo) -> str:
    """The tile's text block (every value escaped: names and messages are data)."""
    vitals = "   ".join(f"{k} {v}" for k, v in r.vitals.items()) or "no vital signs yet"
    if r.alerts:
        unacked = sum(a.acknowledged_by is None for a in r.alerts)
        alerts = (f'<div class="text-sm text-red-800">{len(r.alerts)} active alert(s), '
                  f'{unacked} unacknowledged: {html.escape(r.alerts[0].message)}</div>')
    else:
        alerts = '<div class="text-sm text-gray-700">no active alerts</div>'
    twin = (f"twin synced to {local_time(r.twin_synced, zone)}" if r.twin_synced is not None
            else "no live twin")
    return (f'<div class="mb-1">{badge_html(r)}</div>'
            f'<div class="text-sm text-gray-700">MRN {html.escape(r.mrn)}</div>'
            f'<div class="font-mono text-sm" data-vitals>{html.escape(vitals)}</div>{alerts}'
            f'<div class="text-xs text-gray-600">last reading '
            f'{html.escape(local_time(r.last_reading, zone))} · '
            f'<span data-twin>{html.escape(twin)}</span></div>')


class LiveWard:
    """The tiles of one open ward page and their live updates."""

    def __init__(self, ctx: UiContext, request: Request, who: Principal, ids: list[str],
                 still_signed_in: Callable[[], Principal | None]) -> None:
        self.ctx, self.request, self.who, self.ids = ctx, request, who, ids
        self.still_signed_in = still_signed_in
        self.alerts = AlertStore(ctx.svc.store)
        self.names: dict[str, tuple[str, str]] = {}
        self.zone = user_zone()
        # read the marks before the rows: an event appended in between is read again, not lost
        self.feed = ChangeFeed(ctx.svc.store)
        self.alert_mark = self.alerts.version()
        rows = access.ward_rows(ctx.svc, request, who, ids, audit=True, names=self.names)
        self.rows: dict[str, WardRow] = {r.patient_id: r for r in rows}
        self.order = [r.patient_id for r in rows]
        self.cards: dict[str, ui.card] = {}
        self.blocks: dict[str, ui.html] = {}
        self.shown: dict[str, str] = {}
        now = time.monotonic()
        self.last_full = self.last_session = now
        self.grid = ui.element("div").classes(
            "w-full grid gap-3 grid-cols-1 md:grid-cols-2 xl:grid-cols-3")
        with self.grid:
            for pid in self.order:
                self._card(self.rows[pid])
        self.timer = ui.timer(LIVE_PERIOD, self.tick)

    def _card(self, r: WardRow) -> None:
        with ui.card().classes("w-full gap-1").props(f'data-patient="{r.patient_id}"') as card:
            ui.link(r.name, f"/patient/{r.patient_id}").classes("text-lg font-semibold")
            text = tile_html(r, self.zone)
            self.blocks[r.patient_id] = ui.html(text, sanitize=False)
        self.cards[r.patient_id], self.shown[r.patient_id] = card, text

    def tick(self) -> None:
        """Re-read what changed since the last tick and send only the changed tiles; stop
        for good once the session has ended."""
        now = time.monotonic()
        if now - self.last_session >= self.ctx.refresh_seconds:
            self.last_session = now
            if self.still_signed_in() is None:
                self.timer.cancel()
                return
        changed = self.feed.poll()
        mark = self.alerts.version()
        full = mark != self.alert_mark or now - self.last_full >= FULL_EVERY
        self.alert_mark = mark
        if full:
            self.last_full = now
            self._add_new_patients()
        targets = list(self.rows) if full else [p for p in self.rows if p in changed]
        if not targets:
            return
        fresh = access.ward_rows(self.ctx.svc, self.request, self.who, targets, audit=False,
                                 names=self.names)
        if full:
            for gone in set(targets) - {r.patient_id for r in fresh}:  # left the care team
                self.cards.pop(gone).delete()
                del self.rows[gone], self.blocks[gone], self.shown[gone]
        for r in fresh:
            self.rows[r.patient_id] = r
            text = tile_html(r, self.zone)
            if text != self.shown[r.patient_id]:
                self.blocks[r.patient_id].set_content(text)
                self.shown[r.patient_id] = text
        order = [r.patient_id for r in sorted(self.rows.values(), key=lambda r: r.rank,
                                              reverse=True)]
        if order != self.order:
            for i, pid in enumerate(order):
                self.cards[pid].move(self.grid, target_index=i)
            self.order = order

    def _add_new_patients(self) -> None:
        """Cards for patients added to the caller's care teams since the page opened (their
        first read is audited, as on opening the page)."""
        new = [p for p in access.care_patients(self.ctx.svc, self.who) if p not in self.rows]
        if not new:
            return
        with self.grid:
            for r in access.ward_rows(self.ctx.svc, self.request, self.who, new, audit=True,
                                      names=self.names):
                self.rows[r.patient_id] = r
                self._card(r)
        self.order = [*self.order, *new]  # re-sorted with the rest below
