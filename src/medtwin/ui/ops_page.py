"""The dashboard's Hospital-operations page: run a patient-flow model under a scenario.

The user picks a shipped model (``medtwin.ops.models``) and a scenario (the base, more or
fewer arrivals, one more of a resource), the number of replications and a seed. Replications
run one by one in a worker thread (``nicegui.run.io_bound``) with a live progress bar; the
page then shows the waits with their 95% confidence intervals, the utilisation of each
resource, occupancy over the day and, for a model with a census activity (``ed_inpatient``),
the occupancy forecast from the current census of the store.

The domain code does the work: :func:`medtwin.ops.runner.one_replication` per replication
and :func:`~medtwin.ops.runner.gather_replications` for the summary, :mod:`medtwin.ops.report`
for the figures, :mod:`medtwin.ops.forecast` for the forecast. Only the replication loop is
here (``run_replications`` has no progress hook); it gives the same numbers as
``medtwin ops run MODEL --reps R --seed S`` (a test holds it so).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from fastapi.responses import RedirectResponse
from nicegui import run, ui
from starlette.requests import Request

from medtwin.core.errors import MedtwinError, ValidationError
from medtwin.ops.forecast import Census, census_from_store, forecast
from medtwin.ops.loader import load_model, shipped_models
from medtwin.ops.report import figures
from medtwin.ops.runner import Replicate, Results, gather_replications, one_replication
from medtwin.ops.scenarios import Scenario
from medtwin.ops.schema import Model
from medtwin.ui.access import UiDeniedError
from medtwin.ui.layout import UiContext, header, local_time
from medtwin.ui.pages import _guard, _live_session, _sign_out
from medtwin.ui.runs import run_exclusively, show_failure
from medtwin.ui.trials_page import field_problem, require_simulation_role, whole_number

log = logging.getLogger(__name__)

MAX_REPS = 100  # per run from the dashboard (more: `medtwin ops run --reps`)
MAX_FORECAST_HOURS = 14 * 24
DEFAULT_MODEL = "nelson_treatment_centre"
_PLOT_LAYOUT = {"height": 380, "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
                "template": "plotly_white"}



def preset_scenarios(model: Model) -> list[Scenario]:
    """The scenarios offered for ``model``: the base, arrivals +/-20%, and one more of each
    resource (a rostered resource: one more on duty every hour)."""
    out = [Scenario("base"), Scenario("arrivals +20%", arrival_scale=1.2),
           Scenario("arrivals -20%", arrival_scale=0.8)]
    for r in model.resources.values():
        if r.roster is not None:
            change = {"roster": [c + 1 for c in r.roster]}
            name = f"+1 {r.name} on duty every hour"
        else:
            change = {"capacity": r.capacity + 1}
            name = f"+1 {r.name} ({r.capacity} → {r.capacity + 1})"
        out.append(Scenario(name, {"resources": {r.name: change}}))
    return out


def check_reps(value: object) -> int:
    """The replications field as a whole number in ``[2, MAX_REPS]`` (a CI needs two)."""
    return whole_number(value, "replications", "10", low=2, high=MAX_REPS)


def check_seed(value: object) -> int:
    """The seed field as a whole number >= 0."""
    return whole_number(value, "seed", "0", low=0)


def check_hours(value: object) -> int:
    """The forecast horizon [h] as a whole number in ``[1, MAX_FORECAST_HOURS]``."""
    return whole_number(value, "forecast hours", "48", low=1, high=MAX_FORECAST_HOURS)


def _ci_row(name: str, r: pd.Series, scale: float = 1.0, digits: int = 1) -> dict[str, Any]:
    def fmt(x: float) -> float | None:
        return None if not math.isfinite(x) else round(float(x) * scale, digits)

    return {"name": name, "mean": fmt(r["mean"]), "ci_low": fmt(r["ci_low"]),
            "ci_high": fmt(r["ci_high"]), "n": int(r["n"])}


def wait_rows(res: Results) -> list[dict[str, Any]]:
    """Mean wait per activity (model time unit) with its 95% CI and the share who waited."""
    s = res.summary()
    rows = []
    for kpi, r in s[s.index.str.startswith("wait:")].iterrows():
        activity = str(kpi)[5:]
        if not math.isfinite(r["mean"]):
            continue
        row = _ci_row(activity, r)
        share = s["mean"].get(f"p_wait:{activity}", math.nan)
        row["waited"] = None if not math.isfinite(share) else round(100 * float(share), 1)
        rows.append(row)
    return rows


def utilisation_rows(res: Results) -> list[dict[str, Any]]:
    """Utilisation [%] of each resource with its 95% CI."""
    s = res.summary()
    return [_ci_row(str(k)[5:], r, 100.0) for k, r in s[s.index.str.startswith("util:")]
            .iterrows()]


def flow_rows(res: Results) -> list[dict[str, Any]]:
    """Arrivals, throughput, time in system, share within each target, left without being
    seen: mean and 95% CI (shares in %)."""
    s = res.summary()
    unit = res.model.time_unit
    rows = []
    for kpi, r in s.iterrows():
        k = str(kpi)
        if k in ("arrivals", "throughput"):
            rows.append(_ci_row(f"{k} (patients)", r))
        elif k == "lwbs":
            rows.append(_ci_row("left without being seen (patients)", r))
        elif k == "lwbs_rate":
            rows.append(_ci_row("left without being seen (%)", r, 100.0))
        elif k == "time_in_system" or k.startswith("time_in_system:"):
            what = k.replace("time_in_system", "time in system").replace(":", ", ")
            rows.append(_ci_row(f"{what} ({unit})", r))
        elif k.startswith("p_within_"):
            rows.append(_ci_row(f"time in system within {k[9:]} (%)", r, 100.0))
    return rows


def kpi_csv(res: Results) -> bytes:
    """Every KPI's mean, sd, n and 95% CI (what ``medtwin ops run --summary`` writes)."""
    return res.summary().to_csv().encode("utf-8")


