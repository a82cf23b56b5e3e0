"""``medtwin pk map|fit|simulate|schema|models`` and ``medtwin dose``: the precision-dosing
twin on the CLI.

Exit codes (as every medtwin command): 0 ok; 1 a finding (a population fit that did not
converge, a MAP fit that did not converge when models are averaged); 2 a usage or input
problem (a bad option, a missing or malformed file, an output file that exists without
``--force``); 3 a runtime failure (a fit that crashed). Errors go to stderr as
``error: ...``; ``--json`` prints the results as JSON on stdout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import pandas as pd
import typer
import yaml

from medtwin.core.errors import MedtwinError, NotFoundError, ValidationError

app = typer.Typer(help="Pharmacokinetics: MAP personalisation, population fits, simulation.",
                  no_args_is_help=True)

MODEL_HELP = "Library model name (e.g. vancomycin-goti2018, mapbayr-001) or a YAML spec."
DATA_HELP = "NONMEM-style event table (CSV: ID, TIME, EVID, AMT, CMT, RATE, II, ADDL, SS, DV...)."
USAGE, FINDING, RUNTIME = 2, 1, 3

T = TypeVar("T")


def _fail(exc: Exception | str, code: int | None = None) -> NoReturn:
    """Print ``error: ...`` to stderr and exit: 2 for bad input (ValidationError,
    NotFoundError), 3 for any other failure, unless ``code`` says."""
    if code is None:
        usage = ValidationError | NotFoundError | ModuleNotFoundError  # (a missing extra)
        code = USAGE if isinstance(exc, usage) else RUNTIME
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def _guard(what: str, fn: Callable[[], T], context: str | None = None) -> T:
    """Run ``fn``: bad input ends with exit 2, anything else that fails with exit 3 (a
    missing optional extra is left to the entry point, which names what to install);
    ``context`` (e.g. which model) starts the message of a typed error."""
    lead = f"{context}: " if context else ""
    try:
        return fn()
    except (typer.Exit, typer.Abort, typer.TyperException, ImportError):
        raise
    except (ValidationError, NotFoundError) as exc:
        _fail(f"{lead}{exc}", USAGE)
    except MedtwinError as exc:
        _fail(f"{lead}{exc}", RUNTIME)
    except Exception as exc:  # a crash is reported as a runtime failure
        _fail(f"{what} failed: {type(exc).__name__}: {exc}", RUNTIME)


def _check_out(path: Path | None, force: bool, option: str = "--out") -> None:
    """Refuse to overwrite ``path`` without ``--force`` (before any work is done)."""
    if path is None:
        return
    if path.is_dir():
        _fail(ValidationError(f"{path} is a directory; give a file name", where=option))
    if path.exists() and not force:
        _fail(ValidationError(f"{path} exists; pass --force to overwrite it, or give another "
                              f"{option} file", where=option))
    if not path.parent.is_dir():
        _fail(ValidationError(f"the folder {path.parent} does not exist", where=option))


def _require(module: str, feature: str, needed: bool) -> None:
    """Before any work: a missing optional extra that ``feature`` needs ends with exit 2,
    naming the extra to install."""
    if needed:
        from medtwin.extras import require

        try:
            require(module, feature)
        except ModuleNotFoundError as exc:
            _fail(exc, USAGE)


def _write(path: Path, write: Callable[[Path], Any], option: str = "--out") -> None:
    try:
        write(path)
    except OSError as exc:
        _fail(ValidationError(f"cannot write {path}: {exc.strerror or exc}", where=option))


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays as Python values, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_plain(value), indent=2, allow_nan=False)


def _load(model: str, data: Path):  # noqa: ANN202 - (PopulationModel, EventTable)
    from medtwin.interop.nonmem import EventTable
    from medtwin.models.pk.spec import load_model

    return load_model(model), EventTable.read_csv(data)


@app.command("map")
def map_cmd(
    model: list[str] = typer.Option(..., "--model", metavar="MODEL",
                                    help=MODEL_HELP + " Repeat it to average several models' "
                                    "fits (see --average)."),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help=DATA_HELP),
    average: str | None = typer.Option(None, "--average", metavar="ll|aic",
                                       help="With several --model: weight each model per "
                                       "subject by its MAP fit, ll (w ~ exp(-OFV/2)) or aic "
                                       "(w ~ exp(-OFV/2 - k), k its etas), as mapbayr; "
                                       "default ll."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: subjects, the per-record "
                                 "table ('records') and 'provenance' (several models: "
                                 "'weights', 'predictions' and each model's 'fits')."),
    out: Path | None = typer.Option(None, "--out", help="Write the per-record table (ID, "
                                    "TIME, DV, BLQ, LLOQ, PRED, IPRED, IWRES, CWRES, NPDE, "
                                    "LINE) as CSV (several models: one block per MODEL, with "
                                    "its WEIGHT and the averaged IPRED_AVG)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    npde: int = typer.Option(1000, "--npde", min=0, help="Simulations per subject for NPDE "
                             "(0: no NPDE)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the restarts and of NPDE."),
) -> None:
    """Bayesian MAP per subject: etas, individual parameters, OFV, covariance, and the
    per-record diagnostics (PRED, IPRED, IWRES, CWRES, NPDE) with their provenance.

    With several --model, each model is fitted to the same table and the models are
    averaged (mapbayr's model averaging, Uster et al. 2021): per-subject weights and the
    averaged prediction at the observation times."""
    from medtwin.twin.pk import PKTwin
    from medtwin.twin.pk_diagnostics import record_table

    scheme = None
    if average is not None:
        scheme = average.strip().upper()
        if scheme not in ("LL", "AIC"):
            _fail(ValidationError(f"must be ll or aic, got {average!r}", where="--average"))
        if len(model) < 2:
            _fail(ValidationError("model averaging needs at least two --model options",
                                  where="--average"))
    _check_out(out, force)
    if len(model) > 1:
        _map_average(model, data, scheme or "LL", as_json, out, npde, seed)
        return
    try:
        m, table = _load(model[0], data)
    except MedtwinError as exc:
        _fail(exc)

    def run():  # noqa: ANN202
        twin = PKTwin(m, seed=seed).fit(table)
        records = record_table(twin, npde_samples=npde, seed=seed) \
            if (as_json or out is not None) else None
        return twin, records

    twin, records = _guard("the MAP fit", run)
    if out is not None and records is not None:
        _write(out, lambda p: records.records.to_csv(p, index=False))
    rows = twin.summary()
    if as_json:
        typer.echo(_dumps({"model": m.name, "subjects": rows, "records": records.rows(),
                           "provenance": records.provenance}))
        return
    for r in rows:
        etas = " ".join(f"{k}={v:+.6f}" for k, v in r["eta"].items())
        pars = " ".join(f"{k}={v:.6g}" for k, v in r["parameters"].items())
        flag = "" if r["converged"] else "  (NOT converged)"
        typer.echo(f"ID {r['ID']}: OFV {r['ofv']:.5f}  {etas}  {pars}{flag}")
    if out is not None:
        typer.echo(f"{len(records.records)} records -> {out}")


def _observation_times(twin: Any) -> dict[str, np.ndarray]:
    """Each subject's distinct observation times (quantified and BLQ samples)."""
    d = twin.data_
    return {s: np.unique(d.times[i][d.observed.mask[i]]) for i, s in enumerate(twin.subjects_)}


def _map_average(models: list[str], data: Path, scheme: str, as_json: bool,
                 out: Path | None, npde: int, seed: int) -> None:
    """``pk map`` with several models: fit each, weight them, average their predictions."""
    from medtwin.interop.nonmem import EventTable
    from medtwin.models.pk.spec import load_model
    from medtwin.twin.pk import PKTwin
    from medtwin.twin.pk_averaging import average_models
    from medtwin.twin.pk_diagnostics import record_table

    try:
        table = EventTable.read_csv(data)
        loaded = {}
        for name in models:
            m = load_model(name)
            key, n = m.name, 2
            while key in loaded:
                key, n = f"{m.name}#{n}", n + 1
            loaded[key] = m
    except MedtwinError as exc:
        _fail(exc)
    twins = {}
    for key, m in loaded.items():
        twins[key] = _guard(f"the MAP fit of {key}",
                            lambda m=m: PKTwin(m, seed=seed).fit(table), f"model {key}")
    bad = {k: [s for s, c in zip(t.subjects_, t.converged_, strict=True) if not c]
           for k, t in twins.items()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        which = "; ".join(f"model {k}: subject(s) {', '.join(v)}" for k, v in bad.items())
        _fail(f"the MAP fit did not converge ({which}), so its OFV cannot weight the "
              "model: leave that model out, or check the data and the model", FINDING)
    times = _observation_times(next(iter(twins.values())))
    grid = np.unique(np.concatenate(list(times.values()))) if times else np.zeros(0)
    avg = _guard("model averaging", lambda: average_models(twins, grid, scheme))
    pred = avg.predictions
    keep = pd.DataFrame([(s, t) for s, ts in times.items() for t in ts], columns=["ID", "time"])
    pred = keep.merge(pred, on=["ID", "time"], how="left").rename(columns={"time": "TIME"})
    names = list(twins)
    ofv = pd.DataFrame({k: np.asarray(t.ofv_, float) for k, t in twins.items()},
                       index=avg.weights.index)
    n_eta = {k: int(t.eta_.shape[1]) for k, t in twins.items()}
    records = None
    if as_json or out is not None:
        records = {k: _guard(f"the record table of {k}",
                             lambda t=t: record_table(t, npde_samples=npde, seed=seed))
                   for k, t in twins.items()}
    if out is not None and records is not None:
        _write(out, lambda p: _average_records(records, avg.weights).to_csv(p, index=False))
    rule = ("w ~ exp(-OFV/2)" if scheme == "LL" else
            "w ~ exp(-OFV/2 - k), k = number of etas")
    if as_json:
        typer.echo(_dumps({
            "average": scheme, "rule": rule, "models": names, "n_eta": n_eta,
            "weights": [{"ID": s, "weights": avg.weights.loc[s].to_dict(),
                         "ofv": ofv.loc[s].to_dict()} for s in avg.weights.index],
            "predictions": pred.to_dict(orient="records"),
            "fits": {k: {"subjects": twins[k].summary(), "records": records[k].rows(),
                         "provenance": records[k].provenance} for k in names}}))
        return
    typer.echo(f"Model averaging of {len(names)} models, {scheme} weights ({rule}; OFV: "
               "each subject's MAP objective with its prior term, as mapbayr)")
    for s in avg.weights.index:
        o = "  ".join(f"{k} {ofv.at[s, k]:.5f}" for k in names)
        w = "  ".join(f"{k} {avg.weights.at[s, k]:.6f}" for k in names)
        typer.echo(f"ID {s}: OFV {o} | weight {w}")
        rows = pred[pred["ID"] == s].drop(columns="ID")
        typer.echo("  " + rows.to_string(index=False, float_format=lambda v: f"{v:.6g}")
                   .replace("\n", "\n  "))
    if out is not None and records is not None:
        n = sum(len(r.records) for r in records.values())
        typer.echo(f"{n} records ({len(names)} models) -> {out}")


def _average_records(records: dict[str, Any], weights: pd.DataFrame) -> pd.DataFrame:
    """The models' record tables one after the other (column MODEL first), each record with
    its model's WEIGHT for the subject and IPRED_AVG, the weighted mean of the models'
    IPRED at that record."""
    frames = []
    for k, r in records.items():
        f = r.records.copy()
        f.insert(0, "MODEL", k)
        f["WEIGHT"] = weights[k].reindex(f["ID"]).to_numpy()
        frames.append(f)
    long = pd.concat(frames, ignore_index=True)
    avg = (long.assign(_w=long["WEIGHT"] * long["IPRED"])
           .groupby(["ID", "LINE"], sort=False)["_w"].sum().rename("IPRED_AVG"))
    return long.merge(avg, left_on=["ID", "LINE"], right_index=True, how="left")


def _iterations(text: str) -> tuple[int, int]:
    try:
        burn, em = (int(x) for x in text.split(","))
    except ValueError:
        _fail(ValidationError(f"must be BURN,EM (two whole numbers), got {text!r}",
                              where="--iterations"))
    if burn < 1 or em < 1:
        _fail(ValidationError(f"both numbers must be >= 1, got {text!r}", where="--iterations"))
    return burn, em


def estimates_table(fit: Any) -> pd.DataFrame:
    """Every estimate with its standard error: ``kind`` theta (typical values; se by the
    delta method from the log scale), omega (variances; se from that of the log sd) and
    residual (sds; se from that of the log sd). The SEs come from FOCE-I's covariance
    (2 x the inverse Hessian of its -2LL) at the estimates; NaN where none was computed
    (a full Omega's variances are estimated through its Cholesky factor)."""
    est = fit.estimator
    se = np.asarray(getattr(est, "se_", []), float)
    names = list(getattr(est, "parameter_names_", [])) if se.size else []

    def se_log(name: str) -> float:
        return float(se[names.index(name)]) if name in names else math.nan

    rows = [{"kind": "theta", **r} for r in fit.fixed_effects().to_dict(orient="records")]
    om = np.asarray(est.omega_, float)
    etas = list(fit.model.etas)
    for i, e in enumerate(etas):
        s = se_log(f"log sd eta[{i}]")
        rows.append({"kind": "omega", "parameter": f"omega {e}", "unit": "",
                     "estimate": om[i, i], "se": 2 * om[i, i] * s, "rse %": 200 * s})
    for i in range(len(etas)):
        for j in range(i):
            if om[i, j] != 0.0:
                rows.append({"kind": "omega", "parameter": f"omega {etas[j]},{etas[i]}",
                             "unit": "", "estimate": om[i, j], "se": math.nan,
                             "rse %": math.nan})
    err = est.error_
    conc = fit.model.units.get("concentration", "")
    for comp, unit in (("additive", "" if err.log_scale else conc), ("proportional", "1")):
        sd = getattr(err, f"{comp}_sd")
        if sd:
            s = se_log(f"log {comp} sd")
            rows.append({"kind": "residual", "parameter": f"{comp} sd", "unit": unit,
                         "estimate": sd, "se": sd * s, "rse %": 100 * s})
    return pd.DataFrame(rows, columns=["kind", "parameter", "unit", "estimate", "se", "rse %"])


def _how(fit: Any, method: str, n_burn: int, n_em: int) -> dict[str, Any]:
    """How the -2LL and the SEs were computed, in words and numbers."""
    est = fit.estimator
    has_se = hasattr(est, "se_")
    if method == "saem":
        return {
            "ofv": est.ofv_, "ofv_method": "importance sampling",
            "ofv_detail": f"importance sampling at the SAEM estimates ({est.n_importance} "
                          "draws per subject from a t(5) on its conditional distribution)",
            "ofv_mc_se": est.ofv_se_, "ofv_focei": getattr(est, "ofv_focei_", None),
            "se_method": ("FOCE-I covariance (2 x inverse Hessian of the FOCE-I -2LL) at the "
                          "SAEM estimates") if has_se else "not computed",
            "converged": None, "iterations": {"burn": n_burn, "em": n_em},
            "seed": est.seed}
    return {"ofv": est.ofv_, "ofv_method": "FOCE-I",
            "ofv_detail": "FOCE-I objective at the estimates",
            "se_method": ("FOCE-I covariance (2 x inverse Hessian of the FOCE-I -2LL) at the "
                          "estimates") if has_se else "not computed",
            "converged": bool(est.converged_)}


@app.command("fit")
def fit_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP + " Its values are the start."),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help=DATA_HELP),
    method: str = typer.Option("focei", "--method", metavar="focei|saem",
                               help="Estimation method: FOCE-I, or SAEM (Kuhn & Lavielle; "
                               "-2LL by importance sampling, SEs from FOCE-I at the "
                               "estimates)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of SAEM's chains and of the "
                             "VPC simulations."),
    iterations: str | None = typer.Option(None, "--iterations", metavar="BURN,EM",
                                          help="SAEM iterations: burn-in (step 1) and "
                                          "averaging (step 1/k); default 200,300."),
    estimate: str | None = typer.Option(None, help="Comma-separated parameters to estimate "
                                        "(default: all but F and ALAG)."),
    omega: str = typer.Option("diagonal", help="Omega structure: diagonal or full."),
    out: Path | None = typer.Option(None, "--out", help="Write the estimates with their SEs "
                                    "as CSV (kind, parameter, unit, estimate, se, rse %), or, "
                                    "for a .yaml/.yml name, the fitted model as YAML."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --out / --vpc "
                               "files."),
    vpc_png: Path | None = typer.Option(None, "--vpc", metavar="PLOT.png",
                                        help="Visual predictive check of the fitted model on "
                                        "the data, drawn to this PNG."),
    vpc_replicates: int | None = typer.Option(None, "--vpc-replicates", min=1,
                                              help="Simulated replicates of the design for "
                                              "--vpc (default 200)."),
    pred_corrected: bool = typer.Option(False, "--pred-corrected", help="Prediction-corrected "
                                        "VPC (Bergstrand 2011) for --vpc."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Dask workers for the "
                                "objective evaluations (same estimates as serial)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                         "(tcp://host:8786)."),
) -> None:
    """Population fit (FOCE-I or SAEM): typical values, Omega, residual error, their SEs,
    -2LL and etas; optionally a VPC.

    Exit codes: 0 ok, 1 FOCE-I did not converge (the estimates are printed, flagged),
    2 bad input, 3 the fit failed."""
    from medtwin.core.estimate.saem import SAEM
    from medtwin.models.pk.spec import PopulationModel
    from medtwin.twin.pk_population import fit_population
    from medtwin.twin.pk_vpc import vpc

    method = method.strip().lower()
    if method not in ("focei", "saem"):
        _fail(ValidationError(f"must be focei or saem, got {method!r}", where="--method"))
    if iterations is not None and method != "saem":
        _fail(ValidationError("sets SAEM's iterations; add --method saem", where="--iterations"))
    n_burn, n_em = _iterations(iterations) if iterations is not None else (200, 300)
    if vpc_png is None and (vpc_replicates is not None or pred_corrected):
        _fail(ValidationError("needs --vpc PLOT.png",
                              where="--vpc-replicates" if vpc_replicates else "--pred-corrected"))
    if omega not in ("diagonal", "full"):
        _fail(ValidationError(f"must be diagonal or full, got {omega!r}", where="--omega"))
    _check_out(out, force)
    _check_out(vpc_png, force, "--vpc")
    _require("matplotlib", "`medtwin pk fit --vpc`", vpc_png is not None)
    _require("distributed", "`medtwin pk fit --workers/--scheduler`",
             workers > 1 or scheduler is not None)
    try:
        m, table = _load(model, data)
    except MedtwinError as exc:
        _fail(exc)
    if not isinstance(m, PopulationModel):
        _fail(ValidationError(f"{m.name} is a model-language model; population fits take "
                              "closed-form (common-case) models", where="--model"))
    names = [s.strip() for s in estimate.split(",") if s.strip()] if estimate else None
    saem = SAEM(n_burn=n_burn, n_em=n_em, seed=seed) if method == "saem" else None
    fit = _guard(f"the {'SAEM' if saem else 'FOCE-I'} fit", lambda: fit_population(
        m, table, omega_structure=omega, estimate=names, workers=workers,
        scheduler=scheduler, method=method, saem=saem))
    how = _how(fit, method, n_burn, n_em)
    est_table = estimates_table(fit)
    if out is not None:
        if out.suffix.lower() in (".yaml", ".yml"):
            text = yaml.safe_dump(fit.model.to_dict(), sort_keys=False)
            _write(out, lambda p: p.write_text(text, encoding="utf-8"))
        else:
            _write(out, lambda p: est_table.to_csv(p, index=False))
    check = None
    if vpc_png is not None:
        reps = vpc_replicates or 200
        check = _guard("the VPC", lambda: vpc(fit.model, table, n_replicates=reps,
                                              pred_corrected=pred_corrected, seed=seed,
                                              png=vpc_png))
    fe, re_ = fit.fixed_effects(), fit.random_effects()
    not_converged = how["converged"] is False
    if as_json:
        payload = {"model": m.name, "method": method, "subjects": list(fit.subjects),
                   **how, "estimates": est_table.to_dict(orient="records"),
                   "fixed_effects": fe.to_dict(orient="records"),
                   "random_effects": re_.to_dict(orient="records"),
                   "etas": fit.etas().reset_index().to_dict(orient="records"),
                   "out": None if out is None else str(out)}
        if check is not None:
            payload["vpc"] = {"png": str(check.png), "replicates": vpc_replicates or 200,
                              "pred_corrected": check.pred_corrected,
                              "interval": check.interval, "percentiles": check.percentiles,
                              "table": check.table.to_dict(orient="records")}
        typer.echo(_dumps(payload))
        if not_converged:
            raise typer.Exit(FINDING)
        return
    S = len(fit.subjects)
    if method == "saem":
        typer.echo(f"SAEM on {S} subjects ({n_burn} burn-in + {n_em} iterations, seed {seed}): "
                   f"-2LL {how['ofv']:.4f} (MC se {how['ofv_mc_se']:.3f}), by "
                   f"{how['ofv_detail']}")
        if how["ofv_focei"] is not None:
            typer.echo(f"FOCE-I -2LL at the SAEM estimates: {how['ofv_focei']:.4f}")
    else:
        typer.echo(f"FOCE-I on {S} subjects: -2LL {how['ofv']:.4f} "
                   f"({'converged' if how['converged'] else 'NOT converged'}; the FOCE-I "
                   "objective at the estimates)")
    typer.echo(f"standard errors: {how['se_method']}; typical values by the delta method "
               "from the log scale, variances and sds from their log sds")
    typer.echo(est_table.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if out is not None:
        typer.echo(f"{'fitted model' if out.suffix.lower() in ('.yaml', '.yml') else 'estimates'}"
                   f" -> {out}")
    if check is not None:
        t = check.table
        inside = ", ".join(f"P{p:g} {int(t[f'inside_p{p:g}'].sum())}/{len(t)}"
                           for p in check.percentiles)
        typer.echo(f"{'pc' if check.pred_corrected else ''}VPC ({vpc_replicates or 200} "
                   f"replicates, {len(t)} time bins): observed percentiles inside the "
                   f"simulated {100 * check.interval:g}% PI: {inside} -> {check.png}")
    if not_converged:
        typer.echo("the fit did NOT converge: check the start values and the model before "
                   "using these estimates", err=True)
        raise typer.Exit(FINDING)


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
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the rows, or with --out "
                                 "a summary)."),
) -> None:
    """Simulate the table's regimens: concentrations per subject (and draw) at the times."""
    from medtwin.models.pk.language.model import LanguageModel
    from medtwin.twin.pk_data import prepare

    _check_out(out, force)

    try:
        start, stop, step = (float(x) for x in times.split(":"))
        if not (step > 0 and stop >= start):
            raise ValueError
    except ValueError:
        _fail(ValidationError(f"must be start:stop:step with step > 0, got {times!r}",
                              where="--times"))
    try:
        m, table = _load(model, data)
        if isinstance(m, LanguageModel):
            frame = _simulate_language(m, table, start, stop, step, draws, seed)
            _emit_simulation(frame, out, f"{len(table.subjects)} subjects x "
                             f"{max(draws, 1)} draw(s) x {frame['TIME'].nunique()} times",
                             as_json)
            return
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
    _emit_simulation(frame, out, f"{S} subjects x {k} draw(s) x {grid.size} times", as_json)


