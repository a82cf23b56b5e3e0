"""Visual predictive check (VPC) of a population PK model against an event table.

The design of the table (doses, sampling times, covariates) is simulated ``n_replicates``
times from the model (between-subject etas drawn from Omega, residual error added as the
model's error model says). Observations are binned by time (equal-count bins by default);
in each bin the observed 5th/50th/95th percentiles are set against the 90% prediction
interval of the same percentiles across the simulated replicates (Holford, PAGE 14 abstr
738, 2005). With ``pred_corrected`` observed and simulated values are first multiplied by
``PRED_bin / PRED_ij`` (the bin's median population prediction over the observation's),
the prediction-corrected VPC of Bergstrand et al. (AAPS J 13:143, 2011), which removes the
spread that comes from mixing doses and covariates within a bin. Samples below the limit of
quantification are left out of the observed percentiles (they are shown on no band).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import PopulationModel
from medtwin.twin.pk_data import PKData, prepare

log = logging.getLogger(__name__)

_TINY = 1e-12


@dataclass(frozen=True)
class VPCResult:
    """The VPC table (one row a time bin), the PNG written (or None) and its settings."""

    table: pd.DataFrame
    png: Path | None
    percentiles: tuple[float, ...]
    interval: float
    pred_corrected: bool


def simulate_design(model: PopulationModel, table: EventTable, n_replicates: int, *,
                    seed: int = 0) -> tuple[PKData, np.ndarray, np.ndarray]:
    """``n_replicates`` simulations of the observations of ``table`` from ``model``.

    Returns the prepared data, the simulated values ``(n, S, m)`` (etas from Omega and the
    residual error included) and the population predictions ``(S, m)`` (all etas 0)."""
    if n_replicates < 1:
        raise ValidationError("must be >= 1", where="n_replicates")
    data = prepare(model, table, for_fit=False)
    S, q = len(data.subjects), model.n_eta
    rng = np.random.default_rng(seed)
    tv = model.typical_values(data.covariates, S)
    pred = model.predict(model.individual(tv, np.zeros((S, 1, q))), data.doses,
                         data.times)[:, 0, :]
    eta = rng.multivariate_normal(np.zeros(q), model.omega, size=(S, n_replicates))
    f = model.predict(model.individual(tv, eta), data.doses, data.times)  # (S, n, m)
    err = data.observed.error(model.error)
    sd = np.sqrt(err.variance(f))
    z = rng.standard_normal(f.shape)
    log_scale = np.asarray(err.log_scale)
    y = np.where(log_scale, np.exp(np.log(np.maximum(f, _TINY)) + sd * z), f + sd * z)
    return data, np.moveaxis(y, 1, 0), pred


def simulate_table(model: PopulationModel, table: EventTable, *, seed: int = 0,
                   lloq: float | None = None) -> EventTable:
    """``table`` with each used observation's DV replaced by one simulation from ``model``
    (a simulation-estimation data set on a real design). Values below ``lloq`` (default the
    model's) become BLQ rows at that limit; without a limit a negative value is an error."""
    data, sim, _ = simulate_design(model, table, 1, seed=seed)
    limit = model.lloq if lloq is None else lloq
    used = data.observed.mask
    y = sim[0][used]
    if limit is None and (y < 0).any():
        raise ValidationError("a simulated value is negative; give lloq to censor the low "
                              "ones", where="lloq")
    lines = data.lines[used]
    records = table.records.copy()
    pos = pd.Series(np.arange(len(records)), index=records["LINE"].to_numpy())[lines].to_numpy()
    below = y < limit if limit is not None else np.zeros(y.shape, bool)
    dv = records.columns.get_loc("DV")
    records.iloc[pos, dv] = np.where(below, float(limit or 0.0), y)
    if below.any():
        for col, value in (("BLQ", 1), ("LLOQ", float(limit or 0.0))):
            if col not in records.columns:
                records[col] = 0 if col == "BLQ" else np.nan
            records.iloc[pos[below], records.columns.get_loc(col)] = value
    return replace(table, records=records)


def _bin_edges(times: np.ndarray, bins: int | Sequence[float]) -> np.ndarray:
    if isinstance(bins, int):
        if bins < 1:
            raise ValidationError("must be >= 1 or a list of edges", where="bins")
        edges = np.unique(np.quantile(times, np.linspace(0, 1, bins + 1)))
    else:
        edges = np.unique(np.asarray(bins, float))
        if edges.size < 2:
            raise ValidationError("needs at least two edges", where="bins")
    edges[0] = min(edges[0], times.min())
    edges[-1] = max(edges[-1], times.max())
    return edges


def vpc(
    model: PopulationModel,
    table: EventTable,
    *,
    n_replicates: int = 200,
    bins: int | Sequence[float] = 8,
    percentiles: Sequence[float] = (5.0, 50.0, 95.0),
    interval: float = 0.90,
    pred_corrected: bool = False,
    seed: int = 0,
    png: str | Path | None = None,
    title: str | None = None,
) -> VPCResult:
    """The VPC (or pcVPC) table of ``model`` on ``table``'s design and data; the plot is
    written to ``png`` when given.

    Columns: ``bin``, ``time_lo``, ``time_hi``, ``time_mid`` (median observed time), ``n``,
    and for each percentile p: ``obs_p`` and the simulated ``sim_p_lo``, ``sim_p_med``,
    ``sim_p_hi`` (the ``interval`` prediction interval of that percentile), and
    ``inside_p`` (whether the observed one lies inside)."""
    if not 0 < interval < 1:
        raise ValidationError("must be in (0, 1)", where="interval")
    data, sim, pred = simulate_design(model, table, n_replicates, seed=seed)
    o = data.observed
    use = o.mask & ~o.blq
    if not use.any():
        raise ValidationError("no quantified observations to check", where="table")
    t = data.times[use]
    obs = o.y[use]
    simv = sim[:, use]  # (n, N)
    p_ij = pred[use]
    edges = _bin_edges(t, bins)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, edges.size - 2)
    if pred_corrected:
        for b in np.unique(idx):
            inb = idx == b
            pbin = np.median(p_ij[inb])
            factor = np.where(p_ij[inb] > _TINY, pbin / np.maximum(p_ij[inb], _TINY), 1.0)
            obs[inb] = obs[inb] * factor
            simv[:, inb] = simv[:, inb] * factor
    a = 100 * (1 - interval) / 2
    rows = []
    for b in range(edges.size - 1):
        inb = idx == b
        if not inb.any():
            continue
        row: dict[str, float] = {"bin": b, "time_lo": edges[b], "time_hi": edges[b + 1],
                                 "time_mid": float(np.median(t[inb])), "n": int(inb.sum())}
        sim_pct = np.percentile(simv[:, inb], list(percentiles), axis=1)  # (P, n)
        for k, p in enumerate(percentiles):
            key = f"p{p:g}"
            lo, med, hi = np.percentile(sim_pct[k], [a, 50, 100 - a])
            ob = float(np.percentile(obs[inb], p))
            row.update({f"obs_{key}": ob, f"sim_{key}_lo": lo, f"sim_{key}_med": med,
                        f"sim_{key}_hi": hi, f"inside_{key}": bool(lo <= ob <= hi)})
        rows.append(row)
    frame = pd.DataFrame(rows)
    path = None
    if png is not None:
        path = Path(png)
        _plot(frame, t, obs, tuple(percentiles), interval, pred_corrected, path,
              title or f"{'pc' if pred_corrected else ''}VPC: {model.name}",
              model.units.get("time", ""), model.units.get("concentration", ""))
    log.info("VPC of %s: %d bins, %d replicates%s", model.name, len(frame), n_replicates,
             " (prediction-corrected)" if pred_corrected else "")
    return VPCResult(frame, path, tuple(float(p) for p in percentiles), interval,
                     pred_corrected)


def _plot(frame: pd.DataFrame, t: np.ndarray, obs: np.ndarray, percentiles: tuple[float, ...],
          interval: float, pred_corrected: bool, path: Path, title: str, time_unit: str,
          conc_unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        ax.scatter(t, obs, s=8, color="0.55", alpha=0.6, label="observed", zorder=1)
        x = frame["time_mid"].to_numpy()
        for p in percentiles:
            key = f"p{p:g}"
            colour = "tab:red" if p == 50 else "tab:blue"
            ax.fill_between(x, frame[f"sim_{key}_lo"], frame[f"sim_{key}_hi"], color=colour,
                            alpha=0.2, lw=0,
                            label=f"simulated {100 * interval:g}% PI, P{p:g}")
            ax.plot(x, frame[f"obs_{key}"], color=colour, lw=1.6 if p == 50 else 1.0,
                    ls="-" if p == 50 else "--", label=f"observed P{p:g}")
        ax.set_xlabel(f"time [{time_unit}]" if time_unit else "time")
        what = "prediction-corrected concentration" if pred_corrected else "concentration"
        ax.set_ylabel(f"{what} [{conc_unit}]" if conc_unit else what)
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
