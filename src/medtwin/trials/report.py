"""Trial reports: an AGP-style percentile plot, a CVGA plot and the outcome table.

``write_report(path, ...)`` writes a self-contained HTML page (plotly, with plotly.js embedded
inline so it opens offline) or, for a ``.png`` path, a static figure drawn with matplotlib.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.models.glucose.constants import TARGET_RANGE
from medtwin.trials.metrics import (
    CVGA_CELLS,
    CVGA_MAX_BOUNDS,
    CVGA_MAX_RANGE,
    CVGA_MIN_BOUNDS,
    CVGA_MIN_RANGE,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

logger = logging.getLogger(__name__)

AGP_PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)
ZONE_COLOURS: dict[str, str] = {
    "A": "#32cd32",
    "B": "#228b22",
    "C": "#ffd700",
    "D": "#ff8c00",
    "E": "#dc143c",
}


def agp_percentiles(
    glucose: np.ndarray,
    times: np.ndarray,
    *,
    start_minute: float = 0.0,
    bin_minutes: float = 15.0,
) -> pd.DataFrame:
    """5/25/50/75/95th percentiles of glucose by time of day, pooled over subjects and days.

    ``glucose`` is subjects x samples [mg/dL] at ``times`` [min since the start];
    ``start_minute`` is the clock time of the start in minutes after midnight. Samples are
    grouped into ``bin_minutes`` bins of the day; the index is the bin's start [min of day].
    """
    g = np.asarray(glucose, dtype=float)
    t = np.asarray(times, dtype=float)
    if g.ndim != 2 or g.shape[1] != t.size or g.size == 0:
        raise ValidationError(f"glucose shaped {g.shape} does not match {t.size} times",
                              where="glucose")
    if not bin_minutes > 0:
        raise ValidationError(f"must be > 0, got {bin_minutes!r}", where="bin_minutes")
    minute_of_day = np.mod(start_minute + t, 1440.0)
    bins = np.floor(minute_of_day / bin_minutes + 1e-9) * bin_minutes
    frame = pd.DataFrame({"bin": np.broadcast_to(bins, g.shape).ravel(), "g": g.ravel()})
    grouped = frame.groupby("bin")["g"]
    out = pd.DataFrame({f"p{p}": grouped.quantile(p / 100.0) for p in AGP_PERCENTILES})
    out.index.name = "minute of day"
    return out


def _hours_labels(minutes: np.ndarray) -> list[str]:
    return [f"{int(m // 60):02d}:{int(m % 60):02d}" for m in minutes]


def agp_figure_plotly(agp: pd.DataFrame, title: str = "Ambulatory glucose profile") -> go.Figure:
    """Plotly figure of the AGP: 5-95 and 25-75 bands, median line, 70-180 target band."""
    import plotly.graph_objects as go

    x = agp.index.to_numpy() / 60.0
    fig = go.Figure()
    fig.add_hrect(y0=TARGET_RANGE[0], y1=TARGET_RANGE[1], fillcolor="#2e8b57", opacity=0.12,
                  line_width=0, annotation_text="target 70-180", annotation_position="top left")
    for lo, hi, colour, name in (("p5", "p95", "rgba(70,130,180,0.25)", "5-95th percentile"),
                                 ("p25", "p75", "rgba(70,130,180,0.55)", "25-75th percentile")):
        fig.add_trace(go.Scatter(x=x, y=agp[hi], mode="lines", line={"width": 0},
                                 showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=agp[lo], mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=colour, name=name))
    fig.add_trace(go.Scatter(x=x, y=agp["p50"], mode="lines", line={"color": "#1f3b73",
                                                                     "width": 2}, name="median"))
    fig.update_layout(title=title, xaxis_title="time of day [h]", yaxis_title="glucose [mg/dL]",
                      xaxis={"range": [0, 24], "dtick": 3}, template="plotly_white")
    return fig


def cvga_figure_plotly(
    table: pd.DataFrame, title: str = "Control variability grid analysis"
) -> go.Figure:
    """Plotly CVGA: the nine cells coloured by zone and one point per subject."""
    import plotly.graph_objects as go

    fig = go.Figure()
    xs = [CVGA_MIN_RANGE[1], CVGA_MIN_BOUNDS[1], CVGA_MIN_BOUNDS[0], CVGA_MIN_RANGE[0]]
    ys = [CVGA_MAX_RANGE[0], CVGA_MAX_BOUNDS[0], CVGA_MAX_BOUNDS[1], CVGA_MAX_RANGE[1]]
    for cell, (zone, col, row) in CVGA_CELLS.items():
        fig.add_shape(type="rect", x0=xs[col], x1=xs[col + 1], y0=ys[row], y1=ys[row + 1],
                      fillcolor=ZONE_COLOURS[zone], opacity=0.45, line={"color": "white"},
                      layer="below")
        fig.add_annotation(x=(xs[col] + xs[col + 1]) / 2, y=(ys[row] + ys[row + 1]) / 2,
                           text=cell, showarrow=False, font={"size": 11})
    zones = table["cvga zone"].astype(str)
    fig.add_trace(go.Scatter(
        x=table["cvga min [mg/dL]"], y=table["cvga max [mg/dL]"], mode="markers",
        marker={"size": 9, "color": "black"}, text=[str(s) for s in table.index],
        hovertemplate="%{text}<br>min %{x:.0f}, max %{y:.0f} mg/dL<extra></extra>",
        name="subjects"))
    counts = zones.value_counts(normalize=True).reindex(list("ABCDE"), fill_value=0.0) * 100
    summary = ", ".join(f"{z}: {v:.0f}%" for z, v in counts.items())
    fig.update_layout(title=f"{title} ({summary})", template="plotly_white",
                      xaxis={"title": "min BG, 2.5th percentile [mg/dL]",
                             "range": [CVGA_MIN_RANGE[1], CVGA_MIN_RANGE[0]],
                             "tickvals": [110, 90, 70, 50], "ticktext": ["110", "90", "70", "<50"]},
                      yaxis={"title": "max BG, 97.5th percentile [mg/dL]",
                             "range": [CVGA_MAX_RANGE[0], CVGA_MAX_RANGE[1]],
                             "tickvals": [110, 180, 300, 400],
                             "ticktext": ["110", "180", "300", ">400"]},
                      showlegend=False)
    return fig


def _check(table: pd.DataFrame, glucose: np.ndarray) -> None:
    missing = {"cvga min [mg/dL]", "cvga max [mg/dL]", "cvga zone"} - set(table.columns)
    if missing:
        raise ValidationError(f"outcome table lacks columns {sorted(missing)}; build it with "
                              "medtwin.trials.metrics.outcome_metrics", where="table")
    if np.asarray(glucose).shape[0] != len(table):
        raise ValidationError(f"{np.asarray(glucose).shape[0]} glucose rows for {len(table)} "
                              "subjects in the table", where="glucose")


def html_report(
    path: str | Path,
    table: pd.DataFrame,
    glucose: np.ndarray,
    times: np.ndarray,
    *,
    title: str = "medtwin in-silico trial",
    start_minute: float = 0.0,
    meta: Mapping[str, object] | None = None,
) -> Path:
    """Write a self-contained HTML report (plotly.js inline, no network needed to open it)."""
    _check(table, glucose)
    agp = agp_percentiles(glucose, times, start_minute=start_minute)
    agp_html = agp_figure_plotly(agp).to_html(full_html=False, include_plotlyjs=True)
    cvga_html = cvga_figure_plotly(table).to_html(full_html=False, include_plotlyjs=False)
    meta_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in (meta or {}).items())
    numeric = table.select_dtypes("number").columns
    summary = table[numeric].agg(["mean", "std", "min", "max"])
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{meta_rows}</table>
<h2>Ambulatory glucose profile</h2>{agp_html}
<h2>Control variability grid analysis</h2>{cvga_html}
<h2>Summary over subjects</h2>{summary.to_html(float_format=lambda v: f"{v:.2f}")}
<h2>Outcomes per subject</h2>{table.to_html(float_format=lambda v: f"{v:.2f}")}
</body></html>
"""
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    logger.info("wrote HTML report %s (%d subjects)", out, len(table))
    return out


