"""The patient page's cardio panel, for patients with a cardiac diagnosis
(:data:`~medtwin.twin.cardio_service.CARDIAC_CONDITIONS`): the personalised cardio twin now,
its parameters with their 95% intervals, the forecast band, and a what-if scenario drawn next
to the current course.

Every call goes through :func:`cardio_twin`: the policy, the audit and the service function of
``GET /twins/{id}/cardio``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import tzinfo

from nicegui import run, ui
from starlette.requests import Request

from medtwin.api.deps import Services
from medtwin.core.errors import MedtwinError, NotFoundError
from medtwin.security.policy import Action
from medtwin.security.roles import Principal
from medtwin.store.event_store import EventStore
from medtwin.twin.cardio import SCENARIOS
from medtwin.twin.cardio_service import (
    CARDIO_RESOURCE,
    WHAT_IFS,
    CardioView,
    cardiac_conditions,
    cardio_view,
)
from medtwin.twin.service import TwinNotReadyError
from medtwin.ui import charts
from medtwin.ui.access import UiDeniedError, _check
from medtwin.ui.layout import local_time

log = logging.getLogger(__name__)

HORIZONS = {60.0: "1 min", 120.0: "2 min", 300.0: "5 min"}
#: the comparison table's rows: label, how to show the twin's cycle averages
SHOWN: tuple[tuple[str, Callable[[dict[str, float]], str]], ...] = (
    ("blood pressure", lambda o: f"{o['SBP']:.0f}/{o['DBP']:.0f} mmHg"),
    ("mean arterial pressure", lambda o: f"{o['MAP']:.0f} mmHg"),
    ("heart rate", lambda o: f"{o['HR']:.0f} /min"),
    ("stroke volume", lambda o: f"{o['SV']:.0f} mL"),
    ("cardiac output", lambda o: f"{o['CO']:.2f} L/min"),
    ("ejection fraction", lambda o: f"{o['EF']:.0%}"),
    ("central venous pressure", lambda o: f"{o['CVP']:.1f} mmHg"),
    ("LV end-diastolic volume", lambda o: f"{o['LVEDV']:.0f} mL"),
    ("pulmonary artery pressure", lambda o: f"{o['PAS']:.0f}/{o['PAD']:.0f} mmHg"),
)


def cardiac_diagnoses(store: EventStore, patient_id: str) -> list[str]:
    """The patient's cardiac diagnoses by name: the page shows the panel when there is one."""
    return sorted({c.display or c.code for c in cardiac_conditions(store, patient_id)})


def cardio_twin(svc: Services, request: Request | None, who: Principal, patient_id: str, *,
                scenario: str | None = None, horizon: float = 120.0, draws: int | None = None,
                audit: bool = True) -> CardioView:
    """The patient's cardio twin and, given ``scenario``, its what-if, checked and audited as
    ``GET /twins/{id}/cardio`` (the same service function runs).

    Raises :class:`UiDeniedError`, ``TwinNotReadyError`` (no BP, HR, EF or CO yet) or
    ``ValidationError``.
    """
    _check(svc, request, who, patient_id, Action.READ, CARDIO_RESOURCE)
    kw = {} if draws is None else {"draws": draws}
    try:
        view = cardio_view(svc.store, patient_id, scenario=scenario, horizon=horizon, **kw)
    except NotFoundError:
        svc.record(request, who, "read", CARDIO_RESOURCE, "not-found", patient_id=patient_id)
        raise UiDeniedError(f"no patient {patient_id!r}") from None
    if audit:
        svc.record(request, who, "read", CARDIO_RESOURCE, "success", patient_id=patient_id)
    return view


def comparison_rows(view: CardioView) -> list[dict[str, str]]:
    """The what-if table: the twin now next to the what-if's state at the horizon."""
    alt = view.what_if
    return [{"measure": name, "current": fmt(view.current),
             "what-if": fmt(alt) if alt is not None else "choose a scenario, then Predict"}
            for name, fmt in SHOWN]


def status_text(view: CardioView, zone: tzinfo) -> str:
    """One paragraph: what the twin was personalised to, and its state now."""
    obs = view.observed
    seen = ", ".join(
        ([f"BP {obs['SBP']:.0f}/{obs['DBP']:.0f} mmHg"] if "SBP" in obs and "DBP" in obs
         else []) + [f"{k} {obs[k]:g}" for k in ("HR", "EF", "CO") if k in obs])
    c = view.current
    lost = (f" {view.collapsed} of {view.draws} posterior draws collapsed and are left out of "
            "the band." if view.collapsed else "")
    return (f"Personalised to the readings up to {local_time(view.twin_time, zone)} ({seen}). "
            f"The twin now: BP {c['SBP']:.0f}/{c['DBP']:.0f} mmHg (MAP {c['MAP']:.0f}), HR "
            f"{c['HR']:.0f}/min, SV {c['SV']:.0f} mL, CO {c['CO']:.2f} L/min, EF "
            f"{c['EF']:.0%}{'' if view.steady_state else ' (not yet at steady state)'}."
            f"{lost} Model {view.model} {view.model_version}.")


