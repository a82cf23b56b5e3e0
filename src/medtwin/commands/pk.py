"""``medtwin pk map|fit|simulate`` and ``medtwin dose``: the precision-dosing twin on the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import typer
import yaml

from medtwin.core.errors import MedtwinError

app = typer.Typer(help="Pharmacokinetics: MAP personalisation, population fits, simulation.",
                  no_args_is_help=True)

MODEL_HELP = "Library model name (e.g. vancomycin-goti2018, mapbayr-001) or a YAML spec."
DATA_HELP = "NONMEM-style event table (CSV: ID, TIME, EVID, AMT, CMT, RATE, II, ADDL, SS, DV...)."


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _load(model: str, data: Path):  # noqa: ANN202 - (PopulationModel, EventTable)
    from medtwin.interop.nonmem import EventTable
    from medtwin.models.pk.spec import load_model

    return load_model(model), EventTable.read_csv(data)


@app.command("map")
def map_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help=DATA_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: subjects, the per-record "
                                 "table ('records') and 'provenance'."),
    out: Path | None = typer.Option(None, "--out", help="Write the per-record table (ID, "
                                    "TIME, DV, BLQ, LLOQ, PRED, IPRED, IWRES, CWRES, NPDE, "
                                    "LINE) as CSV."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    npde: int = typer.Option(1000, "--npde", min=0, help="Simulations per subject for NPDE "
                             "(0: no NPDE)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the restarts and of NPDE."),
) -> None:
    """Bayesian MAP per subject: etas, individual parameters, OFV, covariance, and the
    per-record diagnostics (PRED, IPRED, IWRES, CWRES, NPDE) with their provenance."""
    from medtwin.core.errors import ValidationError
    from medtwin.twin.pk import PKTwin
    from medtwin.twin.pk_diagnostics import record_table

    if out is not None and out.exists() and not force:
        _fail(ValidationError(f"{out} exists; pass --force to overwrite it, or give another "
                              "--out file", where="--out"))
    try:
        m, table = _load(model, data)
        twin = PKTwin(m, seed=seed).fit(table)
        records = record_table(twin, npde_samples=npde, seed=seed) \
            if (as_json or out is not None) else None
    except MedtwinError as exc:
        _fail(exc)
    if out is not None and records is not None:
        try:
            records.records.to_csv(out, index=False)
        except OSError as exc:
            _fail(ValidationError(f"cannot write {out}: {exc.strerror or exc}", where="--out"))
    rows = twin.summary()
    if as_json:
        typer.echo(json.dumps({"model": m.name, "subjects": rows, "records": records.rows(),
                               "provenance": records.provenance}, indent=2))
        return
    for r in rows:
        etas = " ".join(f"{k}={v:+.6f}" for k, v in r["eta"].items())
        pars = " ".join(f"{k}={v:.6g}" for k, v in r["parameters"].items())
        flag = "" if r["converged"] else "  (NOT converged)"
        typer.echo(f"ID {r['ID']}: OFV {r['ofv']:.5f}  {etas}  {pars}{flag}")
    if out is not None:
        typer.echo(f"{len(records.records)} records -> {out}")


@app.command("fit")
def fit_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP + " Its values are the start."),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help=DATA_HELP),
    estimate: str | None = typer.Option(None, help="Comma-separated parameters to estimate "
                                        "(default: all but F and ALAG)."),
    omega: str = typer.Option("diagonal", help="Omega structure: diagonal or full."),
    out: Path | None = typer.Option(None, "--out", help="Write the fitted model as YAML."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Dask workers for the "
                                "objective evaluations (same estimates as serial)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                         "(tcp://host:8786)."),
) -> None:
    """Population fit (FOCE-I): typical values, Omega, residual error, SEs, etas."""
    from medtwin.twin.pk_population import fit_population

    try:
        m, table = _load(model, data)
        fit = fit_population(m, table, omega_structure=omega,
                             estimate=estimate.split(",") if estimate else None,
                             workers=workers, scheduler=scheduler)
    except MedtwinError as exc:
        _fail(exc)
    fe, re_ = fit.fixed_effects(), fit.random_effects()
    if out is not None:
        out.write_text(yaml.safe_dump(fit.model.to_dict(), sort_keys=False))
    if as_json:
        typer.echo(json.dumps({"model": m.name, "ofv": fit.estimator.ofv_,
                               "converged": fit.estimator.converged_,
                               "fixed_effects": fe.to_dict(orient="records"),
                               "random_effects": re_.to_dict(orient="records"),
                               "etas": fit.etas().reset_index().to_dict(orient="records")},
                              indent=2))
        return
    typer.echo(f"FOCE-I on {len(fit.subjects)} subjects: -2LL {fit.estimator.ofv_:.4f} "
               f"({'converged' if fit.estimator.converged_ else 'NOT converged'})")
    typer.echo(fe.to_string(index=False))
    typer.echo(re_.to_string(index=False))


@app.command("simulate")
def simulate_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False,
                              help=DATA_HELP + " Doses and covariates are used; DV may be '.'."),
    times: str = typer.Option("0:24:1", help="Output times start:stop:step [h]."),
    draws: int = typer.Option(0, min=0, help="Draws of the etas from Omega per subject "
                              "(0: typical values)."),
    seed: int = typer.Option(0, min=0, help="Seed of the draws."),
    out: Path | None = typer.Option(None, "--out", help="Write CSV here (default: stdout)."),
) -> None:
    """Simulate the table's regimens: concentrations per subject (and draw) at the times."""
    from medtwin.twin.pk_data import prepare

    try:
        start, stop, step = (float(x) for x in times.split(":"))
        if not (step > 0 and stop >= start):
            raise ValueError
    except ValueError:
        _fail(ValueError(f"--times must be start:stop:step with step > 0, got {times!r}"))
    try:
        m, table = _load(model, data)
        d = prepare(m, table, for_fit=False)
        S = len(d.subjects)
        tv = m.typical_values(d.covariates, S)
        k = max(draws, 1)
        eta = np.zeros((S, k, m.n_eta))
        if draws:
            rng = np.random.default_rng(seed)
            eta = rng.multivariate_normal(np.zeros(m.n_eta), m.omega, size=(S, k))
        grid = np.arange(start, stop + 1e-9 * max(1.0, stop), step)
        conc = m.predict(m.individual(tv, eta), d.doses, np.tile(grid, (S, 1)))
    except MedtwinError as exc:
        _fail(exc)
    frame = pd.DataFrame({
        "ID": np.repeat(np.array(d.subjects, dtype=object), k * grid.size),
        "DRAW": np.tile(np.repeat(np.arange(k), grid.size), S),
        "TIME": np.tile(grid, S * k),
        "CONC": conc.reshape(-1),
    })
    if out is None:
        typer.echo(frame.to_csv(index=False), nl=False)
    else:
        frame.to_csv(out, index=False)
        typer.echo(f"{S} subjects x {k} draw(s) x {grid.size} times -> {out}")