def forecast_figure(fc: pd.DataFrame) -> go.Figure:
    """Occupancy of the census resource, hour by hour ahead, with its 95% prediction band
    and the capacity."""
    x = fc["hour_ahead"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=fc["occupancy_hi"], line={"width": 0}, showlegend=False,
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=fc["occupancy_lo"], fill="tonexty", line={"width": 0},
                             fillcolor="rgba(31,119,180,0.25)", name="95% prediction interval"))
    fig.add_trace(go.Scatter(x=x, y=fc["occupancy_mean"], name="mean occupancy",
                             line={"color": "#1f77b4"}))
    cap = fc.attrs.get("capacity")
    if cap is not None:
        fig.add_hline(y=cap, line_dash="dash", line_color="#b22222",
                      annotation_text=f"capacity {cap}", annotation_position="top left")
    fig.update_layout(title=f"Occupancy forecast: {fc.attrs.get('activity', '')} (patients)",
                      xaxis_title="hours after the census", yaxis_title="patients",
                      **_PLOT_LAYOUT)
    return fig


def forecast_text(fc: pd.DataFrame) -> str:
    """The forecast's peak, in words."""
    i = int(fc["occupancy_mean"].idxmax())
    r = fc.loc[i]
    return (f"Census {fc.attrs['census']} in '{fc.attrs['activity']}' (capacity "
            f"{fc.attrs['capacity']}); expected peak {r['occupancy_mean']:.1f} patients "
            f"(95% PI {r['occupancy_lo']:.0f}-{r['occupancy_hi']:.0f}) {int(r['hour_ahead'])} h "
            f"after the census; {fc.attrs['reps']} replications.")


def _ci_table(rows: list[dict[str, Any]], name: str, value: str, testid: str) -> None:
    cols = [{"name": "name", "label": name, "field": "name", "align": "left"},
            {"name": "mean", "label": value, "field": "mean"},
            {"name": "ci_low", "label": "95% CI low", "field": "ci_low"},
            {"name": "ci_high", "label": "95% CI high", "field": "ci_high"}]
    if rows and "waited" in rows[0]:
        cols.append({"name": "waited", "label": "waited at all [%]", "field": "waited"})
    cols.append({"name": "n", "label": "replications", "field": "n"})
    ui.table(columns=cols, rows=rows, row_key="name", pagination=0).classes("w-full").props(
        f'dense hide-bottom data-testid="{testid}"')


