"""The ward overview's tiles: one per patient, sickest first, kept live.

A tile is a card holding the patient link and one HTML block (NEWS2 badge, every NEWS2
parameter with its value, points and age, what was not scored and why, glucose, alerts, last
reading, the twin's last synchronisation): three page elements per patient, so a ward of 100
renders quickly. Four times a second a timer asks the store two tiny questions (the
newest event number, the newest alert numbers); only patients with new events are re-read
(batched), only tiles whose text changed are sent, and cards move only when the order by
risk changed. The link is a real element that is never replaced, so keyboard focus survives
the updates.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from nicegui import ui
from starlette.requests import Request

from medtwin.monitor.news2 import ITEMS, value_text
from medtwin.monitor.vitals import ItemReading, ItemStatus, News2Breakdown
from medtwin.security.roles import Principal
from medtwin.store.alerts import AlertStore
from medtwin.store.latest import ChangeFeed
from medtwin.ui import access
from medtwin.ui.access import WardRow
from medtwin.ui.layout import (
    RISK_STYLE,
    UiContext,
    age_text,
    duration_text,
    local_time,
    user_zone,
)

LIVE_PERIOD = 0.25  # seconds between checks for new readings
FULL_EVERY = 10.0  # seconds between re-reading the whole ward (a care-team change shows)


def badge_html(r: WardRow) -> str:
    """NEWS2 score and band in colour and in words (never colour alone)."""
    base = "px-2 py-1 rounded font-semibold inline-block"
    if r.score is None:
        seen = r.breakdown is not None and any(i.time for i in r.breakdown.items)
        what = "no current vital signs" if seen else "no vital signs yet"
        return (f'<span class="{base} bg-gray-300 text-black" aria-label="NEWS2: {what}">'
                f'NEWS2 -- {what}</span>')
    cls, text = RISK_STYLE[r.score.risk]
    partial = " (partial)" if r.score.partial else ""
    return (f'<span class="{base} {cls}" aria-label="NEWS2 score {r.score.total}, '
            f'{text.lower()} risk{partial}">NEWS2 {r.score.total} · {text}{partial}</span>')


def _points(n: int) -> str:
    return "1 point" if n == 1 else f"{n} points"


def _why_not(i: ItemReading, now: datetime) -> str:
    """Why an item did not count, in words (e.g. "last reading 3 days ago, older than 1 h")."""
    if i.status is ItemStatus.MISSING:
        return "not measured"
    if i.status is ItemStatus.STALE:
        window = duration_text(i.window) if i.window is not None else "its window"
        return f"last reading {age_text(i.time, now)}, older than {window}"
    return "reading not trusted: " + i.problem


def _in_sentence(label: str) -> str:
    """A label inside a sentence: "Heart rate" -> "heart rate"; "SpO2" stays."""
    first = label.split()[0]
    return label if any(c.isupper() for c in first[1:]) else label[:1].lower() + label[1:]


def partial_text(b: News2Breakdown, now: datetime | None = None) -> str:
    """Why a score is partial, in plain words ("" when every parameter counted)."""
    left = b.unscored()
    if not left:
        return ""
    now = now or b.at
    parts = [f"{_in_sentence(i.label)} ({_why_not(i, now)})" for i in left]
    counted = len(ITEMS) - len(left)
    return (f"Partial score: {counted} of {len(ITEMS)} parameters counted. Not counted: "
            + "; ".join(parts) + ". The full score may be higher.")


def why_html(b: News2Breakdown, now: datetime | None = None) -> str:
    """Why the score is partial, or why there is none, as a block ("" for a whole score)."""
    why = partial_text(b, now) if b.score is not None else (
        "No current vital signs: every reading is older than its window, so no NEWS2 score "
        "is given.")
    return f'<div class="text-sm text-orange-900" data-partial>{html.escape(why)}</div>' \
        if why else ""


def news2_table_html(b: News2Breakdown, now: datetime | None = None) -> str:
    """Every NEWS2 parameter: value with unit, points and the band behind them, the age of
    the reading; a parameter that did not count says why. The total row is the sum of the
    points shown (the score)."""
    now = now or b.at
    rows = []
    for i in b.items:
        age = age_text(i.time, now) if i.time is not None else "—"
        if i.status is ItemStatus.SCORED:
            value = value_text(i.item, i.value)
            points = f"{_points(i.points or 0)} ({i.band})" if i.band else \
                _points(i.points or 0)
        elif i.status is ItemStatus.STALE:
            value = value_text(i.item, i.value)
            points = f"not scored: older than {duration_text(i.window)}" \
                if i.window is not None else "not scored"
        elif i.status is ItemStatus.UNTRUSTED:
            value = "reading not trusted"
            points = f"not scored: {i.problem}"
        else:
            value, points = "not measured", "not scored"
        muted = "" if i.status is ItemStatus.SCORED else ' class="text-gray-600"'
        data = f' data-points="{i.points}"' if i.points is not None else ""
        rows.append(f'<tr data-item="{i.item}" data-status="{i.status.value}"{data}{muted}>'
                    f'<td class="pr-2">{html.escape(i.label)}</td>'
                    f'<td class="pr-2">{html.escape(value)}</td>'
                    f'<td class="pr-2">{html.escape(points)}</td>'
                    f'<td>{html.escape(age)}</td></tr>')
    if b.score is not None:
        rows.append(f'<tr data-total="{b.score.total}" class="font-semibold border-t">'
                    f'<td class="pr-2">NEWS2 total</td><td></td>'
                    f'<td class="pr-2">{_points(b.score.total)}</td><td></td></tr>')
    head = ('<thead><tr class="text-left text-gray-700"><th class="pr-2">Parameter</th>'
            '<th class="pr-2">Value</th><th class="pr-2">NEWS2 points</th>'
            '<th>Measured</th></tr></thead>')
    return (f'<table class="text-sm w-full" data-news2>{head}<tbody>{"".join(rows)}'
            f'</tbody></table>')


def tile_html(r: WardRow, zone: tzinfo, now: datetime | None = None) -> str:
    """The tile's text block (every value escaped: names and messages are data); ages are
    counted back from ``now`` (default: the time the score is for)."""
    now = now or (r.breakdown.at if r.breakdown is not None else datetime.now(UTC))
    if r.breakdown is not None and any(i.time for i in r.breakdown.items):
        vitals = why_html(r.breakdown, now) + news2_table_html(r.breakdown, now)
    else:
        vitals = '<div class="text-sm text-gray-700">no vital signs yet</div>'
    if "Glucose" in r.vitals:
        vitals += (f'<div class="text-sm" data-glucose>Glucose {html.escape(r.vitals["Glucose"])}'
                   f' · {age_text(r.glucose_time, now)}</div>')
    if r.alerts:
        unacked = sum(a.acknowledged_by is None for a in r.alerts)
        first = r.alerts[0]
        alerts = (f'<div class="text-sm text-red-800">{len(r.alerts)} active alert(s), '
                  f'{unacked} unacknowledged: {html.escape(first.message)} '
                  f'(raised {age_text(first.raised_at, now)})</div>')
    else:
        alerts = '<div class="text-sm text-gray-700">no active alerts</div>'
    twin = (f"twin synced to {local_time(r.twin_synced, zone)}" if r.twin_synced is not None
            else "no live twin")
    last = local_time(r.last_reading, zone)
    if r.last_reading is not None:
        last += f" ({age_text(r.last_reading, now)})"
    return (f'<div class="mb-1">{badge_html(r)}</div>'
            f'<div class="text-sm text-gray-700">MRN {html.escape(r.mrn)}</div>'
            f'<div data-vitals>{vitals}</div>{alerts}'
            f'<div class="text-xs text-gray-600">last reading '
            f'{html.escape(last)} · '
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
