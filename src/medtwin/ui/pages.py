"""The dashboard's pages: sign-in, ward overview, patient twin, admin.

Each page checks the session first (no session: redirect to sign-in) and reads through
:mod:`medtwin.ui.access`, which applies the service's policy and audit. The patient page shows
the patient's own twins (the glucose twin's forecast and what-if, the vancomycin twin's
recommendation and dose what-if, the cardio twin of a patient with a cardiac diagnosis)
through the service functions the API's ``/twins`` routes use. A role lands where it may
look (:func:`home_of`); times are in the browser's zone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta, tzinfo

import pandas as pd
from fastapi.responses import RedirectResponse
from nicegui import run, ui
from nicegui.client import ClientConnectionTimeout
from starlette.requests import Request

from medtwin.core.errors import MedtwinError
from medtwin.monitor.rules import SEVERITY_WORDS
from medtwin.monitor.vitals import News2Breakdown
from medtwin.security.roles import Principal, Role
from medtwin.twin.service import GlucoseView, TwinNotReadyError
from medtwin.twin.vancomycin import REGIMEN_MAX_DOSE
from medtwin.ui import access, charts, session, twins
from medtwin.ui.cardio import CardioPanel, cardiac_diagnoses
from medtwin.ui.layout import (
    UiContext,
    ask_zone,
    demo_banner,
    header,
    local_time,
    storage,
    user_zone,
    zone_label,
)
from medtwin.ui.ward import LiveWard, badge_html, news2_table_html, why_html

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


def home_of(who: Principal) -> str:
    """The page a role lands on after signing in (researchers see no identified data: the
    trials page; admins: users and audit; clinicians and patients: the ward)."""
    if who.role is Role.ADMIN:
        return "/admin"
    if who.role is Role.RESEARCHER:
        return "/trials"
    return "/"


def register(ctx: UiContext) -> None:
    """Declare the pages (NiceGUI keeps one page registry per process)."""

    @ui.page("/login", title="medtwin · sign in")
    def login_page(request: Request, expired: str | None = None) -> None:
        with ui.card().classes("absolute-center w-96 max-w-full"):
            demo_banner(ctx.svc)
            ui.label("medtwin").classes("text-2xl font-bold")
            ui.label("Sign in with your medtwin account.").classes("text-gray-700")
            if expired:
                ui.label("Your session expired: sign in again.").classes("text-orange-800")
            user = ui.input("User name").props("autofocus autocomplete=username").classes("w-full")
            pw = ui.input("Password", password=True, password_toggle_button=True).props(
                "autocomplete=current-password").classes("w-full")
            error = ui.label("").classes("text-red-800")

            async def submit() -> None:
                try:
                    who = session.sign_in(ctx.svc, request, storage(), user.value or "",
                                          pw.value or "")
                except session.SignInError as exc:
                    error.set_text(f"Not signed in: {exc}")
                    return
                await ask_zone()  # times are shown in this browser's zone from now on
                # the client adds the mount prefix to navigation targets
                ui.navigate.to(home_of(who))

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
            ui.label(f"Not shown: {exc}").classes("text-red-800").props('role="alert"')
            if home_of(who) != "/":
                ui.link("Go to the pages you may use", home_of(who))
            return None
        if not ids:
            ui.label("No patients in your care teams yet: ask an admin to add you to a care "
                     "team (`medtwin user team`).").classes("text-gray-800")
            return None
        LiveWard(ctx, request, who, ids, lambda: _live_session(ctx, request))
        return None

    @ui.page("/patient/{patient_id}", title="medtwin · patient")
    async def patient_page(request: Request, patient_id: str) -> RedirectResponse | None:
        who = _guard(ctx, request)
        if isinstance(who, RedirectResponse):
            return who
        header(ctx, who, _sign_out(ctx, request, who))
        reason = _emergency_reasons().get(patient_id) if who.role is Role.ADMIN else None
        try:
            data = access.patient_data(ctx.svc, request, who, patient_id, break_glass=reason)
        except access.UiDeniedError as exc:
            ui.label(f"Not shown: {exc}").classes("text-red-800").props('role="alert"')
            if who.role is Role.ADMIN:
                _emergency_form(patient_id)
            ui.link("Back to the pages you may use", home_of(who))
            return None
        kind = twins.patient_kind(ctx.svc.store, patient_id)
        zone = user_zone()
        if who.role in (Role.CLINICIAN, Role.PATIENT):
            ui.link("← Ward", "/")
        if reason:
            ui.label(f"Emergency access: your reason \"{reason}\" is recorded in the audit "
                     "trail with every read of this record.").classes(
                "bg-red-100 text-red-900 px-3 py-1 rounded").props('role="note"')
        if not access.demo_store(ctx.svc) and access.synthetic_patient(ctx.svc, patient_id):
            ui.label("Synthetic test patient — not a real person.").classes(
                "bg-yellow-300 text-black font-semibold px-3 py-1 rounded").props(
                'data-demo-banner role="note"')
        ui.label(f"{data.name}").classes("text-2xl font-semibold")
        ui.label(f"MRN {data.mrn} · {KIND_TEXT.get(kind, kind)} · id {patient_id}").classes(
            "text-gray-700")
        ui.label("NEWS2 now").classes("text-xl font-semibold mt-2")
        news2_block = ui.html(_news2_html(data.news2), sanitize=False).classes(
            "w-full max-w-3xl").props("data-news2-now")
        chart = {"series": data.series, "forecast": None}
        vitals = ui.plotly(charts.vitals_figure(data.series, zone)).classes("w-full")
        gfig = charts.glucose_figure(data.series, zone, always=kind == "t1d")
        glucose = ui.plotly(gfig).classes("w-full glucose-plot") if gfig is not None else None
        may_acknowledge = who.role is Role.CLINICIAN

        @ui.refreshable
        def alert_list() -> None:
            alerts = access.patient_data(ctx.svc, request, who, patient_id, audit=False,
                                         break_glass=reason).alerts
            ui.label("Alerts").classes("text-xl font-semibold")
            if not alerts:
                ui.label("No alerts for this patient.").classes("text-gray-700")
            active = [a for a in alerts if not a.resolved]  # all of them: de-duplicated
            for a in active + [a for a in alerts if a.resolved][:5]:
                with ui.row().classes("items-center gap-3").props(f'data-alert="{a.id}"'):
                    acked = f"acknowledged by {a.acknowledged_by}" if a.acknowledged_by else ""
                    state = ("resolved" + (f", {acked}" if acked else "") if a.resolved
                             else acked or "ACTIVE")
                    level = SEVERITY_WORDS.get(a.severity, a.severity)
                    ui.label(f"[{state}] {level}: {a.message} "
                             f"({local_time(a.raised_at, zone)})")
                    if may_acknowledge and not a.resolved and a.acknowledged_by is None:
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
            fresh = access.patient_data(ctx.svc, request, who, patient_id, audit=False,
                                        break_glass=reason)
            chart["series"] = fresh.series
            text = _news2_html(fresh.news2)
            if text != news2_block.content:  # send it only when it changed
                news2_block.set_content(text)
            vitals.update_figure(charts.vitals_figure(fresh.series, zone))
            if glucose is not None:
                g = charts.glucose_figure(fresh.series, zone, chart["forecast"],
                                          always=kind == "t1d")
                if g is not None:
                    glucose.update_figure(g)

        ui.timer(ctx.refresh_seconds, tick)
        shown: list[tuple[object, ...]] = []

        def refresh_alerts_if_changed() -> None:
            """Re-render the alerts only when they changed, so a click is not lost."""
            if _live_session(ctx, request) is None:
                return
            now = [(a.id, a.resolved, a.acknowledged_by) for a in access.patient_data(
                ctx.svc, request, who, patient_id, audit=False, break_glass=reason).alerts]
            if now != shown:
                shown[:] = now
                alert_list.refresh()

        ui.timer(ctx.refresh_seconds * 5, refresh_alerts_if_changed)
        if reason:  # emergency access shows the record; the twins are the care team's
            ui.label("The patient's twins (forecasts, what-ifs, dosing) are shown to the "
                     "care team only.").classes("text-gray-700 mt-4")
            return None
        diagnoses = cardiac_diagnoses(ctx.svc.store, patient_id)
        if kind not in ("t1d", "vancomycin") and not diagnoses:
            return None
        # the vancomycin section and its loading indicator go out with the page
        pk = _PKPanel(ctx, request, who, patient_id, zone) if kind == "vancomycin" else None
        if pk is not None:
            pk.placeholder()
        try:  # the page is sent first; the twins are computed while the user looks at it
            await ui.context.client.connected(timeout=60)
        except ClientConnectionTimeout:
            return None
        if kind == "t1d":
            await _GlucosePanel(ctx, request, who, patient_id, chart, zone).build()
        if pk is not None:
            await pk.build()
        if diagnoses:
            await CardioPanel(ctx.svc, request, who, patient_id, diagnoses, zone,
                              lambda: _live_session(ctx, request)).build()
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
                        "patient": u.patient_id or ""} for u in users]).classes(
            "w-full max-w-full").props("wrap-cells")
        ui.label("Audit trail").classes("text-2xl font-semibold mt-4")
        audit = svc.audit  # keyed with the key ring, anchored outside the database
        v = audit.verify()
        svc.record(request, who, "verify", "audit", "success", detail=f"ok={v.ok}")
        status = (f"Chain verified: {v.entries} entries, intact." if v.ok else
                  f"CHAIN BROKEN: {len(v.problems)} problem(s): "
                  + "; ".join(str(p) for p in v.problems[:3]))
        ui.label(status).classes("font-semibold " + ("text-green-800" if v.ok else
                                                     "text-red-800"))
        recent = audit.recent(50)
        svc.record(request, who, "read", "audit", "success")
        time_col = f"time ({zone_label()})"
        ui.table(columns=[{"name": c, "label": c, "field": c} for c in
                          ("seq", time_col, "actor", "action", "resource", "outcome",
                           "patient")],
                 rows=[{"seq": e.seq, time_col: local_time(e.time), "actor": e.actor,
                        "action": e.action, "resource": e.resource, "outcome": e.outcome,
                        "patient": (e.patient_id or "")[:8]} for e in recent]).classes(
            "w-full max-w-full").props("wrap-cells")
        return None

    from medtwin.ui import ops_page, trials_page  # they import this module's guards

    trials_page.register(ctx)
    ops_page.register(ctx)


def _news2_html(b: News2Breakdown | None) -> str:
    """NEWS2 now, as on the ward tile: the badge, why it is partial, every parameter."""
    if b is None or not any(i.time for i in b.items):
        return '<div class="text-gray-700">No vital signs recorded yet: no NEWS2 score.</div>'
    badge = badge_html(access.WardRow("", "", "", {}, b.score, breakdown=b))
    return f'<div class="mb-1">{badge}</div>{why_html(b)}{news2_table_html(b)}'


EMERGENCY = "emergency"  # session key: {patient id: an admin's emergency reason}


def _emergency_reasons() -> dict[str, str]:
    """The emergency reasons this admin's browser session has given, by patient."""
    return dict(storage().get(EMERGENCY) or {})


