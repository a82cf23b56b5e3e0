"""`medtwin ops`: the hospital operations twin (run, calibrate, optimise, forecast).

Exit codes: 0 ok, 1 findings (no staffing meets the target), 2 usage (a bad option, model or
scenario file, an output file that exists without ``--force``), 3 runtime error (the store or
a file could not be read or written, a simulation failed). ``--json`` prints the results as
JSON on stdout; the store defaults to ``$MEDTWIN_DB`` like every other command."""

from __future__ import annotations

import logging
import sys
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medtwin.commands._common import DB_HELP, FORCE_HELP, JSON_HELP
from medtwin.commands._common import check_outputs as _outputs
from medtwin.commands._common import echo_json as _json
from medtwin.commands._common import fail as _fail
from medtwin.commands._common import records as _records
from medtwin.core.errors import MedtwinError, ValidationError

if TYPE_CHECKING:
    from medtwin.ops.schema import Model

app = typer.Typer(help="Hospital operations twin: patient flow (SimPy), calibration from the "
                  "store, staffing optimisation, live occupancy forecast.",
                  no_args_is_help=True)

MODEL_HELP = "Model file (YAML) or a shipped model name (nelson, ed_inpatient, mm1, mm2, mm3)."
NEEDS_TWO = "95% CI needs >= 2 replications"
log = logging.getLogger(__name__)


def _model(name: str) -> Model:
    from medtwin.ops.loader import load_model

    try:
        return load_model(name)
    except MedtwinError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(exc, 3)


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.4g}"


