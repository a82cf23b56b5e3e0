"""Plotly figures of the patient page (built from frames; no data access here)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from medtwin.core import codes
from medtwin.models.glucose.constants import TARGET_RANGE
from medtwin.twin.cardio_service import UNITS, CardioView
from medtwin.twin.service import GlucoseView
from medtwin.ui.access import CGM, CHART_CODES, GLUCOSE_LAB

VITAL_CODES = (codes.HEART_RATE, codes.RESPIRATORY_RATE, codes.SPO2_PULSE_OXIMETRY,
               codes.SYSTOLIC_BP, codes.BODY_TEMPERATURE)
_LAYOUT = {"margin": {"l": 50, "r": 10, "t": 40, "b": 40}, "height": 360,
           "legend": {"orientation": "h", "y": -0.3, "yanchor": "top"},
           "template": "plotly_white"}
UTC = ZoneInfo("UTC")
PLAN_COLOUR, WHAT_IF_COLOUR = "#555555", "#d62728"


def _local(times: pd.Series | Sequence[object], zone: tzinfo = UTC) -> list[str]:
    """Wall-clock times in ``zone`` (plotly draws naive times as given), as ISO strings."""
    t = pd.to_datetime(pd.Series(list(times)), utc=True).dt.tz_convert(zone).dt.tz_localize(None)
    return [x.isoformat() for x in t]


def _zone_name(zone: tzinfo) -> str:
    return getattr(zone, "key", None) or str(zone)


def _time_axis(zone: tzinfo) -> dict[str, object]:
    """The x axis of a time chart, titled with the zone its times are in."""
    return {"title": {"text": f"time ({_zone_name(zone)})"}}


def _values(v: pd.Series) -> list[float]:
    """Plain floats: the browser gets arrays it can read (tests read them back)."""
    return [float(x) for x in v]


def _band(fig: go.Figure, x: list[str], lower: pd.Series, upper: pd.Series, name: str,
          colour: str, *, group: str) -> None:
    """A shaded 90% band between ``lower`` and ``upper``."""
    fig.add_trace(go.Scatter(x=x, y=_values(upper), line={"width": 0}, showlegend=False,
                             hoverinfo="skip", legendgroup=group, name=f"{name} upper"))
    fig.add_trace(go.Scatter(x=x, y=_values(lower), fill="tonexty", line={"width": 0},
                             name=name, legendgroup=group,
                             fillcolor=_rgba(colour, 0.18)))


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def vital_panels(series: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """The vitals chart's panels: one per unit (rate /min, %, mmHg, °C), each with the codes
    that have readings, in chart order; units without readings get no panel."""
    panels: dict[str, list[str]] = {}
    for code in VITAL_CODES:
        if (series["code"] == code).any():
            panels.setdefault(CHART_CODES[code][1], []).append(code)
    return list(panels.items())


def vitals_figure(series: pd.DataFrame, zone: tzinfo = UTC) -> go.Figure:
    """Heart rate, respiratory rate, SpO2, systolic BP and temperature over time: one panel
    per unit, each y axis titled with what it shows and its unit (x axis in ``zone``)."""
    panels = vital_panels(series) if len(series) else []
    if not panels:
        fig = go.Figure()
        fig.add_annotation(text="No vital signs recorded in the last 48 h", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_layout(title="Vital signs", xaxis=_time_axis(zone), **_LAYOUT)
        return fig
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.05)
    for row, (unit, panel_codes) in enumerate(panels, 1):
        labels = []
        for code in panel_codes:
            part = series[series["code"] == code]
            label = CHART_CODES[code][0]
            labels.append(label)
            fig.add_trace(go.Scatter(x=_local(part["time"], zone), y=_values(part["value"]),
                                     mode="lines+markers", name=f"{label} [{unit}]",
                                     marker={"size": 4}), row=row, col=1)
        what = ", ".join([labels[0], *(x[:1].lower() + x[1:] for x in labels[1:])])
        fig.update_yaxes(title_text=f"{what} [{unit}]", row=row, col=1)
    fig.update_xaxes(title_text=_time_axis(zone)["title"]["text"],  # type: ignore[index]
                     row=len(panels), col=1)
    height = 160 + 170 * len(panels)
    plot = height - 40 - 120  # the plotting area between the top and bottom margins
    fig.update_layout(title="Vital signs (one panel per unit)",
                      **{**_LAYOUT, "height": height,
                         "margin": {**_LAYOUT["margin"], "b": 120},  # type: ignore[dict-item]
                         "legend": {"orientation": "h", "yanchor": "top",
                                    "y": -70 / plot}})  # below the time axis and its title
    return fig


def glucose_figure(series: pd.DataFrame, zone: tzinfo = UTC,
                   forecast: pd.DataFrame | None = None, *, always: bool = False
                   ) -> go.Figure | None:
    """CGM and blood glucose [mg/dL] with the 70-180 target range and, given, the glucose
    twin's forecast (mean and 90% band); None without glucose unless ``always``."""
    cgm = series[series["code"] == CGM]
    lab = series[series["code"] == GLUCOSE_LAB]
    if not len(cgm) and not len(lab) and forecast is None and not always:
        return None
    fig = go.Figure()
    low, high = TARGET_RANGE
    fig.add_hrect(y0=low, y1=high, fillcolor="green", opacity=0.08, line_width=0)
    if len(cgm):
        fig.add_trace(go.Scatter(x=_local(cgm["time"], zone), y=_values(cgm["value"]),
                                 mode="lines", name="CGM [mg/dL]"))
    if len(lab):
        fig.add_trace(go.Scatter(x=_local(lab["time"], zone), y=_values(lab["value"]),
                                 mode="markers", name="Blood glucose [mg/dL]"))
    if forecast is not None:
        x = _local(forecast["time"], zone)
        _band(fig, x, forecast["p05"], forecast["p95"], "twin forecast 90% band",
              "#1f77b4", group="forecast")
        fig.add_trace(go.Scatter(x=x, y=_values(forecast["mean"]), name="twin forecast",
                                 line={"color": "#1f77b4", "dash": "dot"},
                                 legendgroup="forecast"))
    fig.update_layout(title="Glucose [mg/dL] (target 70-180 shaded)", yaxis_title="mg/dL",
                      xaxis=_time_axis(zone), **_LAYOUT)
    return fig