class CardioPanel:
    """The cardio twin's section of the patient page."""

    def __init__(self, svc: Services, request: Request, who: Principal, patient_id: str,
                 diagnoses: list[str], zone: tzinfo,
                 alive: Callable[[], Principal | None]) -> None:
        self.svc, self.request, self.who, self.patient_id = svc, request, who, patient_id
        self.diagnoses, self.zone, self.alive = diagnoses, zone, alive
        self.scenario = WHAT_IFS[0]
        self.horizon = 120.0
        self.view: CardioView | None = None

    async def build(self) -> None:
        """Personalise and draw (audited), then the what-if inputs."""
        ui.label("Cardiovascular twin").classes("text-xl font-semibold mt-4")
        ui.label(f"Shown for: {', '.join(self.diagnoses)}.").classes("text-sm text-gray-700")
        self.status = ui.label("Personalising this patient's cardio twin…").props(
            'data-cardio-status aria-live="polite"')
        try:
            view = await run.io_bound(cardio_twin, self.svc, self.request, self.who,
                                      self.patient_id, horizon=self.horizon)
        except TwinNotReadyError:
            self.status.set_text("No cardio twin yet: it is personalised to blood pressure, "
                                 "heart rate, ejection fraction or cardiac output, and none is "
                                 "stored. Record a reading; this page shows the twin when you "
                                 "reload it.")
            return
        except MedtwinError as exc:
            self.status.set_text(f"The cardio twin could not be personalised: {exc}")
            return
        if view is None:  # the client went away while the twin was computed
            return
        self.view = view
        self.status.set_text(status_text(view, self.zone))
        ui.table(columns=[{"name": c, "label": c, "field": c, "align": "left"}
                          for c in ("parameter", "estimate", "95% interval")],
                 rows=[{"parameter": f"{p.name} [{p.unit}]", "estimate": f"{p.estimate:.3g}",
                        "95% interval": f"{p.low:.3g}-{p.high:.3g}"}
                       for p in view.parameters]).classes("max-w-full").props(
            "dense data-cardio-parameters")
        ui.label("What if? (this patient's cardio twin)").classes("text-lg font-semibold")
        ui.label("From the twin's state now, unchanged (current) and under the scenario; the "
                 "bands are 90% of the personalised parameters' posterior. Nothing is stored."
                 ).classes("text-sm text-gray-700")
        with ui.row().classes("items-end gap-3 flex-wrap"):
            ui.select({n: f"{n}: {SCENARIOS[n].description}" for n in WHAT_IFS},
                      value=self.scenario, label="Scenario",
                      on_change=lambda e: setattr(self, "scenario", e.value)).classes("w-96")
            ui.select(HORIZONS, value=self.horizon, label="Horizon",
                      on_change=lambda e: setattr(self, "horizon", e.value)).classes("w-28")
            ui.button("Predict", on_click=self.predict).props('data-action="predict-cardio"')
        self.result = ui.label("").props('aria-live="polite" data-cardio-result')
        self.table = ui.table(columns=[{"name": c, "label": c, "field": c, "align": "left"}
                                       for c in ("measure", "current", "what-if")],
                              rows=comparison_rows(view)).classes("max-w-full").props("dense")
        self.plot = ui.plotly(charts.cardio_figure(view)).classes("w-full cardio-plot")

    async def predict(self) -> None:
        """Run the chosen scenario on the patient's twin (audited as a read of the twin)."""
        if self.alive() is None or self.view is None:
            return
        self.result.set_text("Predicting…")
        try:
            view = await run.io_bound(cardio_twin, self.svc, self.request, self.who,
                                      self.patient_id, scenario=self.scenario,
                                      horizon=self.horizon)
        except MedtwinError as exc:
            self.result.set_text(f"Cannot predict: {exc}")
            return
        if view is None or view.what_if is None or view.scenario is None:
            return
        self.view = view
        self.table.rows = comparison_rows(view)
        self.table.update()
        self.plot.update_figure(charts.cardio_figure(view))
        a, c = view.what_if, view.current
        self.result.set_text(
            f"What-if {view.scenario.name} ({view.scenario.description}) after "
            f"{view.horizon:.0f} s: MAP {a['MAP']:.0f} mmHg (current {c['MAP']:.0f}), HR "
            f"{a['HR']:.0f}/min (current {c['HR']:.0f}), CO {a['CO']:.2f} L/min (current "
            f"{c['CO']:.2f}).")
