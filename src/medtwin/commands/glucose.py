"""Glucose commands: simulate one UVA/Padova subject; run an in-silico trial on a cohort."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from medtwin.commands._common import FORCE_HELP, JSON_HELP, check_outputs, echo_json, fail
from medtwin.core.errors import MedtwinError

simulate_app = typer.Typer(help="Simulate one virtual patient (a twin) and write its trace.",
                           no_args_is_help=True)


def _plot_trace(df: object, path: Path, title: str) -> None:
    """BG/CGM, meals and insulin of a trace: PNG (matplotlib) or HTML (plotly) by suffix."""
    if path.suffix.lower() in (".html", ".htm"):
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=3, cols=1, shared_xaxes=True,
                            subplot_titles=("glucose [mg/dL]", "CHO [g/min]", "insulin [U/min]"))
        fig.add_scatter(x=df["time"], y=df["BG"], name="BG", row=1, col=1)
        fig.add_scatter(x=df["time"], y=df["CGM"], name="CGM", row=1, col=1)
        fig.add_bar(x=df["time"], y=df["CHO"], name="CHO", row=2, col=1)
        fig.add_scatter(x=df["time"], y=df["insulin"], name="insulin", row=3, col=1)
        fig.update_layout(title=title)
        fig.write_html(str(path), include_plotlyjs=True)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medtwin.models.glucose.constants import TARGET_RANGE

    fig, ax = plt.subplots(3, 1, sharex=True, figsize=(10, 7))
    ax[0].plot(df["time"], df["BG"], label="BG")
    ax[0].plot(df["time"], df["CGM"], label="CGM", alpha=0.7)
    ax[0].axhspan(*TARGET_RANGE, color="green", alpha=0.08)
    ax[0].set_ylabel("glucose [mg/dL]")
    ax[0].legend()
    ax[1].plot(df["time"], df["CHO"])
    ax[1].set_ylabel("CHO [g/min]")
    ax[2].plot(df["time"], df["insulin"])
    ax[2].set_ylabel("insulin [U/min]")
    ax[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@simulate_app.command("glucose")
def simulate_glucose_cmd(
    subject: str = typer.Option("adult#001", help="UVA/Padova subject, e.g. adult#001."),
    meal: list[str] = typer.Option(  # noqa: B008
        ["07:00=50", "12:00=70", "19:00=80"], "--meal", help="Daily meal HH:MM=grams (repeat)."
    ),
    controller: str = typer.Option("basal-bolus", help="Controller: basal-bolus or pid."),
    sensor: str = typer.Option("none", help="CGM: none (noise-free, 1 min), dexcom, ..."),
    pump: str = typer.Option("insulet", help="Pump: insulet, cozmo or none."),
    seed: int = typer.Option(1, help="Sensor-noise seed."),
    days: int = typer.Option(1, help="Days to simulate from midnight."),
    out: Path = typer.Option(Path("trace.csv"), help="Per-minute trace (CSV)."),  # noqa: B008
    plot: Path | None = typer.Option(None, help="Plot of the trace (.png or .html)."),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Simulate one subject (UVA/Padova, simglucose 0.2.11 conventions) and write the trace."""
    from medtwin.devices.scenario import parse_meal, simulate_scenario

    check_outputs(force, out=out, plot=plot)
    try:
        meals = [parse_meal(m) for m in meal]
        df = simulate_scenario(subject, meals, controller=controller, sensor=sensor, pump=pump,
                               seed=seed, days=days)
        df.to_csv(out, index=False)
        if plot is not None:
            _plot_trace(df, plot, f"{subject}, {controller}, sensor {sensor}")
    except (MedtwinError, OSError) as exc:
        fail(exc)
    if as_json:
        echo_json({"subject": subject, "days": days, "controller": controller,
                   "sensor": sensor, "pump": pump, "seed": seed,
                   "bg_mean [mg/dL]": df["BG"].mean(), "bg_min [mg/dL]": df["BG"].min(),
                   "bg_max [mg/dL]": df["BG"].max(), "insulin [U]": df["insulin"].sum(),
                   "cho [g]": df["CHO"].sum(), "out": out, "plot": plot})
        return
    typer.echo(
        f"{subject}: {days} day(s), BG mean {df['BG'].mean():.1f} mg/dL "
        f"(min {df['BG'].min():.1f}, max {df['BG'].max():.1f}), insulin "
        f"{df['insulin'].sum():.1f} U, CHO {df['CHO'].sum():.0f} g -> {out}"
    )

