"""The dashboard's pages: sign-in, ward overview, patient twin, admin.

Each page checks the session first (no session: redirect to sign-in) and reads through
:mod:`medtwin.ui.access`, which applies the service's policy and audit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi.responses import RedirectResponse
from nicegui import run, ui
from starlette.requests import Request

from medtwin.core.errors import MedtwinError
from medtwin.devices.controllers import controller_names
from medtwin.security.audit import AuditLog
from medtwin.security.roles import Principal
from medtwin.ui import access, charts, session, twins
from medtwin.ui.layout import UiContext, header, local_time, risk_badge, storage

log = logging.getLogger(__name__)


def _guard(ctx: UiContext, request: Request) -> Principal | RedirectResponse:
    who = session.current(ctx.svc, request, storage())
    return who if who is not None else RedirectResponse(ctx.url("/login"), status_code=303)


def _sign_out(ctx: UiContext, request: Request, who: Principal) -> Callable[[], None]:
    def go() -> None:
        session.sign_out(ctx.svc, request, storage(), who)
        ui.navigate.to("/login")  # the client adds the mount prefix
    return go


def _live_session(ctx: UiContext, request: Request) -> Principal | None:
    """Re-check the session on a live tick; send an expired one to the sign-in page."""
    who = session.current(ctx.svc, request, storage())
    if who is None:
        ui.navigate.to("/login?expired=1")  # the client adds the mount prefix
    return who


def register(ctx: UiContext) -> None:
    """Declare the pages (NiceGUI keeps one page registry per process)."""

    @ui.page("/login", title="medtwin · sign in")
    def login_page(request: Request, expired: str | None = None) -> None:
        with ui.card().classes("absolute-center w-96 max-w-full"):
            ui.label("medtwin").classes("text-2xl font-bold")
            ui.label("Sign in with your medtwin account.").classes("text-gray-700")
            if expired:
                ui.label("Your session expired: sign in again.").classes("text-orange-800")
            user = ui.input("User name").props("autofocus autocomplete=username").classes("w-full")
            pw = ui.input("Password", password=True, password_toggle_button=True).props(
                "autocomplete=current-password").classes("w-full")
            error = ui.label("").classes("text-red-800")

            def submit() -> None:
                try:
                    who = session.sign_in(ctx.svc, request, storage(), user.value or "",
                                          pw.value or "")
                except session.SignInError as exc:
                    error.set_text(f"Not signed in: {exc}")
                    return
                # the client adds the mount prefix to navigation targets
                ui.navigate.to("/admin" if who.role.value == "admin" else "/")

            pw.on("keydown.enter", submit)
            ui.button("Sign in", on_click=submit).classes("w-full")

    @ui.page("/", title="medtwin · ward")
    def ward_page(request: Request) -> RedirectResponse | None:
        who = _guard(ctx, request)
        if isinstance(who, RedirectResponse):
            return who
        header(ctx, who, _sign_out(ctx, request, who))
        ui.label("Ward overview").classes("text-2xl font-semibold")
        ui.label("Sickest first (NEWS2 band, score, active alerts). Updates live.").classes(
            "text-gray-700")
        try:
            ids = access.visible_patients(ctx.svc, request, who)
        except access.UiDeniedError as exc:
            ui.label(str(exc)).classes("text-red-800")
            return None
        if not ids:
            ui.label("No patients in your care teams yet: ask an admin to add you to a care "
                     "team (`medtwin user team`).").classes("text-gray-800")
            return None
        state = {"first": True}

        @ui.refreshable
        def grid() -> None:
            rows = access.ward_rows(ctx.svc, request, who, ids, audit=state["first"])
            state["first"] = False
            with ui.grid().classes("w-full gap-3 grid-cols-1 md:grid-cols-2 xl:grid-cols-3"):
                for r in rows:
                    with ui.card().classes("w-full").props(
                            f'data-patient="{r.patient_id}"'):
                        with ui.row().classes("w-full items-center justify-between"):
                            ui.link(r.name, f"/patient/{r.patient_id}").classes(
                                "text-lg font-semibold")
                            risk_badge(r.score)
                        ui.label(f"MRN {r.mrn}").classes("text-sm text-gray-700")
                        ui.label("   ".join(f"{k} {v}" for k, v in r.vitals.items())
                                 or "no vital signs yet").classes("font-mono text-sm")
                        active = [a for a in r.alerts if a.acknowledged_by is None]
                        if r.alerts:
                            ui.label(f"{len(r.alerts)} active alert(s), {len(active)} "
                                     f"unacknowledged: {r.alerts[0].message}").classes(
                                "text-sm text-red-800")
                        else:
                            ui.label("no active alerts").classes("text-sm text-gray-700")
                        ui.label(f"last reading {local_time(r.last_reading)}").classes(
                            "text-xs text-gray-600")

        grid()

        def tick() -> None:
            if _live_session(ctx, request) is not None:
                grid.refresh()

        ui.timer(ctx.refresh_seconds, tick)
        return None

    @ui.page("/patient/{patient_id}", title="medtwin · patient")
    async def patient_page(request: Request, patient_id: str) -> RedirectResponse | None:
        who = _guard(ctx, request)
        if isinstance(who, RedirectResponse):
            return who
        header(ctx, who, _sign_out(ctx, request, who))
        try:
            data = access.patient_data(ctx.svc, request, who, patient_id)
        except access.UiDeniedError as exc:
            ui.label(str(exc)).classes("text-red-800")
            ui.link("Back to the ward", "/")
            return None
        kind = twins.patient_kind(ctx.svc.store, patient_id)
        ui.link("← Ward", "/")
        ui.label(f"{data.name}").classes("text-2xl font-semibold")
        ui.label(f"MRN {data.mrn} · {kind} · id {patient_id}").classes("text-gray-700")
        vitals = ui.plotly(charts.vitals_figure(data.series)).classes("w-full")
        gfig = charts.glucose_figure(data.series)
        glucose = ui.plotly(gfig).classes("w-full") if gfig is not None else None

        @ui.refreshable
        def alert_list() -> None:
            alerts = access.patient_data(ctx.svc, request, who, patient_id, audit=False).alerts
            ui.label("Alerts").classes("text-xl font-semibold")
            if not alerts:
                ui.label("No alerts for this patient.").classes("text-gray-700")
            active = [a for a in alerts if not a.resolved]  # all of them: de-duplicated
            for a in active + [a for a in alerts if a.resolved][:5]:
                with ui.row().classes("items-center gap-3").props(f'data-alert="{a.id}"'):
                    acked = f"acknowledged by {a.acknowledged_by}" if a.acknowledged_by else ""
                    state = ("resolved" + (f", {acked}" if acked else "") if a.resolved
                             else acked or "ACTIVE")
                    ui.label(f"[{state}] severity {a.severity}: {a.message} "
                             f"({local_time(a.raised_at)})")
                    if not a.resolved and a.acknowledged_by is None:
                        ui.button("Acknowledge",
                                  on_click=lambda _e, aid=a.id: ack(aid)).props("dense")

        def ack(alert_id: int) -> None:
            if _live_session(ctx, request) is None:
                return
            try:
                access.acknowledge(ctx.svc, request, who, alert_id)
                ui.notify("Alert acknowledged (recorded in the audit trail).")
            except access.UiDeniedError as exc:
                ui.notify(f"Not acknowledged: {exc}", type="negative")
            alert_list.refresh()

        alert_list()

        def tick() -> None:
            if _live_session(ctx, request) is None:
                return
            fresh = access.patient_data(ctx.svc, request, who, patient_id, audit=False)
            vitals.update_figure(charts.vitals_figure(fresh.series))
            if glucose is not None:
                g = charts.glucose_figure(fresh.series)
                if g is not None:
                    glucose.update_figure(g)

        ui.timer(ctx.refresh_seconds, tick)
        shown: list[tuple[object, ...]] = []

        def refresh_alerts_if_changed() -> None:
            """Re-render the alerts only when they changed, so a click is not lost."""
            if _live_session(ctx, request) is None:
                return
            now = [(a.id, a.resolved, a.acknowledged_by) for a in access.patient_data(
                ctx.svc, request, who, patient_id, audit=False).alerts]
            if now != shown:
                shown[:] = now
                alert_list.refresh()

        ui.timer(ctx.refresh_seconds * 5, refresh_alerts_if_changed)
        if kind == "vancomycin":
            await _pk_panel(ctx, patient_id)
        if kind == "t1d":
            _what_if_panel()
        return None

    @ui.page("/admin", title="medtwin · admin")
    def admin_page(request: Request) -> RedirectResponse | None:
        who = _guard(ctx, request)
        if isinstance(who, RedirectResponse):
            return who
        header(ctx, who, _sign_out(ctx, request, who))
        try:
            access.require_admin(ctx.svc, request, who, "admin-page")
        except access.UiDeniedError as exc:
            ui.label(str(exc)).classes("text-red-800")
            return None
        svc = ctx.svc
        ui.label("Users and roles").classes("text-2xl font-semibold")
        users = svc.directory.users()
        svc.record(request, who, "read", "users", "success")
        ui.table(columns=[{"name": c, "label": c, "field": c} for c in
                          ("user", "role", "status", "care teams", "patient")],
                 rows=[{"user": u.username, "role": u.role.value,
                        "status": "disabled" if u.disabled else "active",
                        "care teams": ", ".join(svc.directory.teams_of(u.id)),
                        "patient": u.patient_id or ""} for u in users]).classes("w-full")
        ui.label("Audit trail").classes("text-2xl font-semibold mt-4")
        audit = AuditLog(svc.store.engine)
        v = audit.verify()
        svc.record(request, who, "verify", "audit", "success", detail=f"ok={v.ok}")
        status = (f"Chain verified: {v.entries} entries, intact." if v.ok else
                  f"CHAIN BROKEN: {len(v.problems)} problem(s): "
                  + "; ".join(str(p) for p in v.problems[:3]))
        ui.label(status).classes("font-semibold " + ("text-green-800" if v.ok else
                                                     "text-red-800"))
        recent = audit.entries()[-50:][::-1]
        svc.record(request, who, "read", "audit", "success")
        ui.table(columns=[{"name": c, "label": c, "field": c} for c in
                          ("seq", "time", "actor", "action", "resource", "outcome", "patient")],
                 rows=[{"seq": e.seq, "time": local_time(e.time), "actor": e.actor,
                        "action": e.action, "resource": e.resource, "outcome": e.outcome,
                        "patient": (e.patient_id or "")[:8]} for e in recent]).classes("w-full")
        return None


async def _pk_panel(ctx: UiContext, patient_id: str) -> None:
    """Measured levels, the personalised fit and the recommended regimen with its PTA."""
    ui.label("Vancomycin twin").classes("text-xl font-semibold mt-4")
    spinner = ui.spinner()
    try:
        view = await run.io_bound(twins.pk_view, ctx.svc.store, patient_id)
    except MedtwinError as exc:
        spinner.delete()
        ui.label(f"The PK twin could not be fitted: {exc}").classes("text-red-800")
        return
    spinner.delete()
    if view is None:
        ui.label("No vancomycin doses and levels yet: the twin needs at least one of each.")
        return
    rec = view.recommendation
    ui.plotly(charts.pk_figure(view.levels, view.course)).classes("w-full")
    ui.label(f"Recommended: {rec.dose:g} mg every {rec.interval:g} h, infused over "
             f"{rec.duration:g} h. Probability of AUC24 in {rec.target.low:g}-"
             f"{rec.target.high:g} mg·h/L: {rec.probability:.0%} (median {rec.median:.0f}, "
             f"90% {rec.interval_90[0]:.0f}-{rec.interval_90[1]:.0f} mg·h/L).").classes(
        "font-semibold")
    ui.label(f"Model {view.model}; personalised " + ", ".join(
        f"{k} {v:.3g}" for k, v in view.parameters.items()) + "; covariates weight "
        f"{view.covariates['WT']:.0f} kg, CrCl {view.covariates['CRCL']:.0f} mL/min.").classes(
        "text-sm text-gray-700")


def _what_if_panel() -> None:
    """Add a meal (and pick the controller): the predicted day next to the current plan."""
    ui.label("What if? (glucose)").classes("text-xl font-semibold mt-4")
    ui.label("Virtual UVA/Padova adult standing in for the patient (a personalised glucose "
             "twin is not wired in yet). Plan: meals 07:00 50 g, 12:00 70 g, 19:00 80 g."
             ).classes("text-sm text-gray-700")
    with ui.row().classes("items-end gap-3"):
        when = ui.input("Extra meal at (HH:MM)", value="15:30").classes("w-40")
        grams = ui.number("Carbohydrate [g]", value=60, min=0, max=300).classes("w-40")
        ctrl = ui.select(controller_names(), value="basal-bolus", label="Controller")
        go = ui.button("Predict")
    result = ui.label("")
    plot = ui.plotly(charts.what_if_figure(*_empty())).classes("w-full")

    async def predict() -> None:
        try:
            w = await run.io_bound(twins.glucose_what_if, (when.value, float(grams.value or 0)),
                                   controller=ctrl.value)
        except MedtwinError as exc:
            result.set_text(f"Cannot predict: {exc}")
            return
        plot.update_figure(charts.what_if_figure(w.plan, w.changed))
        result.set_text(f"Time in range 70-180 mg/dL: plan {w.time_in_range('plan'):.0f}% → "
                        f"what-if {w.time_in_range():.0f}%; peak {w.changed['glucose'].max():.0f}"
                        " mg/dL.")

    go.on_click(predict)


def _empty():  # noqa: ANN202 - two empty frames
    import pandas as pd

    e = pd.DataFrame({"minute": [], "glucose": []})
    return e, e