def _emergency_form(patient_id: str) -> None:
    """An admin's emergency (break-glass) access: a reason, then the record opens; the
    reason is audited with every read of it."""
    with ui.column().classes("gap-2 max-w-xl").props("data-emergency"):
        why = ui.textarea("Reason for emergency access (recorded in the audit trail)").classes(
            "w-full")
        problem = ui.label("").classes("text-red-800")

        def open_record() -> None:
            text = (why.value or "").strip()
            if len(text) < 10:
                problem.set_text("Give the reason in a few words (at least 10 characters): "
                                 "it is what the audit trail will show.")
                return
            storage()[EMERGENCY] = {**_emergency_reasons(), patient_id: text}
            ui.navigate.reload()

        ui.button("Open the record (emergency access)", on_click=open_record).props(
            'color=negative data-action="emergency-open"')


KIND_TEXT = {"t1d": "type 1 diabetes (CGM, insulin)", "vancomycin": "on vancomycin",
             "deteriorating": "deteriorating", "stable": "stable"}
TWIN_REFRESH = 15.0  # s between glucose twin updates of an open page
HISTORY = timedelta(hours=4)  # glucose readings shown before a prediction


def _f(value: float, unit: str) -> str:
    return f"{value:.0f} {unit}"


def _outlook_rows(view: GlucoseView) -> list[dict[str, str]]:
    """The comparison table of the what-if panel: current plan next to the what-if."""
    plan, alt = view.outlook, view.what_if_outlook
    rows = [("peak (mean)", lambda o: _f(o.peak, "mg/dL")),
            ("lowest (mean)", lambda o: _f(o.nadir, "mg/dL")),
            ("time in 70-180 mg/dL", lambda o: f"{o.time_in_range:.0f} %"),
            ("P(< 70 mg/dL within 30 min)", lambda o: f"{o.hypo_probability:.0%}")]
    return [{"measure": name, "current plan": fmt(plan),
             "what-if": fmt(alt) if alt is not None else "press Predict"}
            for name, fmt in rows]


