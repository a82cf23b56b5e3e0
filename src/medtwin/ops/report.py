"""A self-contained HTML report of a run (plotly.js inline, no CDN): waits with 95% CIs,
utilisation, occupancy and queues over the day, and the KPI table."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from medtwin.ops.runner import Results


def _fig_html(fig: go.Figure, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False)


def figures(res: Results) -> list[go.Figure]:
    """The report's figures: waits, utilisation, occupancy by hour of day."""
    s = res.summary()
    figs = []
    w = s[s.index.str.startswith("wait:")].dropna(subset=["mean"])
    figs.append(go.Figure(go.Bar(
        x=[k[5:] for k in w.index], y=w["mean"],
        error_y={"type": "data", "symmetric": False, "array": w["ci_high"] - w["mean"],
                 "arrayminus": w["mean"] - w["ci_low"]}),
        layout={"title": f"Mean wait by activity ({res.model.time_unit}), 95% CI",
                "yaxis": {"title": res.model.time_unit}}))
    u = s[s.index.str.startswith("util:")]
    figs.append(go.Figure(go.Bar(
        x=[k[5:] for k in u.index], y=u["mean"],
        error_y={"type": "data", "symmetric": False, "array": u["ci_high"] - u["mean"],
                 "arrayminus": u["mean"] - u["ci_low"]}),
        layout={"title": "Utilisation by resource, 95% CI", "yaxis": {"range": [0, 1.05]}}))
    if not res.hourly.empty:
        # every hour of the day, NaN where no replication has data: the lines break there
        # instead of joining the hours either side of the gap
        h = res.by_hour_of_day().reindex(range(24))
        occ = go.Figure(layout={"title": "Occupancy over the day (mean, 95% CI; gaps: no "
                                         "data for that hour)",
                                "xaxis": {"title": "hour of day"},
                                "yaxis": {"title": "patients"}})
        cols = ["in_system"] + [c for c in h.columns if c.startswith(("in_service:", "queue:"))
                                and not c.endswith(" ci")]
        for c in cols:
            occ.add_trace(go.Scatter(x=list(h.index), y=h[c], name=c, mode="lines+markers",
                                     connectgaps=False,
                                     error_y={"type": "data", "array": h[f"{c} ci"]}))
        figs.append(occ)
    return figs


def write_report(res: Results, path: str | Path, title: str | None = None,
                 tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write the report to ``path`` (one HTML file, works offline); ``tables`` (heading ->
    table) are added before the KPI table, e.g. a scenario comparison."""
    path = Path(path)
    title = title or f"medtwin ops: {res.model.name}"
    parts = [_fig_html(f, i == 0) for i, f in enumerate(figures(res))]
    summary = res.summary()
    table = "".join(f"<h2>{html.escape(h)}</h2>\n" + t.round(4).to_html(classes="kpis", border=0)
                    for h, t in (tables or {}).items())
    table += "<h2>KPIs across replications (mean, sd, 95% CI)</h2>\n"
    table += f"<p>{html.escape(summary.attrs.get('ci_note', ''))}</p>\n"
    table += summary.round(4).to_html(classes="kpis", border=0)
    n = len(res.per_rep)
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table.kpis td,table.kpis th{{padding:2px 8px;
text-align:right}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(res.model.description)}</p>
<p>{n} replications, seed {res.seed}; warm-up {res.model.warm_up:g}, results over
{res.model.length:g} {html.escape(res.model.time_unit)}; model file
{html.escape(res.model.file)}.</p>
{''.join(parts)}
{table}
</body></html>"""
    path.write_text(doc, encoding="utf-8")
    return path