def png_report(
    path: str | Path,
    table: pd.DataFrame,
    glucose: np.ndarray,
    times: np.ndarray,
    *,
    title: str = "medtwin in-silico trial",
    start_minute: float = 0.0,
) -> Path:
    """Write a PNG with the AGP and CVGA plots side by side (needs matplotlib)."""
    _check(table, glucose)
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValidationError("a PNG report needs matplotlib; install it or write .html",
                              where="report") from exc
    agp = agp_percentiles(glucose, times, start_minute=start_minute)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    x = agp.index.to_numpy() / 60.0
    ax1.axhspan(*TARGET_RANGE, color="#2e8b57", alpha=0.12, label="target 70-180")
    ax1.fill_between(x, agp["p5"], agp["p95"], color="steelblue", alpha=0.25, label="5-95th")
    ax1.fill_between(x, agp["p25"], agp["p75"], color="steelblue", alpha=0.55, label="25-75th")
    ax1.plot(x, agp["p50"], color="#1f3b73", lw=2, label="median")
    ax1.set(xlim=(0, 24), xticks=range(0, 25, 3), xlabel="time of day [h]",
            ylabel="glucose [mg/dL]", title="Ambulatory glucose profile")
    ax1.legend(loc="upper right", fontsize=8)
    xs = [CVGA_MIN_RANGE[1], CVGA_MIN_BOUNDS[1], CVGA_MIN_BOUNDS[0], CVGA_MIN_RANGE[0]]
    ys = [CVGA_MAX_RANGE[0], CVGA_MAX_BOUNDS[0], CVGA_MAX_BOUNDS[1], CVGA_MAX_RANGE[1]]
    for cell, (zone, col, row) in CVGA_CELLS.items():
        ax2.add_patch(Rectangle((xs[col + 1], ys[row]), xs[col] - xs[col + 1],
                                ys[row + 1] - ys[row], color=ZONE_COLOURS[zone], alpha=0.45,
                                ec="white", lw=2))
        ax2.text((xs[col] + xs[col + 1]) / 2, (ys[row] + ys[row + 1]) / 2, cell, ha="center",
                 va="center", fontsize=8)
    ax2.scatter(table["cvga min [mg/dL]"], table["cvga max [mg/dL]"], c="k", s=18, zorder=3)
    ax2.set(xlim=(CVGA_MIN_RANGE[1], CVGA_MIN_RANGE[0]), ylim=CVGA_MAX_RANGE,
            xticks=[110, 90, 70, 50], yticks=[110, 180, 300, 400],
            xlabel="min BG, 2.5th percentile [mg/dL]", ylabel="max BG, 97.5th percentile [mg/dL]",
            title="Control variability grid analysis")
    ax2.set_xticklabels(["110", "90", "70", "<50"])
    ax2.set_yticklabels(["110", "180", "300", ">400"])
    fig.suptitle(title)
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    logger.info("wrote PNG report %s", out)
    return out


def write_report(
    path: str | Path,
    table: pd.DataFrame,
    glucose: np.ndarray,
    times: np.ndarray,
    *,
    title: str = "medtwin in-silico trial",
    start_minute: float = 0.0,
    meta: Mapping[str, object] | None = None,
) -> Path:
    """Write the report as HTML (``.html``/``.htm``) or PNG (``.png``), chosen by the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm"):
        return html_report(path, table, glucose, times, title=title, start_minute=start_minute,
                           meta=meta)
    if suffix == ".png":
        return png_report(path, table, glucose, times, title=title, start_minute=start_minute)
    raise ValidationError(f"unknown report type {suffix!r}; use a .html or .png path",
                          where="report")