class _GlucosePanel:
    """The patient's own glucose twin: its forecast with its 90% band on the glucose chart,
    its state, and the what-if panel (meals, boluses, a basal rate) whose predicted course is
    drawn next to the current plan's. Every call goes through :func:`access.glucose_twin`
    (the policy, the audit and the service function of ``/twins/{id}/glucose``)."""

    def __init__(self, ctx: UiContext, request: Request, who: Principal, patient_id: str,
                 chart: dict[str, object], zone: tzinfo) -> None:
        self.ctx, self.request, self.who, self.patient_id = ctx, request, who, patient_id
        self.chart, self.zone = chart, zone
        self.rows: list[twins.PlanRow] = [twins.PlanRow("meal", 15, 60)]
        self.basal: float | None = None
        self.horizon = 180
        self.view: GlucoseView | None = None
        self.what_if: GlucoseView | None = None
        self.panel_built = False

    async def build(self) -> None:
        """The section's heading and status, then the first update (audited)."""
        ui.label("Glucose twin").classes("text-xl font-semibold mt-4")
        self.status = ui.label("Bringing this patient's glucose twin up to date…").props(
            'data-twin-status aria-live="polite"')
        self.body = ui.column().classes("w-full gap-2")
        await self.update(audit=True)
        ui.timer(TWIN_REFRESH, self.update)

    async def update(self, audit: bool = False) -> None:
        """Bring the twin up to date; its forecast goes on the glucose chart."""
        if _live_session(self.ctx, self.request) is None:
            return
        try:
            view = await run.io_bound(access.glucose_twin, self.ctx.svc, self.request, self.who,
                                      self.patient_id, horizon=self.horizon, audit=audit)
        except TwinNotReadyError:
            self.status.set_text(
                "No glucose twin yet: it starts at this patient's first CGM or blood glucose "
                "reading, and none is stored. Connect the CGM (its readings arrive over MQTT, "
                f"e.g. `medtwin stream`); this page checks again every {TWIN_REFRESH:.0f} s.")
            return
        except MedtwinError as exc:
            self.status.set_text(f"The glucose twin could not be updated: {exc}")
            return
        if view is None:  # the client went away while the twin was computed
            return
        self.view = view
        self.chart["forecast"] = view.forecast
        p = view.hypo_probability
        self.status.set_text(
            f"Twin at {local_time(view.twin_time, self.zone)}: glucose {view.glucose:.0f} mg/dL"
            f", estimated insulin sensitivity {view.insulin_sensitivity:.3g} (Vmx), "
            f"P(< 70 mg/dL within 30 min) {p:.0%}"
            + (f", low expected in ~{view.minutes_to_hypo:.0f} min" if p >= 0.5 and
               view.minutes_to_hypo is not None else "")
            + f". Model {view.model} {view.model_version}.")
        if not self.panel_built:
            self.panel_built = True
            with self.body:
                self._what_if_panel()
        elif self.what_if is None:
            self._show(view)

    def _history(self) -> pd.DataFrame:
        series = self.chart["series"]
        assert isinstance(series, pd.DataFrame)
        g = series[series["code"].isin([access.CGM, access.GLUCOSE_LAB])]
        if self.view is not None and len(g):
            g = g[g["time"] >= pd.Timestamp(self.view.twin_time) - HISTORY]
        return g

    def _what_if_panel(self) -> None:
        ui.label("What if? (this patient's glucose twin)").classes("text-lg font-semibold")
        ui.label("Predicted from the twin's latest state. Current plan: the recorded meals and "
                 "insulin, basal at the twin's titrated rate. Add or change meals and boluses "
                 "(minutes after the twin's time) or set a basal rate, then Predict; nothing "
                 "is stored.").classes("text-sm text-gray-700")
        with ui.column().classes("w-full gap-1"):
            self._rows()
        with ui.row().classes("items-end gap-3 flex-wrap"):
            ui.button("Add meal", on_click=lambda: self._add("meal")).props("outline")
            ui.button("Add bolus", on_click=lambda: self._add("bolus")).props("outline")
            ui.number("Basal from now [U/h]", min=0, max=10, step=0.05,
                      on_change=lambda e: setattr(self, "basal", e.value)).props(
                'hint="blank: unchanged"').classes("w-48")
            ui.select({120: "2 h", 180: "3 h", 360: "6 h", 720: "12 h"}, value=self.horizon,
                      label="Horizon", on_change=lambda e: setattr(self, "horizon", e.value)
                      ).classes("w-28")
            ui.button("Predict", on_click=self.predict).props('data-action="predict"')
        self.result = ui.label("").props('aria-live="polite" data-what-if-result')
        self.table = ui.table(columns=[{"name": c, "label": c, "field": c, "align": "left"}
                                       for c in ("measure", "current plan", "what-if")],
                              rows=_outlook_rows(self.view) if self.view else []
                              ).classes("max-w-full").props("dense")
        self.plot = ui.plotly(charts.what_if_figure(self.view, self._history(), self.zone)
                              ).classes("w-full what-if-plot")
        self.marks: list[tuple[str, object]] = []

    @ui.refreshable_method
    def _rows(self) -> None:
        if not self.rows:
            ui.label("No meal or bolus planned: add one, or set a basal rate.").classes(
                "text-sm text-gray-700")
        for row, n in twins.numbered(self.rows):  # Meal 1, Meal 2, Bolus 1: per kind
            name = "Meal" if row.kind == "meal" else "Bolus"
            what = "carbohydrate [g]" if row.kind == "meal" else "insulin [U]"
            with ui.row().classes("items-end gap-3 flex-wrap").props(
                    f'data-plan-row="{row.kind}"'):
                ui.label(f"{name} {n}").classes("w-20 font-semibold")
                ui.number(f"{name} {n} in [min]", value=row.minutes, min=0, max=1440,
                          on_change=lambda e, r=row: setattr(r, "minutes", e.value)
                          ).classes("w-40")
                ui.number(f"{name} {n} {what}", value=row.amount, min=0,
                          max=300 if row.kind == "meal" else 50,
                          on_change=lambda e, r=row: setattr(r, "amount", e.value)
                          ).classes("w-48")
                ui.button(f"Remove {name.lower()} {n}",
                          on_click=lambda _e, r=row: self._remove(r)).props("flat dense")

    def _add(self, kind: str) -> None:
        self.rows.append(twins.PlanRow(kind, 0, 60 if kind == "meal" else 2))
        self._rows.refresh()

    def _remove(self, row: twins.PlanRow) -> None:
        self.rows = [r for r in self.rows if r is not row]
        self._rows.refresh()

    async def predict(self) -> None:
        """Run the plan on the patient's twin (audited as a read of the twin)."""
        if _live_session(self.ctx, self.request) is None or self.view is None:
            return
        try:
            plan = twins.glucose_plan(self.rows, self.basal, self.view.twin_time)
        except MedtwinError as exc:
            self.result.set_text(f"Cannot predict: {exc}")
            return
        if plan.empty:
            self.result.set_text("Nothing to predict: add a meal or a bolus, or set a basal "
                                 "rate.")
            return
        self.result.set_text("Predicting…")
        try:
            view = await run.io_bound(access.glucose_twin, self.ctx.svc, self.request, self.who,
                                      self.patient_id, horizon=self.horizon, plan=plan)
        except MedtwinError as exc:
            self.result.set_text(f"Cannot predict: {exc}")
            return
        if view is None:
            return
        self.view = self.what_if = view
        self.marks = twins.plan_marks(self.rows, view.twin_time)  # type: ignore[assignment]
        self._show(view)
        o = view.what_if_outlook
        assert o is not None
        self.result.set_text(
            f"What-if from the twin at {local_time(view.twin_time, self.zone)}: peak "
            f"{o.peak:.0f} mg/dL (current plan {view.outlook.peak:.0f}), lowest {o.nadir:.0f} "
            f"(current plan {view.outlook.nadir:.0f}) over {self.horizon // 60} h.")

    def _show(self, view: GlucoseView) -> None:
        self.table.rows = _outlook_rows(view)
        self.table.update()
        self.plot.update_figure(charts.what_if_figure(view, self._history(), self.zone,
                                                      marks=self.marks))  # type: ignore[arg-type]


