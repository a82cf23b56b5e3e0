"""The dashboard's Trials page: an in-silico glucose trial run from the browser.

The user chooses a cohort (and which of its subjects), a controller, the number of days and
a seed; the trial runs in chunks of subjects in a worker thread (``nicegui.run.io_bound``),
so the page stays live and a progress bar advances after each chunk. The result shows the
AGP-style percentile plot, the CVGA plot and the outcome table, and downloads as the same
CSV that ``medtwin trial glucose --out`` writes.

The domain code does the work: :func:`medtwin.trials.runner.run_chunk` simulates a chunk and
computes its outcomes, :mod:`medtwin.trials.report` draws the plots. Only the chunk loop is
here, because ``run_trial`` has no progress hook; :func:`~medtwin.trials.runner.gather_chunks`
puts the chunks together, as it does for ``run_trial``.

Access follows the API's ``/trials``: clinicians, researchers and admins (audited refusals
for other roles), the same per-run limits of days and subjects as the server's settings, and
an audit entry for each run and each download. A trial involves no patient data.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from fastapi.responses import RedirectResponse
from nicegui import run, ui
from starlette.requests import Request

from medtwin.api.deps import Services, require_role
from medtwin.api.problems import ApiError
from medtwin.core.errors import MedtwinError, ValidationError
from medtwin.devices.controllers import controller_names
from medtwin.security.roles import Principal, Role
from medtwin.trials.report import agp_figure_plotly, agp_percentiles, cvga_figure_plotly
from medtwin.trials.runner import (
    COHORTS,
    ChunkResult,
    Trial,
    TrialResult,
    gather_chunks,
    load_cohort,
    run_chunk,
)
from medtwin.ui.access import UiDeniedError
from medtwin.ui.layout import UiContext, header
from medtwin.ui.pages import _guard, _live_session, _sign_out
from medtwin.ui.runs import run_exclusively, show_failure

log = logging.getLogger(__name__)

#: Who may run simulations from the dashboard (as the API's ``/trials``).
SIMULATION_ROLES = (Role.CLINICIAN, Role.RESEARCHER, Role.ADMIN)
#: How many progress steps a trial is split into (more steps: finer progress, less batching).
PROGRESS_STEPS = 10
#: The outcome columns shown on the page (the CSV has every column).
SHOWN_OUTCOMES = ("mean [mg/dL]", "sd [mg/dL]", "cv [%]", "time <54 [%]", "time <70 [%]",
                  "time 70-180 [%]", "time >180 [%]", "time >250 [%]", "lbgi", "hbgi",
                  "cvga zone", "insulin per day [U/day]", "min BG [mg/dL]")
_PLOT_LAYOUT = {"height": 420, "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
                "legend": {"orientation": "h", "y": -0.2}}


def require_simulation_role(svc: Services, request: Request | None, who: Principal,
                            resource: str) -> None:
    """Refuse callers who may not run simulations: the API's ``require_role`` (audited),
    with a page-friendly error."""
    try:
        require_role(request, svc, who, *SIMULATION_ROLES,  # type: ignore[arg-type]
                     resource=resource)
    except ApiError as exc:
        raise UiDeniedError(f"{exc.detail}: in-silico trials and hospital operations are for "
                            "clinicians, researchers and admins") from None


def parse_subjects(text: str | None) -> str | list[str] | None:
    """The subjects field as ``load_cohort`` takes it: ``None`` (everyone) when empty, a list
    of ids when comma-separated, otherwise one id or shell pattern (``adult#*``)."""
    text = (text or "").strip()
    if not text:
        return None
    if "," in text:
        return [s.strip() for s in text.split(",") if s.strip()]
    return text


def whole_number(value: object, what: str, example: str, *, low: int | None = None,
                 high: int | None = None) -> int:
    """A form field as a whole number in ``[low, high]``, or :class:`ValidationError` saying
    what to enter (``example`` shows a good value)."""
    if value is None or value == "":
        raise ValidationError(f"enter the {what}, e.g. {example}", where=what)
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationError(f"enter a whole number, got {value!r}", where=what) from None
    if not math.isfinite(x) or x != int(x):
        raise ValidationError(f"enter a whole number, got {value!r}", where=what)
    if (low is not None and x < low) or (high is not None and x > high):
        span = f"from {low} to {high}" if low is not None and high is not None else \
            f"{low} or more" if low is not None else f"{high} or less"
        raise ValidationError(f"must be {span}, got {int(x)}", where=what)
    return int(x)


def check_seed_field(seed: object) -> int:
    """The seed field as a whole number >= 0, or :class:`ValidationError`."""
    return whole_number(seed, "seed", "0", low=0)


def check_days_field(days: object, max_days: float) -> float:
    """The days field as a number in ``(0, max_days]``, or :class:`ValidationError` saying
    what to enter."""
    if days is None or days == "":
        raise ValidationError("enter the number of days to simulate, e.g. 1", where="days")
    try:
        d = float(days)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationError(f"enter a number of days, got {days!r}", where="days") from None
    if not (math.isfinite(d) and d > 0):
        raise ValidationError(f"must be more than 0, got {days!r}; simulate at least part "
                              "of a day (e.g. 1)", where="days")
    if d > max_days:
        raise ValidationError(f"must be at most {max_days:g} on this server, got {d:g}; "
                              "run longer trials with `medtwin trial glucose`", where="days")
    return d


def field_problem(check: Any, *args: Any) -> str | None:
    """``None`` when ``check(*args)`` passes, else its message (for inline validation)."""
    try:
        check(*args)
    except MedtwinError as exc:
        return str(getattr(exc, "message", exc))
    return None


def build_trial(cohort: str, subjects: str | None, controller: str, days: object,
                seed: object, *, max_subjects: int, max_days: float) -> Trial:
    """Validate the form into a :class:`Trial` under the server's limits.

    Raises :class:`ValidationError` or :class:`NotFoundError` with a message that says what
    to change (the same limits as ``POST /trials``: ``trial_max_days``, ``trial_max_subjects``).
    """
    d = check_days_field(days, max_days)
    s = check_seed_field(seed)
    chosen = load_cohort(cohort, parse_subjects(subjects))
    if len(chosen) > max_subjects:
        raise ValidationError(f"{len(chosen)} subjects selected; this server runs at most "
                              f"{max_subjects} per trial: narrow the selection (e.g. adult#*)",
                              where="subjects")
    return Trial(chosen, controller, days=d, seed=s)


def chunk_bounds(n: int, steps: int = PROGRESS_STEPS) -> list[tuple[int, int]]:
    """Split ``n`` subjects into at most ``steps`` contiguous chunks ``(start, stop)``."""
    if n < 1:
        raise ValidationError(f"need at least one subject, got {n}", where="cohort")
    size = math.ceil(n / max(1, min(n, steps)))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def outcome_columns(table: pd.DataFrame) -> list[str]:
    """The outcome columns the page shows, in order (those present in ``table``)."""
    return [c for c in SHOWN_OUTCOMES if c in table.columns]


def outcome_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows for the page's table: subject, then the shown outcomes rounded for reading."""
    rows = []
    for subject, r in table.iterrows():
        row: dict[str, Any] = {"subject": str(subject)}
        for c in outcome_columns(table):
            v = r[c]
            if isinstance(v, float | np.floating):
                row[c] = None if not math.isfinite(v) else round(float(v), 2 if abs(v) < 10
                                                                  else 1)
            else:
                row[c] = str(v)
        rows.append(row)
    return rows


def outcome_csv(result: TrialResult) -> bytes:
    """The outcome table as CSV, one row a subject (what ``medtwin trial glucose`` writes)."""
    return result.table.to_csv().encode("utf-8")


def csv_filename(result: TrialResult) -> str:
    """A download name that says what was run."""
    m = result.meta
    return (f"trial-{m['controller']}-{m['subjects']}subjects-{m['days']:g}d-"
            f"seed{m['seed']}.csv")


def summary_text(result: TrialResult) -> str:
    """One line on the cohort's outcomes (as the CLI prints it)."""
    t = result.table
    zones = t["cvga zone"].value_counts().reindex(list("ABCDE"), fill_value=0)
    m = result.meta
    return (f"{len(t)} subjects × {m['days']:g} day(s), controller {m['controller']}, seed "
            f"{m['seed']}: mean glucose {t['mean [mg/dL]'].mean():.1f} mg/dL, time in range "
            f"70-180 mg/dL {t['time 70-180 [%]'].mean():.1f}%, below 70 mg/dL "
            f"{t['time <70 [%]'].mean():.1f}%; CVGA zones "
            + " ".join(f"{z}:{c}" for z, c in zones.items()))


def agp_figure(result: TrialResult) -> go.Figure:
    """The AGP plot of the true (subcutaneous) glucose, pooled over subjects and days."""
    agp = agp_percentiles(result.traces["BG [mg/dL]"], result.times)
    fig = agp_figure_plotly(agp, title="Ambulatory glucose profile (5-95th percentiles)")
    fig.update_layout(**_PLOT_LAYOUT)
    return fig


def cvga_figure(result: TrialResult) -> go.Figure:
    """The CVGA plot, one point per subject."""
    fig = cvga_figure_plotly(result.table, title="CVGA")
    # points sit on the grid's edges when clamped (min BG > 110 mg/dL): draw them whole
    fig.update_traces(cliponaxis=False, selector={"mode": "markers"})
    fig.update_layout(**_PLOT_LAYOUT)
    return fig


@dataclass
class _Form:
    cohort: Any
    subjects: Any
    controller: Any
    days: Any
    seed: Any


def register(ctx: UiContext) -> None:
    """Declare ``/trials`` (one trial at a time per server: the others wait their turn)."""
    slot = asyncio.Semaphore(1)

    @ui.page("/trials", title="medtwin · trials")
    def trials_page(request: Request) -> RedirectResponse | None:
        who = _guard(ctx, request)
        if isinstance(who, RedirectResponse):
            return who
        header(ctx, who, _sign_out(ctx, request, who))
        svc, client = ctx.svc, ui.context.client
        ui.label("In-silico trial").classes("text-2xl font-semibold")
        try:
            require_simulation_role(svc, request, who, "trials-page")
        except UiDeniedError as exc:
            ui.label(str(exc)).classes("text-red-800")
            return None
        max_subjects = svc.settings.trial_max_subjects
        max_days = svc.settings.trial_max_days
        ui.label("Virtual UVA/Padova subjects with random meals, a Dexcom CGM and an Insulet "
                 "pump, under the controller you choose. No patient data is involved.").classes(
            "text-gray-700")
        with ui.row().classes("w-full items-start gap-4 flex-wrap"):
            form = _Form(
                cohort=ui.select(sorted(COHORTS), value="uva-padova", label="Cohort").classes(
                    "w-40"),
                subjects=ui.input("Subjects", value="adult#*").props(
                    'hint="ids separated by commas, or a pattern (adult#*, child#00?); '
                    'empty: the whole cohort"').classes("w-72"),
                controller=ui.select(controller_names(), value="pid",
                                     label="Controller").classes("w-40"),
                days=ui.number("Days", value=1, step=1, validation=lambda v: field_problem(
                    check_days_field, v, max_days)).props(
                    f'hint="at most {max_days:g} here"').classes("w-36"),
                seed=ui.number("Seed", value=0, step=1, format="%d",
                               validation=lambda v: field_problem(check_seed_field, v)).props(
                    'hint="meals and sensor noise"').classes("w-36"),
            )
            go_button = ui.button("Run trial").classes("mt-3").props(
                'data-testid="run-trial"')
        chosen = ui.label("").classes("text-sm text-gray-700").props(
            'data-testid="trial-selection"')

        def describe_selection() -> None:
            try:
                c = load_cohort(form.cohort.value or "", parse_subjects(form.subjects.value))
            except MedtwinError as exc:
                chosen.set_text(f"No subjects selected: {exc}")
                chosen.classes(replace="text-sm text-red-800")
                return
            ids = list(c.ids)
            more = f" … {ids[-1]}" if len(ids) > 3 else ""
            note = "" if len(ids) <= max_subjects else \
                f" (more than this server's {max_subjects} per trial: narrow it)"
            chosen.set_text(f"{len(ids)} subject(s): {', '.join(ids[:3])}{more}{note}")
            chosen.classes(replace="text-sm " + ("text-red-800" if note else "text-gray-700"))

        describe_selection()
        form.subjects.on_value_change(lambda _e: describe_selection())
        form.cohort.on_value_change(lambda _e: describe_selection())
        with ui.column().classes("w-full gap-1"):
            progress = ui.linear_progress(value=0, show_value=False, size="18px").props(
                'animation-speed=300 data-testid="trial-progress" aria-label="trial progress"')
            status = ui.label("Choose the subjects, controller, days and seed, then press "
                              "Run trial. Ten adults for one day take a few seconds.").props(
                'data-testid="trial-status" aria-live="polite"')
        results = ui.column().classes("w-full gap-3")

        async def start() -> None:
            if _live_session(ctx, request) is None:
                return
            status.classes(replace="")
            try:
                require_simulation_role(svc, request, who, "trials")
                trial = build_trial(form.cohort.value or "", form.subjects.value,
                                    form.controller.value or "", form.days.value,
                                    form.seed.value, max_subjects=max_subjects,
                                    max_days=max_days)
            except (MedtwinError, UiDeniedError) as exc:
                show_failure(status, f"Cannot run the trial: {exc}")
                return
            run_id = uuid.uuid4().hex[:12]
            svc.record(request, who, "create", f"trial:{run_id}", "success",
                       detail=f"dashboard; {len(trial.cohort)} subjects x {trial.days:g} d, "
                              f"{trial.controller}, seed {trial.seed}")
            result = await run_exclusively(
                slot, lambda: _run_with_progress(trial, progress, status), button=go_button,
                results=results, progress=progress, status=status, run_id=run_id,
                waiting="Waiting for the simulation already running on this server to finish…",
                failed="The trial failed: {exc}. Try fewer days, another controller or seed.")
            if result is None:  # it failed, the page was closed or the server is stopping
                return
            _show_result(result, run_id)

        async def _run_with_progress(trial: Trial, bar: Any, text: Any) -> TrialResult | None:
            n = len(trial.cohort)
            began = time.monotonic()
            parts: list[ChunkResult] = []
            text.set_text(f"Running: 0 of {n} subjects simulated…")
            for a, b in chunk_bounds(n):
                part = await run.io_bound(run_chunk, trial, a, b)
                if part is None or client.is_deleted:
                    return None
                parts.append(part)
                bar.set_value(b / n)
                text.set_text(f"Running: {b} of {n} subjects simulated…")
            result = gather_chunks(trial, parts)
            text.set_text(f"Done: {n} of {n} subjects in {time.monotonic() - began:.1f} s.")
            return result

        def _show_result(result: TrialResult, run_id: str) -> None:
            data = outcome_csv(result)
            name = csv_filename(result)

            def download() -> None:
                if _live_session(ctx, request) is None:
                    return
                svc.record(request, who, "export", f"trial:{run_id}", "success",
                           detail=f"csv, {len(result.table)} rows")
                ui.download.content(data, name, "text/csv")

            with results:
                ui.label(summary_text(result)).classes("font-semibold").props(
                    'data-testid="trial-summary"')
                m = result.meta
                ui.label(f"Model {m['model']}; sensor {m['sensor']}; pump {m['pump']}; "
                         f"meals {m['meals']}. The AGP pools the true subcutaneous glucose "
                         "over subjects and days (simulated clock from midnight).").classes(
                    "text-sm text-gray-700")
                with ui.grid().classes("w-full gap-3 grid-cols-1 xl:grid-cols-2"):
                    ui.plotly(agp_figure(result)).classes("w-full").props(
                        'data-testid="agp-plot"')
                    ui.plotly(cvga_figure(result)).classes("w-full").props(
                        'data-testid="cvga-plot"')
                with ui.row().classes("items-center gap-3"):
                    ui.label("Outcomes per subject").classes("text-xl font-semibold")
                    ui.button("Download CSV", on_click=download).props(
                        'outline data-testid="download-csv"')
                columns = [{"name": "subject", "label": "subject", "field": "subject",
                            "align": "left", "sortable": True}]
                columns += [{"name": c, "label": c, "field": c, "sortable": True}
                            for c in outcome_columns(result.table)]
                ui.table(columns=columns, rows=outcome_rows(result.table),
                         row_key="subject", pagination=0).classes("w-full").props(
                    'dense hide-bottom data-testid="outcome-table"')
                ui.label("The CSV has every outcome column (GMI, risk index, CVGA min/max "
                         "and cell, total insulin too).").classes("text-sm text-gray-700")

        go_button.on_click(start)
        return None