def pk_figure(levels: pd.DataFrame, course: pd.DataFrame, zone: tzinfo = UTC, *,
              compare: Sequence[tuple[str, pd.DataFrame, str]] = ()) -> go.Figure:
    """Measured vancomycin levels, the personalised fit with the recommended regimen and its
    90% band [mg/L]; ``compare`` adds (name, course, colour) of other regimens."""
    fig = go.Figure()
    x = _local(course["time"], zone)
    _band(fig, x, course["lower"], course["upper"], "90% band (recommended)", "#1f77b4",
          group="recommended")
    fig.add_trace(go.Scatter(x=x, y=_values(course["mode"]), name="personalised fit + "
                             "recommended", line={"color": "#1f77b4"},
                             legendgroup="recommended"))
    for name, other, colour in compare:
        ox = _local(other["time"], zone)
        _band(fig, ox, other["lower"], other["upper"], f"90% band ({name})", colour,
              group=name)
        fig.add_trace(go.Scatter(x=ox, y=_values(other["mode"]), name=name,
                                 line={"color": colour, "dash": "dash"}, legendgroup=name))
    fig.add_trace(go.Scatter(x=_local(levels["time"], zone), y=_values(levels["value"]),
                             mode="markers", name="measured level",
                             marker={"color": "black", "size": 9}))
    fig.update_layout(title="Vancomycin concentration [mg/L]", yaxis_title="mg/L",
                      xaxis=_time_axis(zone), **_LAYOUT)
    return fig