class _PKPanel:
    """The personalised vancomycin twin: measured levels, the fit, the recommended regimen
    with its PTA, the current regimen continued, and a dose-change what-if. Every call goes
    through :func:`access.dose` (the policy, the audit and the service function of
    ``/twins/{id}/dose``)."""

    def __init__(self, ctx: UiContext, request: Request, who: Principal, patient_id: str,
                 zone: tzinfo) -> None:
        self.ctx, self.request, self.who, self.patient_id = ctx, request, who, patient_id
        self.zone = zone

    def placeholder(self) -> None:
        """The section's heading and a loading indicator, sent with the page (the fit takes
        a few seconds)."""
        ui.label("Vancomycin twin").classes("text-xl font-semibold mt-4")
        self.box = ui.column().classes("w-full gap-2")
        with self.box:
            with ui.row().classes("items-center gap-3").props(
                    'data-pk-loading role="status" aria-live="polite"') as self.loading:
                ui.spinner(size="lg")
                ui.label("Fitting this patient's vancomycin twin to the measured levels and "
                         "working out the recommended dose… this takes a few seconds.")

    async def build(self) -> None:
        """Fit, recommend, draw; then the what-if inputs (in the placeholder's section)."""
        try:
            cmp = await run.io_bound(access.dose, self.ctx.svc, self.request, self.who,
                                     self.patient_id)
        except TwinNotReadyError:
            self.loading.delete()
            with self.box:
                ui.label("No vancomycin twin yet: it needs at least one recorded dose and one "
                         "measured level. Record them (FHIR import or the API); this page "
                         "shows the twin when you reload it.")
            return
        except MedtwinError as exc:
            self.loading.delete()
            with self.box:
                ui.label(f"The PK twin could not be fitted: {exc}").classes("text-red-800")
            return
        self.loading.delete()
        if cmp is None:
            return
        with self.box:
            self._show_section(cmp)

    def _show_section(self, cmp: access.DoseComparison) -> None:
        view = cmp.recommended
        self.plot = ui.plotly(self._figure(cmp)).classes("w-full pk-plot")
        self.lines = ui.column().classes("gap-1").props('aria-live="polite" data-pk-result')
        self._describe(cmp)
        ui.label(f"Model {view.model}; personalised " + ", ".join(
            f"{k} {v:.3g}" for k, v in view.parameters.items()) + "; covariates weight "
            f"{view.covariates['WT']:.0f} kg, CrCl {view.covariates['CRCL']:.0f} mL/min."
        ).classes("text-sm text-gray-700")
        ui.label("What if the dose changes?").classes("text-lg font-semibold mt-2")
        start = cmp.current_regimen or twins.regimen(view.recommendation.dose,
                                                     view.recommendation.interval,
                                                     view.recommendation.duration)
        with ui.row().classes("items-end gap-3 flex-wrap"):
            self.dose = ui.number("Dose [mg]", value=start.dose, min=250, max=REGIMEN_MAX_DOSE,
                                  step=250).classes("w-32")
            self.every = ui.select({6.0: "6 h", 8.0: "8 h", 12.0: "12 h", 24.0: "24 h",
                                    36.0: "36 h", 48.0: "48 h"},
                                   value=start.interval if start.interval in
                                   (6, 8, 12, 24, 36, 48) else 12.0,
                                   label="Every").classes("w-28")
            self.infusion = ui.number("Infusion [h]", value=start.infusion, min=0.25,
                                      max=48, step=0.25).classes("w-32")
            ui.button("Predict", on_click=self.predict).props('data-action="predict-dose"')
        self.error = ui.label("").classes("text-red-800")

    def _figure(self, cmp: access.DoseComparison) -> object:
        compare = []
        if cmp.current is not None and cmp.current_regimen is not None:
            compare.append((f"current: {cmp.current_regimen.text()}", cmp.current.course,
                            charts.PLAN_COLOUR))
        if cmp.what_if is not None and cmp.what_if_regimen is not None:
            compare.append((f"what-if: {cmp.what_if_regimen.text()}", cmp.what_if.course,
                            charts.WHAT_IF_COLOUR))
        v = cmp.recommended
        return charts.pk_figure(v.levels, v.course, self.zone, compare=compare)

    def _describe(self, cmp: access.DoseComparison) -> None:
        self.lines.clear()
        rec = cmp.recommended.recommendation
        band = f"AUC24 in {rec.target.low:g}-{rec.target.high:g} mg·h/L"
        with self.lines:
            ui.label(f"Recommended: {rec.dose:g} mg every {rec.interval:g} h, infused over "
                     f"{rec.duration:g} h. Probability of {band}: {rec.probability:.0%} "
                     f"(median {rec.median:.0f}, 90% {rec.interval_90[0]:.0f}-"
                     f"{rec.interval_90[1]:.0f} mg·h/L).").classes("font-semibold")
            for name, view, reg in (("Current regimen continued", cmp.current,
                                     cmp.current_regimen),
                                    ("What-if", cmp.what_if, cmp.what_if_regimen)):
                if view is not None and reg is not None:
                    r = view.recommendation
                    ui.label(f"{name}: {reg.text()}. Probability of {band}: "
                             f"{r.probability:.0%} (median {r.median:.0f} mg·h/L).")

    async def predict(self) -> None:
        """The course and PTA of the entered regimen next to the current and recommended."""
        if _live_session(self.ctx, self.request) is None:
            return
        try:
            reg = twins.regimen(self.dose.value, self.every.value, self.infusion.value)
            self.error.set_text("Predicting…")
            cmp = await run.io_bound(access.dose, self.ctx.svc, self.request, self.who,
                                     self.patient_id, what_if=reg)
        except MedtwinError as exc:
            self.error.set_text(f"Cannot predict: {exc}")
            return
        if cmp is None:
            return
        self.error.set_text("")
        self.plot.update_figure(self._figure(cmp))
        self._describe(cmp)