def _emit_simulation(frame: pd.DataFrame, out: Path | None, what: str, as_json: bool) -> None:
    if out is not None:
        _write(out, lambda p: frame.to_csv(p, index=False))
    if as_json:
        doc: dict[str, Any] = {"rows": len(frame), "out": str(out) if out else None}
        if out is None:
            doc["records"] = json.loads(frame.to_json(orient="records"))
        typer.echo(json.dumps(doc))
    elif out is None:
        typer.echo(frame.to_csv(index=False), nl=False)
    else:
        typer.echo(f"{what} -> {out}")


def _simulate_language(m: Any, table: Any, start: float, stop: float,
                       step: float, draws: int, seed: int) -> pd.DataFrame:
    """A model-language model's observed quantities (one column each) at the grid, per
    subject and draw of the etas (all zero without draws)."""
    from medtwin.twin.pk_language import predict_at, prepare_language

    grid = np.arange(start, stop + 1e-9 * max(1.0, stop), step)
    k = max(draws, 1)
    rng = np.random.default_rng(seed)
    frames = []
    for sid in table.subjects:
        sub = table.select([sid])
        omega = m.omega_all(prepare_language(m, sub).n_occasions)
        eta = (rng.multivariate_normal(np.zeros(len(omega)), omega, size=k) if draws
               else np.zeros((k, len(omega))))
        cols = {o.name: predict_at(m, sub, grid, eta, o.name).reshape(-1)
                for o in m.observations}
        frames.append(pd.DataFrame({"ID": sid, "DRAW": np.repeat(np.arange(k), grid.size),
                                    "TIME": np.tile(grid, k), **cols}))
    return pd.concat(frames, ignore_index=True)


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
        _fail(ValidationError(f"must be numbers separated by commas, got {intervals!r}",
                              where="--intervals"))
    try:
        m, table = _load(model, data)
        if subject is not None:
            table = table.select([subject])
            if not table.subjects:
                raise NotFoundError(f"no subject {subject!r} in {data}")
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