def register(ctx: UiContext) -> None:
    """Declare ``/ops`` (one operations run at a time per server: the others wait)."""
    slot = asyncio.Semaphore(1)
    names = shipped_models()

    @ui.page("/ops", title="medtwin · operations")
    def ops_page(request: Request) -> RedirectResponse | None:
        who = _guard(ctx, request)
        if isinstance(who, RedirectResponse):
            return who
        header(ctx, who, _sign_out(ctx, request, who))
        svc, client = ctx.svc, ui.context.client
        ui.label("Hospital operations").classes("text-2xl font-semibold")
        try:
            require_simulation_role(svc, request, who, "ops-page")
        except UiDeniedError as exc:
            ui.label(str(exc)).classes("text-red-800")
            return None
        if not names:
            ui.label("No operations model is installed: reinstall medtwin (the models ship "
                     "in medtwin/ops/models).").classes("text-red-800")
            return None
        state: dict[str, Any] = {"model": None, "scenarios": []}
        with ui.row().classes("w-full items-start gap-4 flex-wrap"):
            model_sel = ui.select(names, value=DEFAULT_MODEL if DEFAULT_MODEL in names
                                  else names[0], label="Model").classes("w-64").props(
                'data-testid="ops-model"')
            scen_sel = ui.select([], label="Scenario").classes("w-80").props(
                'data-testid="ops-scenario"')
            reps_in = ui.number("Replications", value=10, step=1, format="%d",
                                validation=lambda v: field_problem(check_reps, v)).props(
                f'hint="2 to {MAX_REPS}"').classes("w-36")
            seed_in = ui.number("Seed", value=0, step=1, format="%d",
                                validation=lambda v: field_problem(check_seed, v)).classes(
                "w-36")
            hours_in = ui.number("Forecast hours", value=48, step=1, format="%d",
                                 validation=lambda v: field_problem(check_hours, v)).classes(
                "w-36")
            go_button = ui.button("Run replications").classes("mt-3").props(
                'data-testid="run-ops"')
        about = ui.label("").classes("text-sm text-gray-700")

        def model_changed() -> None:
            try:
                m = load_model(model_sel.value)
            except MedtwinError as exc:
                about.set_text(f"This model cannot be loaded: {exc}")
                state["model"] = None
                return
            state["model"] = m
            state["scenarios"] = preset_scenarios(m)
            scen_sel.set_options([s.name for s in state["scenarios"]], value="base")
            reps_in.set_value(min(m.replications, MAX_REPS))
            fc = (f" Forecast from the store's census of '{m.census['activity']}'."
                  if m.census.get("activity") else " (No census activity: no forecast.)")
            about.set_text(f"{m.description}. Results over {m.length:g} {m.time_unit} after "
                           f"{m.warm_up:g} {m.time_unit} of warm-up; resources: "
                           + ", ".join(m.resources) + "." + fc)
            hours_in.set_visibility(bool(m.census.get("activity")))

        model_changed()
        model_sel.on_value_change(lambda _e: model_changed())
        with ui.column().classes("w-full gap-1"):
            progress = ui.linear_progress(value=0, show_value=False, size="18px").props(
                'animation-speed=300 data-testid="ops-progress" '
                'aria-label="operations run progress"')
            status = ui.label("Pick a model and a scenario, then press Run replications. "
                              "The treatment centre runs 10 replications in about a "
                              "second.").props('data-testid="ops-status" aria-live="polite"')
        results = ui.column().classes("w-full gap-3")

        async def start() -> None:
            if _live_session(ctx, request) is None:
                return
            status.classes(replace="")
            base = state["model"]
            try:
                require_simulation_role(svc, request, who, "ops")
                if base is None:
                    raise ValidationError("pick a model that loads", where="model")
                scenario = next((s for s in state["scenarios"] if s.name == scen_sel.value),
                                None)
                if scenario is None:
                    raise ValidationError("pick a scenario", where="scenario")
                reps, seed = check_reps(reps_in.value), check_seed(seed_in.value)
                has_census = bool(base.census.get("activity"))
                hours = check_hours(hours_in.value) if has_census else 0
                model = scenario.apply(base)
            except (MedtwinError, UiDeniedError, ValueError) as exc:
                show_failure(status, f"Cannot run: {exc}")
                return
            run_id = uuid.uuid4().hex[:12]
            svc.record(request, who, "create", f"ops-run:{run_id}", "success",
                       detail=f"dashboard; {base.name}, scenario {scenario.name}, {reps} reps, "
                              f"seed {seed}")

            async def work() -> tuple[Results, pd.DataFrame | str | None] | None:
                res = await _replications(model, reps, seed)
                if res is None:
                    return None
                return res, (await _forecast(model, hours, reps, seed) if has_census else None)

            done = await run_exclusively(
                slot, work, button=go_button, results=results, progress=progress,
                status=status, run_id=run_id,
                waiting="Waiting for the run already going on this server to finish…",
                failed="The run failed: {exc}. Try another scenario or fewer replications.")
            if done is None or client.is_deleted:
                return
            res, fc = done
            _show(res, scenario, run_id, fc)

        async def _replications(model: Model, reps: int, seed: int) -> Results | None:
            began = time.monotonic()
            parts: list[Replicate] = []
            status.set_text(f"Running: 0 of {reps} replications…")
            for r in range(reps):
                part = await run.io_bound(one_replication, model, seed, r)
                if part is None or client.is_deleted:
                    return None
                parts.append(part)
                progress.set_value((r + 1) / reps)
                status.set_text(f"Running: {r + 1} of {reps} replications…")
            res = gather_replications(model, seed, parts)
            status.set_text(f"Done: {reps} of {reps} replications in "
                            f"{time.monotonic() - began:.1f} s.")
            return res

        async def _forecast(model: Model, hours: int, reps: int, seed: int
                            ) -> pd.DataFrame | str:
            """The forecast, or what to do when the store has no census to start from."""
            done = status.text
            status.set_text(done + f" Forecasting occupancy {hours} h ahead from the census…")
            progress.props("indeterminate")
            try:
                census: Census | None = await run.io_bound(census_from_store, svc.store,
                                                           model)
                if census is None:
                    return "The forecast was stopped: the server is shutting down."
                svc.record(request, who, "read", "ops-census", "success",
                           detail=f"{len(census.elapsed)} in {model.census.get('activity')}")
                fc = await run.io_bound(forecast, model, census, hours=hours, reps=reps,
                                        seed=seed)
                if fc is None:
                    return "The forecast was stopped: the server is shutting down."
            except ValidationError as exc:
                status.set_text(done + " No census to forecast from.")
                return (f"No occupancy forecast: {exc.message}. Import inpatient encounters "
                        "(`medtwin import`) to forecast from the live census.")
            finally:
                progress.props(remove="indeterminate")
            status.set_text(done + " Forecast done.")
            return fc

        def _show(res: Results, scenario: Scenario, run_id: str,
                  fc: pd.DataFrame | str | None) -> None:
            m = res.model
            data = kpi_csv(res)
            name = f"ops-{m.name}-{scenario.name}-{len(res.per_rep)}reps-seed{res.seed}.csv"
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

            def download() -> None:
                if _live_session(ctx, request) is None:
                    return
                svc.record(request, who, "export", f"ops-run:{run_id}", "success",
                           detail="kpi csv")
                ui.download.content(data, name, "text/csv")

            figs = figures(res)
            for f in figs:
                f.update_layout(**_PLOT_LAYOUT)
            with results:
                ui.label(f"{m.name}, scenario '{scenario.name}': {len(res.per_rep)} "
                         f"replications, seed {res.seed}; means with 95% confidence "
                         "intervals over replications.").classes("font-semibold").props(
                    'data-testid="ops-summary"')
                with ui.row().classes("items-center gap-3"):
                    ui.label(f"Waits ({m.time_unit})").classes("text-xl font-semibold")
                    ui.button("Download KPIs (CSV)", on_click=download).props(
                        'outline data-testid="download-kpis"')
                _ci_table(wait_rows(res), "activity", f"mean wait [{m.time_unit}]",
                          "wait-table")
                with ui.grid().classes("w-full gap-3 grid-cols-1 xl:grid-cols-2"):
                    for f in figs[:2]:
                        ui.plotly(f).classes("w-full")
                ui.label("Utilisation").classes("text-xl font-semibold")
                _ci_table(utilisation_rows(res), "resource", "mean utilisation [%]",
                          "util-table")
                ui.label("Patient flow").classes("text-xl font-semibold")
                _ci_table(flow_rows(res), "measure", "mean", "flow-table")
                if len(figs) > 2:
                    ui.plotly(figs[2]).classes("w-full")
                ui.label("Occupancy forecast").classes("text-xl font-semibold")
                if fc is None:
                    ui.label(f"{m.name} names no census activity, so it has no live "
                             "forecast; pick ed_inpatient (or add 'census: {activity: ...}' "
                             "to the model file).").classes("text-gray-800")
                elif isinstance(fc, str):
                    ui.label(fc).classes("text-orange-800").props(
                        'data-testid="forecast-empty"')
                else:
                    cut_off = pd.Timestamp(fc.attrs["cut_off"]).to_pydatetime()
                    ui.label(f"From the census at {local_time(cut_off)}. "
                             + forecast_text(fc)).props('data-testid="forecast-summary"')
                    ui.plotly(forecast_figure(fc)).classes("w-full").props(
                        'data-testid="forecast-plot"')

        go_button.on_click(start)
        return None
