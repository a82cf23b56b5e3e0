"""Plotly figures of the patient page (built from frames; no data access here)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import plotly.graph_objects as go

from medtwin.ui.access import CGM, CHART_CODES, GLUCOSE_LAB

VITAL_CODES = ("8867-4", "9279-1", "59408-5", "8480-6", "8310-5")
_LAYOUT = {"margin": {"l": 50, "r": 10, "t": 40, "b": 40}, "height": 320,
           "legend": {"orientation": "h", "y": -0.2}, "template": "plotly_white"}


def _local(times: pd.Series) -> pd.Series:
    """Wall-clock times in the local zone (plotly draws naive times as given)."""
    zone = datetime.now().astimezone().tzinfo
    return pd.to_datetime(pd.Series(list(times)), utc=True).dt.tz_convert(zone).dt.tz_localize(None)


def vitals_figure(series: pd.DataFrame) -> go.Figure:
    """Heart rate, respiratory rate, SpO2, systolic BP and temperature over time."""
    fig = go.Figure()
    for code in VITAL_CODES:
        part = series[series["code"] == code]
        if len(part):
            label, unit = CHART_CODES[code]
            fig.add_trace(go.Scatter(x=_local(part["time"]), y=part["value"].astype(float),
                                     mode="lines+markers", name=f"{label} [{unit}]",
                                     marker={"size": 4}))
    fig.update_layout(title="Vital signs (local time)", **_LAYOUT)
    return fig


def glucose_figure(series: pd.DataFrame) -> go.Figure | None:
    """CGM and blood glucose [mg/dL] with the 70-180 target range; None without glucose."""
    cgm = series[series["code"] == CGM]
    lab = series[series["code"] == GLUCOSE_LAB]
    if not len(cgm) and not len(lab):
        return None
    fig = go.Figure()
    fig.add_hrect(y0=70, y1=180, fillcolor="green", opacity=0.08, line_width=0)
    if len(cgm):
        fig.add_trace(go.Scatter(x=_local(cgm["time"]), y=cgm["value"].astype(float),
                                 mode="lines", name="CGM [mg/dL]"))
    if len(lab):
        fig.add_trace(go.Scatter(x=_local(lab["time"]), y=lab["value"].astype(float),
                                 mode="markers", name="Blood glucose [mg/dL]"))
    fig.update_layout(title="Glucose (target 70-180 mg/dL shaded)", yaxis_title="mg/dL",
                      **_LAYOUT)
    return fig


def pk_figure(levels: pd.DataFrame, course: pd.DataFrame) -> go.Figure:
    """Measured vancomycin levels, the personalised fit and its 90% band [mg/L]."""
    fig = go.Figure()
    x = _local(course["time"])
    fig.add_trace(go.Scatter(x=x, y=course["upper"], line={"width": 0}, showlegend=False,
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=course["lower"], fill="tonexty", line={"width": 0},
                             name="90% band (posterior)", fillcolor="rgba(31,119,180,0.25)"))
    fig.add_trace(go.Scatter(x=x, y=course["mode"], name="personalised fit + recommended",
                             line={"color": "#1f77b4"}))
    fig.add_trace(go.Scatter(x=_local(levels["time"]), y=levels["value"], mode="markers",
                             name="measured level", marker={"color": "black", "size": 9}))
    fig.update_layout(title="Vancomycin concentration [mg/L]", yaxis_title="mg/L", **_LAYOUT)
    return fig


def what_if_figure(plan: pd.DataFrame, changed: pd.DataFrame) -> go.Figure:
    """Predicted glucose of the current plan and of the what-if, over one day."""
    fig = go.Figure()
    fig.add_hrect(y0=70, y1=180, fillcolor="green", opacity=0.08, line_width=0)
    fig.add_trace(go.Scatter(x=plan["minute"] / 60, y=plan["glucose"], name="current plan",
                             line={"color": "grey", "dash": "dash"}))
    fig.add_trace(go.Scatter(x=changed["minute"] / 60, y=changed["glucose"], name="what-if",
                             line={"color": "#d62728"}))
    fig.update_layout(title="Predicted glucose [mg/dL]", xaxis_title="hour of day",
                      yaxis_title="mg/dL", **_LAYOUT)
    return fig