def _overrides(base: Model, resource: list[str], warm_up: float | None,
               length: float | None) -> Model:
    """The model with --resource NAME=COUNT, --warm-up and --length applied."""
    from medtwin.ops.loader import with_changes

    changes: dict[str, Any] = {}
    for item in resource:
        name, _, count = item.partition("=")
        name = name.strip()
        try:
            n = int(count)
        except ValueError:
            _fail(ValidationError(f"{item!r}: write NAME=COUNT, e.g. exam_rooms=4",
                                  where="--resource"))
        if name not in base.resources:
            close = get_close_matches(name, list(base.resources), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            _fail(ValidationError(f"the model has no resource '{name}'{hint}; use one of "
                                  f"{sorted(base.resources)}", where="--resource"))
        if base.resources[name].roster is not None:
            _fail(ValidationError(f"'{name}' has a roster (staff on duty by hour); change the "
                                  "roster in a scenario file", where="--resource"))
        if n < 1:
            _fail(ValidationError(f"{item!r}: a count must be at least 1", where="--resource"))
        changes.setdefault("resources", {})[name] = {"capacity": n}
    run = {k: v for k, v in (("warm_up", warm_up), ("length", length)) if v is not None}
    if run:
        changes["run"] = run
    if not changes:
        return base
    try:
        return with_changes(base, changes)
    except MedtwinError as exc:
        _fail(exc)


def _ci_text(r: Any) -> str:
    if r["n"] < 2:
        return f"({NEEDS_TWO})"
    return f"95% CI [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"


SHOWN = ("arrivals", "throughput", "lwbs", "time_in_system", "p_within", "wait:", "util:")


@app.command("run")
def run_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    reps: int | None = typer.Option(None, "--reps", min=1, help="Replications (default: "
                                    "the model's; a confidence interval needs >= 2)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed."),
    scenario: list[Path] = typer.Option([], "--scenario", help="Scenario file (repeatable): "
                                        "run it instead of the base, or compare with --compare."),
    compare: bool = typer.Option(False, "--compare", help="Also run the base and compare each "
                                 "scenario with it side by side, with paired differences "
                                 "(common random numbers)."),
    resource: list[str] = typer.Option([], "--resource", help="NAME=COUNT (repeatable): units "
                                       "of a resource, e.g. exam_rooms=4."),
    warm_up: float | None = typer.Option(None, "--warm-up", min=0, help="Warm-up, in the "
                                         "model's time unit (default: the model's)."),
    length: float | None = typer.Option(None, "--length", min=0, help="Results-collection "
                                        "length, in the model's time unit (default: the "
                                        "model's)."),
    out: Path | None = typer.Option(None, "--out", help="KPIs per replication (CSV; a "
                                    "'scenario' column names the run)."),
    summary_out: Path | None = typer.Option(None, "--summary", help="KPI summary (CSV)."),
    hourly_out: Path | None = typer.Option(None, "--hourly", help="Results by hour of day "
                                           "(CSV: mean and 95% CI half-width)."),
    report: Path | None = typer.Option(None, "--report", help="Self-contained HTML report."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Dask workers."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                         "(tcp://host:8786); default with -j > 1: a local "
                                         "cluster of that many workers."),
) -> None:
    """Run replications and print KPIs with 95% confidence intervals."""
    import pandas as pd

    from medtwin.ops.runner import run_replications
    from medtwin.ops.scenarios import load_scenario

    if length is not None and length <= 0:
        _fail(ValidationError("must be > 0", where="--length"))
    if compare and not scenario:
        _fail(ValidationError("--compare needs at least one --scenario file", where="--compare"))
    _outputs(force, out=out, summary=summary_out, hourly=hourly_out, report=report)
    base = _overrides(_model(model), resource, warm_up, length)
    try:
        scenarios = [load_scenario(p) for p in scenario]
    except MedtwinError as exc:
        _fail(exc)
    if compare:
        _compare(base, scenarios, reps or base.replications, seed, out=out,
                 summary_out=summary_out, hourly_out=hourly_out, report=report,
                 as_json=as_json, workers=workers, scheduler=scheduler)
        return
    m = base
    try:
        for sc in scenarios:
            m = sc.apply(m)
    except MedtwinError as exc:
        _fail(exc)
    label = "+".join(sc.name for sc in scenarios) or "base"
    try:
        res = run_replications(m, reps, seed, workers=workers, progress=not as_json,
                               scheduler=scheduler)
    except MedtwinError as exc:
        _fail(exc, 2 if isinstance(exc, ValidationError) else 3)
    s = res.summary()
    try:
        if out:
            res.per_rep.assign(scenario=label)[["scenario", *res.per_rep.columns]].to_csv(
                out, index=False)
        if summary_out:
            s.to_csv(summary_out)
        by_hour = res.by_hour_of_day() if not res.hourly.empty else pd.DataFrame()
        if hourly_out:
            by_hour.to_csv(hourly_out)
        if report:
            from medtwin.ops.report import write_report  # plotly: the plot extra

            title = f"medtwin ops: {m.name}" + (f" (scenario {label})" if scenarios else "")
            write_report(res, report, title=title)
    except OSError as exc:
        _fail(exc, 3)
    n = len(res.per_rep)
    if as_json:
        _json({"model": m.name, "scenario": label, "reps": n, "seed": seed,
               "warm_up": m.warm_up, "length": m.length, "time_unit": m.time_unit,
               "ci_note": s.attrs["ci_note"], "summary": _records(s, "kpi"),
               "by_hour_of_day": _records(by_hour, "hour_of_day")})
        return
    shown = s[s.index.str.startswith(SHOWN)]
    scen = f", scenario {label}" if scenarios else ""
    typer.echo(f"{m.name}{scen}: {n} replications, seed {seed}; warm-up {m.warm_up:g}, "
               f"length {m.length:g} {m.time_unit}")
    for k, r in shown.iterrows():
        typer.echo(f"  {k:<36} {_fmt(r['mean']):>10}  {_ci_text(r)}")
    typer.echo(f"  ({s.attrs['ci_note']})" if n > 1 else
               "  (one replication: a confidence interval needs >= 2; use --reps 2 or more)")


def _compare(base: Model, scenarios: list, reps: int, seed: int, *, out: Path | None,
             summary_out: Path | None, hourly_out: Path | None, report: Path | None,
             as_json: bool, workers: int, scheduler: str | None) -> None:
    import pandas as pd

    from medtwin.ops.scenarios import compare_runs, run_scenarios, side_by_side

    try:
        runs = run_scenarios(base, scenarios, reps, seed, workers=workers, scheduler=scheduler,
                             hourly=bool(hourly_out or report or as_json))
    except MedtwinError as exc:
        _fail(exc, 2 if isinstance(exc, ValidationError) else 3)
    diff = compare_runs(runs)
    table = side_by_side(runs)
    names = list(runs)
    summaries = {n: r.summary() for n, r in runs.items()}
    note = summaries["base"].attrs["ci_note"]
    try:
        if out:
            pd.concat([r.per_rep.assign(scenario=n)[["scenario", *r.per_rep.columns]]
                       for n, r in runs.items()], ignore_index=True).to_csv(out, index=False)
        if summary_out:
            long = pd.concat([s.reset_index().assign(scenario=n) for n, s in summaries.items()],
                             ignore_index=True)
            d = diff[["scenario", "kpi", "difference", "ci_low", "ci_high"]].rename(
                columns={"ci_low": "difference_ci_low", "ci_high": "difference_ci_high"})
            long = long.merge(d, on=["scenario", "kpi"], how="left")
            long[["scenario", *[c for c in long.columns if c != "scenario"]]].to_csv(
                summary_out, index=False)
        by_hour = {n: r.by_hour_of_day() for n, r in runs.items() if not r.hourly.empty}
        if hourly_out:
            pd.concat([h.reset_index().assign(scenario=n) for n, h in by_hour.items()],
                      ignore_index=True).to_csv(hourly_out, index=False)
        if report:
            from medtwin.ops.report import write_report

            write_report(runs["base"], report,
                         title=f"medtwin ops: {base.name}, base vs {', '.join(names[1:])}",
                         tables={"Side by side (mean and 95% CI)": table,
                                 "Paired differences from the base (95% CI)": diff})
    except OSError as exc:
        _fail(exc, 3)
    if as_json:
        _json({"model": base.name, "scenarios": names, "reps": reps, "seed": seed,
               "ci_note": note,
               "summary": {n: _records(s, "kpi") for n, s in summaries.items()},
               "differences": _records(diff),
               "by_hour_of_day": {n: _records(h, "hour_of_day") for n, h in by_hour.items()}})
        return
    typer.echo(f"{base.name}: base vs scenario {', '.join(names[1:])}: {reps} replications "
               f"each, seed {seed}, common random numbers")
    cells = pd.DataFrame(index=table.index)
    for n in names:
        cells[n] = [f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]" if reps > 1 else _fmt(m)
                    for m, lo, hi in zip(table[n], table[f"{n} ci_low"], table[f"{n} ci_high"],
                                         strict=True)]
    typer.echo("mean [95% CI] side by side:" if reps > 1 else
               f"means side by side ({NEEDS_TWO}):")
    typer.echo(cells.to_string())
    typer.echo("paired difference from the base (scenario - base)"
               + (" with its 95% CI:" if reps > 1 else ":"))
    d = diff[["scenario", "kpi", "base", "value", "difference",
              *(["ci_low", "ci_high"] if reps > 1 else [])]]
    typer.echo(d.round(4).to_string(index=False))
    typer.echo(f"({note})" if reps > 1 else f"({NEEDS_TWO}; use --reps 2 or more)")