def dose_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help=DATA_HELP),
    target: str = typer.Option("auc24=400:600", help="auc24=LOW:HIGH, cmin=LOW:HIGH or "
                               "cmax=LOW:HIGH."),
    subject: str | None = typer.Option(None, help="Subject ID (default: every subject)."),
    rounding: float = typer.Option(250.0, help="Dose rounding [mg]."),
    intervals: str = typer.Option("8,12,24", help="Allowed dosing intervals [h]."),
    max_rate: float = typer.Option(1000.0, help="Maximum infusion rate [mg/h]."),
    max_dose: float = typer.Option(4000.0, help="Largest single dose [mg]."),
    samples: int = typer.Option(2000, min=100, help="Posterior draws."),
    seed: int = typer.Option(0, min=0, help="Seed of the posterior draws."),
    plot: Path | None = typer.Option(None, "--plot", help="PNG of the predicted course "
                                     "(with several subjects: one file per subject)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recommend the regimen with the highest probability of target attainment."""
    from medtwin.twin.dosing import DoseConstraints, Target, plot_course, recommend_dose
    from medtwin.twin.pk import PKTwin

    try:
        tgt = Target.parse(target)
        ivals = tuple(float(x) for x in intervals.split(","))
    except MedtwinError as exc:
        _fail(exc)
    except ValueError:
        _fail(ValueError(f"--intervals must be numbers separated by commas, got {intervals!r}"))
    try:
        m, table = _load(model, data)
        if subject is not None:
            table = table.select([subject])
            if not table.subjects:
                raise ValueError(f"no subject {subject!r} in {data}")
        twin = PKTwin(m, seed=seed).fit(table)
        cons = DoseConstraints(rounding=rounding, intervals=ivals, max_rate=max_rate,
                               max_dose=max_dose, min_dose=rounding)
        recs = [recommend_dose(twin, tgt, cons, subject=s, n_samples=samples, seed=seed)
                for s in twin.subjects_]
        written = []
        if plot is not None:
            for r in recs:
                p = plot if len(recs) == 1 else plot.with_name(
                    f"{plot.stem}-{r.subject}{plot.suffix or '.png'}")
                written.append(str(plot_course(twin, r, p, seed=seed)))
    except (MedtwinError, ValueError) as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps({"model": m.name, "recommendations": [
            {**r.to_dict(), "parameters": {k: float(v) for k, v in
                                           twin.params_.loc[r.subject].items()}}
            for r in recs], "plots": written}, indent=2))
        return
    for r in recs:
        typer.echo(r.text())
    for p in written:
        typer.echo(f"plot -> {p}")