def what_if_figure(view: GlucoseView | None, history: pd.DataFrame,
                   zone: tzinfo = UTC, *, marks: Sequence[tuple[str, datetime]] = ()
                   ) -> go.Figure:
    """The glucose twin's predicted course under the current plan next to the what-if's
    (each mean with its 90% band), after the last hours of glucose readings; ``marks``
    (name, time) draws each planned meal and bolus as a labelled vertical line."""
    fig = go.Figure()
    names, times = [n for n, _ in marks], _local([t for _, t in marks], zone) if marks else []
    for name, x in zip(names, times, strict=True):
        fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper",
                      line={"color": "#7f7f7f", "dash": "dot", "width": 1})
        fig.add_annotation(x=x, y=1, yref="paper", text=name, showarrow=False,
                           yanchor="bottom")
    low, high = TARGET_RANGE
    fig.add_hrect(y0=low, y1=high, fillcolor="green", opacity=0.08, line_width=0)
    if len(history):
        fig.add_trace(go.Scatter(x=_local(history["time"], zone), y=_values(history["value"]),
                                 mode="lines", name="measured glucose",
                                 line={"color": "black"}))
    if view is not None:
        x = _local(view.forecast["time"], zone)
        _band(fig, x, view.forecast["p05"], view.forecast["p95"], "current plan 90% band",
              PLAN_COLOUR, group="plan")
        fig.add_trace(go.Scatter(x=x, y=_values(view.forecast["mean"]), name="current plan",
                                 line={"color": PLAN_COLOUR, "dash": "dash"},
                                 legendgroup="plan"))
        if view.what_if is not None:
            wx = _local(view.what_if["time"], zone)
            _band(fig, wx, view.what_if["p05"], view.what_if["p95"], "what-if 90% band",
                  WHAT_IF_COLOUR, group="what-if")
            fig.add_trace(go.Scatter(x=wx, y=_values(view.what_if["mean"]), name="what-if",
                                     line={"color": WHAT_IF_COLOUR}, legendgroup="what-if"))
    fig.update_layout(title="Predicted glucose [mg/dL]: current plan vs what-if",
                      yaxis_title="mg/dL", xaxis=_time_axis(zone), **_LAYOUT)
    return fig


CARDIO_CHARTED = ("MAP", "CO", "HR")  # one row each in the cardio panel's figure


def cardio_figure(view: CardioView, outputs: Sequence[str] = CARDIO_CHARTED) -> go.Figure:
    """The cardio twin's forecast (mean over posterior draws and its 90% band) of each of
    ``outputs`` over the seconds ahead, and the what-if's next to it when there is one."""
    fig = make_subplots(rows=len(outputs), cols=1, shared_xaxes=True, vertical_spacing=0.06)
    runs = [("current", view.forecast, PLAN_COLOUR, "dash")]
    if view.what_if_forecast is not None and view.scenario is not None:
        runs.append(("what-if", view.what_if_forecast, WHAT_IF_COLOUR, "solid"))
    for row, name in enumerate(outputs, 1):
        for tag, frame, colour, dash in runs:
            part = frame[frame["output"] == name]
            x = _values(part["seconds"])
            group = f"{name} {tag}"
            fig.add_trace(go.Scatter(x=x, y=_values(part["p95"]), line={"width": 0},
                                     showlegend=False, hoverinfo="skip", legendgroup=group,
                                     name=f"{name} {tag} upper"), row=row, col=1)
            fig.add_trace(go.Scatter(x=x, y=_values(part["p05"]), fill="tonexty",
                                     line={"width": 0}, name=f"{name} {tag} 90% band",
                                     legendgroup=group, fillcolor=_rgba(colour, 0.18)),
                          row=row, col=1)
            fig.add_trace(go.Scatter(x=x, y=_values(part["mean"]), name=f"{name} {tag}",
                                     line={"color": colour, "dash": dash}, legendgroup=group),
                          row=row, col=1)
        fig.update_yaxes(title_text=f"{name} [{UNITS[name]}]", row=row, col=1)
    fig.update_xaxes(title_text="seconds after the twin's time", row=len(outputs), col=1)
    what = f" vs what-if: {view.scenario.name}" if view.scenario is not None else ""
    fig.update_layout(title=f"Cardio twin forecast (90% band): current{what}",
                      **{**_LAYOUT, "height": 180 + 170 * len(outputs)})
    return fig