@app.command("schema")
def schema_cmd(
    closed_form: bool = typer.Option(False, "--closed-form", help="The schema of common-case "
                                     "closed-form files (structure/parameters/omega/error) "
                                     "instead of model-language files (thetas/individual/"
                                     "odes/observations)."),
    out: Path | None = typer.Option(None, "--out", help="Write the schema to this file "
                                    "instead of printing it."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    as_json: bool = typer.Option(False, "--json", help="With --out, print what was written as "
                                 "JSON (the schema itself is always JSON)."),
) -> None:
    """Print the JSON Schema of PK model files, so an editor can check and complete them.

    With the YAML language server, for example, write the schema to a file and start the
    model file with '# yaml-language-server: $schema=pk-model.schema.json'."""
    from medtwin.models.pk.language.schema import model_json_schema
    from medtwin.models.pk.spec_schema import closed_form_json_schema

    _check_out(out, force)
    schema = closed_form_json_schema() if closed_form else model_json_schema()
    text = json.dumps(schema, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    _write(out, lambda p: p.write_text(text, encoding="utf-8"))
    if as_json:
        typer.echo(_dumps({"schema": schema.get("title"), "kind": "closed-form" if closed_form
                           else "language", "out": str(out)}))
    else:
        typer.echo(f"JSON Schema '{schema.get('title')}' -> {out}")


def library_models() -> list[dict[str, str]]:
    """The shipped models: name, title, kind (closed-form or language), source, file."""
    from medtwin.core.yamlio import load_yaml
    from medtwin.models.pk.language.model import is_language_file
    from medtwin.models.pk.spec import library

    rows = []
    for name, path in sorted(library().items()):
        spec = load_yaml(path.read_text(encoding="utf-8"), file=str(path))
        spec = spec if isinstance(spec, dict) else {}
        rows.append({"name": name, "title": str(spec.get("title") or name),
                     "kind": "language" if is_language_file(spec) else "closed-form",
                     "source": str(spec.get("source") or ""), "file": str(path)})
    return rows


@app.command("models")
def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON: name, title, kind, "
                                 "source, file of each model."),
) -> None:
    """List the model library: the names --model accepts, what each is and its citation."""
    rows = _guard("reading the model library", library_models)
    if as_json:
        typer.echo(_dumps(rows))
        return
    width = max((len(r["name"]) for r in rows), default=4)
    typer.echo(f"{'name':<{width}}  {'kind':<11}  title")
    for r in rows:
        typer.echo(f"{r['name']:<{width}}  {r['kind']:<11}  {r['title']}")
        if r["source"]:
            typer.echo(f"{'':<{width}}  {'':<11}  source: {r['source']}")
    typer.echo(f"{len(rows)} models; use a name with --model, or give a YAML file "
               "(`medtwin pk schema` prints its schema)")