@app.command("calibrate")
def calibrate_cmd(
    out: Path = typer.Option(..., "--out", help="Model file to write (YAML)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    klass: str = typer.Option("EMER", "--class", help="Encounter class (EMER, IMP, AMB...)."),
    name: str = typer.Option("calibrated", "--name", help="Model name."),
    capacity: int | None = typer.Option(None, "--capacity", min=1,
                                        help="Beds/places (default: from Little's law)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Estimate arrival rates and a LOS distribution from stored encounters; write a model."""
    from medtwin.commands._common import open_store
    from medtwin.ops.calibrate import calibrate

    _outputs(force, out=out)
    try:
        with open_store(db) as store:
            cal = calibrate(store, klass=klass)
        cal.write_model(out, name=name, capacity=capacity)
    except ValidationError as exc:
        _fail(exc, 2)
    except (MedtwinError, OSError) as exc:
        _fail(exc, 3)
    fits = cal.fit_table()
    if as_json:
        _json({"model": str(out), "encounters": cal.n_arrivals, "finished": cal.n_finished,
               "days": cal.days, "arrivals_per_day": sum(cal.rates_per_hour),
               "rates_per_hour": list(cal.rates_per_hour), "best_fit": cal.best.kind,
               "fits": _records(fits, "fit")})
        return
    typer.echo(f"{cal.n_arrivals} encounters ({cal.n_finished} finished) over {cal.days:g} "
               f"days; {sum(cal.rates_per_hour):.1f} arrivals/day")
    typer.echo(fits.round(4).to_string())
    typer.echo(f"best LOS fit: {cal.best.kind} (lowest AIC) -> {out}")


def _parse_vary(items: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for it in items:
        try:
            name, rng = it.split("=")
            lo, hi = (int(v) for v in rng.split(":"))
        except ValueError:
            _fail(ValidationError(f"{it!r}: write RESOURCE=LOW:HIGH, e.g. exam_rooms=2:5",
                                  where="--vary"))
        out[name] = (lo, hi)
    return out


@app.command("optimise")
def optimise_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    target: str = typer.Option(..., "--target", help="e.g. 'p_within_4h>=0.95', "
                               "'wait:triage<=30'."),
    vary: list[str] = typer.Option([], "--vary", help="RESOURCE=LOW:HIGH (repeatable); for a "
                                   "rostered resource, staff added to every hour."),
    reps: int = typer.Option(10, "--reps", min=2),
    seed: int = typer.Option(0, "--seed", min=0),
    confidence: float = typer.Option(0.95, "--confidence", min=0.5, max=0.9999),
    out: Path | None = typer.Option(None, "--out", help="Trade-off table (CSV)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Dask workers."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                         "(tcp://host:8786); default with -j > 1: a local "
                                         "cluster of that many workers."),
) -> None:
    """Find the cheapest resource mix meeting a service target (with its confidence).
    Exits 1 when no candidate meets the target."""
    from medtwin.ops.optimise import optimise

    _outputs(force, out=out)
    m = _model(model)
    try:
        table = optimise(m, target, _parse_vary(vary) or None, reps=reps, seed=seed,
                         confidence=confidence, workers=workers, scheduler=scheduler)
    except ValidationError as exc:
        _fail(exc, 2)
    except MedtwinError as exc:
        _fail(exc, 3)
    if out:
        try:
            table.to_csv(out, index=False)
        except OSError as exc:
            _fail(exc, 3)
    best = table[table["best"]]
    if as_json:
        _json({"model": m.name, "target": table.attrs["target"], "confidence": confidence,
               "reps": reps, "seed": seed, "met": not best.empty,
               "best": _records(best)[0] if not best.empty else None,
               "table": _records(table)})
        if best.empty:
            raise typer.Exit(1)
        return
    typer.echo(f"target {table.attrs['target']} with confidence >= {confidence:g} "
               f"({reps} replications per candidate); cost/target trade-off:")
    typer.echo(table.round(4).to_string(index=False))
    if best.empty:
        typer.echo("no candidate meets the target; widen --vary")
        raise typer.Exit(1)
    b = best.iloc[0]
    typer.echo(f"cheapest meeting the target: cost/day {b.cost_per_day:.0f}, {b.kpi_mean:.4g} "
               f"(confidence {b.confidence:.3f})")


@app.command("forecast")
def forecast_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    hours: int = typer.Option(48, "--hours", min=1, max=24 * 14),
    reps: int = typer.Option(50, "--reps", min=2),
    seed: int = typer.Option(0, "--seed", min=0),
    klass: str | None = typer.Option(None, "--class", help="Encounter class of the census "
                                     "(default: the model's census.encounter_class)."),
    activity: str | None = typer.Option(None, "--activity", help="Census activity."),
    out: Path | None = typer.Option(None, "--out", help="Hourly forecast (CSV)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Dask workers."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                         "(tcp://host:8786); default with -j > 1: a local "
                                         "cluster of that many workers."),
) -> None:
    """Forecast occupancy and waits hour by hour from the current census in the store."""
    from medtwin.commands._common import open_store
    from medtwin.ops.forecast import census_from_store, forecast

    _outputs(force, out=out)
    m = _model(model)
    try:
        with open_store(db) as store:
            census = census_from_store(store, m, klass=klass)
        fc = forecast(m, census, hours=hours, reps=reps, seed=seed, activity=activity,
                      workers=workers, progress=sys.stderr.isatty() and not as_json,
                      scheduler=scheduler)
        if out:
            fc.to_csv(out, index=False)
    except ValidationError as exc:
        _fail(exc, 2)
    except (MedtwinError, OSError) as exc:
        _fail(exc, 3)
    if as_json:
        _json({"model": m.name, "reps": reps, "seed": seed,
               **fc.attrs,
               "hours": _records(fc)})
        return
    typer.echo(f"census at {fc.attrs['cut_off']}: {fc.attrs['census']} in "
               f"'{fc.attrs['activity']}' (capacity {fc.attrs['capacity']}); {reps} "
               "replications; 95% prediction intervals")
    cols = ["hour_ahead", "time", "occupancy_mean", "occupancy_lo", "occupancy_hi",
            "queue_mean", "wait_mean", "wait_lo", "wait_hi"]
    typer.echo(fc[cols].round({c: 2 for c in cols[2:]}).to_string(index=False))
