"""`medtwin ops`: the hospital operations twin (run, calibrate, optimise, forecast)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from medtwin.core.errors import MedtwinError

app = typer.Typer(help="Hospital operations twin: patient flow (SimPy), calibration from the "
                  "store, staffing optimisation, live occupancy forecast.",
                  no_args_is_help=True)

MODEL_HELP = "Model file (YAML) or a shipped model name (nelson, ed_inpatient, mm1, mm2, mm3)."
log = logging.getLogger(__name__)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _model(name: str):  # noqa: ANN202 - returns medtwin.ops.schema.Model
    from medtwin.ops.loader import load_model

    try:
        return load_model(name)
    except MedtwinError as exc:
        _fail(exc)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@app.command("run")
def run_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    reps: int | None = typer.Option(None, "--reps", min=1, help="Replications (default: "
                                    "the model's)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed."),
    scenario: list[Path] = typer.Option([], "--scenario", help="Scenario file (repeatable): "
                                        "run it instead of the base, or compare with --compare."),
    compare: bool = typer.Option(False, "--compare", help="Also run the base and print paired "
                                 "differences (common random numbers)."),
    out: Path | None = typer.Option(None, "--out", help="KPIs per replication (CSV)."),
    summary_out: Path | None = typer.Option(None, "--summary", help="KPI summary (CSV)."),
    report: Path | None = typer.Option(None, "--report", help="Self-contained HTML report."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Dask workers."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                         "(tcp://host:8786); default with -j > 1: a local "
                                         "cluster of that many workers."),
) -> None:
    """Run replications and print KPIs with 95% confidence intervals."""
    from medtwin.ops.runner import run_replications
    from medtwin.ops.scenarios import compare as compare_scenarios
    from medtwin.ops.scenarios import load_scenario

    base = _model(model)
    try:
        scenarios = [load_scenario(p) for p in scenario]
        if compare and scenarios:
            diff = compare_scenarios(base, scenarios, reps or base.replications, seed,
                                     workers=workers, scheduler=scheduler)
            typer.echo(diff.round(4).to_string(index=False))
            if out:
                diff.to_csv(out, index=False)
            return
        m = base
        for sc in scenarios:
            m = sc.apply(m)
        res = run_replications(m, reps, seed, workers=workers, progress=True,
                               scheduler=scheduler)
    except (MedtwinError, OSError) as exc:
        _fail(exc)
    s = res.summary()
    if out:
        res.per_rep.to_csv(out, index=False)
    if summary_out:
        s.to_csv(summary_out)
    if report:
        from medtwin.ops.report import write_report  # plotly: the plot extra

        write_report(res, report)
    shown = s[s.index.str.startswith(("arrivals", "throughput", "lwbs", "time_in_system",
                                      "p_within", "wait:", "util:"))]
    typer.echo(f"{m.name}: {len(res.per_rep)} replications, seed {seed}")
    for k, r in shown.iterrows():
        typer.echo(f"  {k:<36} {_fmt(r['mean']):>10}  95% CI [{_fmt(r.ci_low)}, "
                   f"{_fmt(r.ci_high)}]")


@app.command("calibrate")
def calibrate_cmd(
    db: str = typer.Option(..., "--db", help="Store URL or SQLite path."),
    out: Path = typer.Option(..., "--out", help="Model file to write (YAML)."),
    klass: str = typer.Option("EMER", "--class", help="Encounter class (EMER, IMP, AMB...)."),
    name: str = typer.Option("calibrated", "--name", help="Model name."),
    capacity: int | None = typer.Option(None, "--capacity", min=1,
                                        help="Beds/places (default: from Little's law)."),
) -> None:
    """Estimate arrival rates and a LOS distribution from stored encounters; write a model."""
    from medtwin.ops.calibrate import calibrate
    from medtwin.store.event_store import EventStore

    try:
        with EventStore.open(db, create=False) as store:
            cal = calibrate(store, klass=klass)
        cal.write_model(out, name=name, capacity=capacity)
    except (MedtwinError, OSError) as exc:
        _fail(exc)
    typer.echo(f"{cal.n_arrivals} encounters ({cal.n_finished} finished) over {cal.days:g} "
               f"days; {sum(cal.rates_per_hour):.1f} arrivals/day")
    typer.echo(cal.fit_table().round(4).to_string())
    typer.echo(f"best LOS fit: {cal.best.kind} (lowest AIC) -> {out}")


def _parse_vary(items: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for it in items:
        try:
            name, rng = it.split("=")
            lo, hi = (int(v) for v in rng.split(":"))
        except ValueError:
            _fail(ValueError(f"--vary {it!r}: write RESOURCE=LOW:HIGH, e.g. exam_rooms=2:5"))
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
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Dask workers."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                         "(tcp://host:8786); default with -j > 1: a local "
                                         "cluster of that many workers."),
) -> None:
    """Find the cheapest resource mix meeting a service target (with its confidence)."""
    from medtwin.ops.optimise import optimise

    m = _model(model)
    try:
        table = optimise(m, target, _parse_vary(vary) or None, reps=reps, seed=seed,
                         confidence=confidence, workers=workers, scheduler=scheduler)
    except MedtwinError as exc:
        _fail(exc)
    if out:
        table.to_csv(out, index=False)
    typer.echo(f"target {table.attrs['target']} with confidence >= {confidence:g} "
               f"({reps} replications per candidate); cost/target trade-off:")
    typer.echo(table.round(4).to_string(index=False))
    best = table[table["best"]]
    if best.empty:
        typer.echo("no candidate meets the target; widen --vary")
        raise typer.Exit(1)
    b = best.iloc[0]
    typer.echo(f"cheapest meeting the target: cost/day {b.cost_per_day:.0f}, {b.kpi_mean:.4g} "
               f"(confidence {b.confidence:.3f})")


@app.command("forecast")
def forecast_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    db: str = typer.Option(..., "--db", help="Store URL or SQLite path."),
    hours: int = typer.Option(48, "--hours", min=1, max=24 * 14),
    reps: int = typer.Option(50, "--reps", min=2),
    seed: int = typer.Option(0, "--seed", min=0),
    klass: str | None = typer.Option(None, "--class", help="Encounter class of the census "
                                     "(default: the model's census.encounter_class)."),
    activity: str | None = typer.Option(None, "--activity", help="Census activity."),
    out: Path | None = typer.Option(None, "--out", help="Hourly forecast (CSV)."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Dask workers."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                         "(tcp://host:8786); default with -j > 1: a local "
                                         "cluster of that many workers."),
) -> None:
    """Forecast occupancy and waits hour by hour from the current census in the store."""
    from medtwin.ops.forecast import census_from_store, forecast
    from medtwin.store.event_store import EventStore

    m = _model(model)
    try:
        with EventStore.open(db, create=False) as store:
            census = census_from_store(store, m, klass=klass)
        fc = forecast(m, census, hours=hours, reps=reps, seed=seed, activity=activity,
                      workers=workers, progress=sys.stderr.isatty(), scheduler=scheduler)
    except (MedtwinError, OSError) as exc:
        _fail(exc)
    if out:
        fc.to_csv(out, index=False)
    typer.echo(f"census at {fc.attrs['cut_off']}: {fc.attrs['census']} in "
               f"'{fc.attrs['activity']}' (capacity {fc.attrs['capacity']}); {reps} "
               "replications; 95% prediction intervals")
    cols = ["hour_ahead", "time", "occupancy_mean", "occupancy_lo", "occupancy_hi",
            "queue_mean", "wait_mean", "wait_lo", "wait_hi"]
    typer.echo(fc[cols].round({c: 2 for c in cols[2:]}).to_string(index=False))