trial_app = typer.Typer(help="In-silico trials: cohort x meals x controller x days -> "
                        "outcomes; cardio scenarios on virtual populations.",
                        no_args_is_help=True)


@trial_app.command("glucose")
def trial_glucose_cmd(
    cohort: str = typer.Option("uva-padova", help="Cohort name."),
    subjects: str | None = typer.Option(None, help="Subject ids (comma-separated) or a "
                                        "pattern, e.g. 'adult#001,adult#002' or 'adult#*'."),
    controller: str = typer.Option("pid", help="Controller name (basal-bolus, pid)."),
    days: float = typer.Option(14.0, help="Days to simulate."),
    seed: int = typer.Option(0, help="Trial seed (meals and sensor noise), >= 0."),
    meal: list[str] = typer.Option(  # noqa: B008
        [], "--meal", help="Fixed daily meal HH:MM=grams (repeat); default: random meals."
    ),
    sensor: str = typer.Option("dexcom", help="CGM (dexcom, guardianrt, navigator) or none."),
    pump: str = typer.Option("insulet", help="Pump (insulet, cozmo) or none."),
    out: Path = typer.Option(Path("metrics.csv"), help="Outcome table (CSV), one row a subject."),  # noqa: B008
    report: Path | None = typer.Option(None, help="Report file (.html or .png)."),  # noqa: B008
    traces: Path | None = typer.Option(None, help="Per-time traces (CSV), optional."),  # noqa: B008
    scheduler: str | None = typer.Option(
        None, help="Dask scheduler address (tcp://host:8786); default: a local cluster; "
        "'serial': no Dask."
    ),
    chunk_size: int | None = typer.Option(None, help="Subjects per chunk."),
    progress: bool = typer.Option(True, help="Progress bar (only on a terminal)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " Includes the outcome "
                                 "table, one record a subject."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Run a glucose in-silico trial and write the outcome table (and a report)."""
    check_outputs(force, out=out, report=report, traces=traces)
    from medtwin.trials.protocol import FixedMeals, RandomMeals
    from medtwin.trials.runner import Trial, load_cohort, run_trial

    if scheduler != "serial" and not logging.getLogger().isEnabledFor(logging.INFO):
        from medtwin.extras import require  # Dask: the trials extra

        require("distributed", "a trial on Dask (--scheduler serial needs none)")
        # (its import sets its loggers to INFO; quiet them after)

        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        chosen = load_cohort(cohort, subjects)
        meals = FixedMeals.parse(meal) if meal else RandomMeals()
        trial = Trial(chosen, controller, days=days, seed=seed, meals=meals,
                      sensor=None if sensor.lower() == "none" else sensor,
                      pump=None if pump.lower() == "none" else pump)
        result = run_trial(trial, chunk_size=chunk_size, scheduler=scheduler, progress=progress)
        result.table.to_csv(out)
        if traces is not None:
            result.traces_frame().to_csv(traces, index=False)
        if report is not None:
            result.write_report(str(report))
    except (MedtwinError, OSError) as exc:
        fail(exc)
    zones = result.table["cvga zone"].value_counts().reindex(list("ABCDE"), fill_value=0)
    if as_json:
        from medtwin.commands._common import records

        echo_json({"subjects": len(result.table), "days": days, "controller": controller,
                   "seed": seed, "mean [mg/dL]": result.table["mean [mg/dL]"].mean(),
                   "time 70-180 [%]": result.table["time 70-180 [%]"].mean(),
                   "cvga": {z: int(c) for z, c in zones.items()}, "out": out,
                   "report": report, "traces": traces,
                   "table": records(result.table, "subject")})
        return
    typer.echo(
        f"{len(result.table)} subjects x {days:g} days: mean glucose "
        f"{result.table['mean [mg/dL]'].mean():.1f} mg/dL, time in 70-180 "
        f"{result.table['time 70-180 [%]'].mean():.1f}%, CVGA "
        + " ".join(f"{z}:{c}" for z, c in zones.items()) + f" -> {out}"
    )
