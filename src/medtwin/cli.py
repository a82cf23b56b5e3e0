"""The ``medtwin`` command line: the edge where settings and the store are built and handed in."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import typer
from tqdm import tqdm

from medtwin import __version__
from medtwin.core.errors import MedtwinError
from medtwin.core.records import KIND_OF
from medtwin.interop.fhir.write import to_bundle
from medtwin.interop.importer import import_paths, iter_fhir_files
from medtwin.store.event_store import EventStore

app = typer.Typer(
    name="medtwin",
    help="medtwin: healthcare digital twins (patients, devices, hospitals) kept in step with data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DB_HELP = "Store URL or SQLite path (default: medtwin.sqlite in the user data directory)."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medtwin {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)


# --- store and FHIR commands (issue 2) ---------------------------------------------------
# @@STORE-COMMANDS@@
def _open_store(db: str | None) -> EventStore:
    from medtwin.security.crypto import load_keyring

    try:
        return EventStore.open(db, keyring=load_keyring())
    except MedtwinError as exc:
        _fail(exc)


def _fail(exc: Exception, code: int = 2) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False)


@app.command("import")
def import_cmd(
    paths: list[Path] = typer.Argument(..., help="FHIR JSON files or folders."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Parallel parser processes."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Import FHIR R4 bundles or resources; print read / stored / duplicates / rejected."""
    store = _open_store(db)
    try:
        files = list(iter_fhir_files(paths))
        with _progress(len(files), "import") as bar:
            summary = import_paths(store, files, workers=workers, progress=bar.update)
    except (MedtwinError, FileNotFoundError) as exc:
        _fail(exc)
    finally:
        store.close()
    typer.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.text())
    if summary.files_refused or summary.rejected:
        raise typer.Exit(1)


@app.command("patients")
def patients_cmd(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List stored patients (no identifying fields)."""
    with _open_store(db) as store:
        df = store.patients()
    if as_json:
        typer.echo(df.to_json(orient="records", indent=2))
    elif df.empty:
        typer.echo("no patients; `medtwin import PATH` or `medtwin demo` adds some")
    else:
        typer.echo(df.to_string(index=False))


@app.command("timeline")
def timeline_cmd(
    patient: str = typer.Argument(..., help="Patient id (see `medtwin patients`)."),
    code: list[str] = typer.Option(None, "--code", help="LOINC (or other) code; repeatable."),
    since: datetime | None = typer.Option(None, "--since", help="ISO time, e.g. 2020-01-01."),
    until: datetime | None = typer.Option(None, "--until", help="ISO time (exclusive)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records."),
) -> None:
    """Show a patient's timeline, filtered by code and time."""
    since, until = (t.replace(tzinfo=UTC) if t and t.tzinfo is None else t
                    for t in (since, until))
    with _open_store(db) as store:
        try:
            if as_json:
                recs = store.timeline(patient, codes=code or None, since=since, until=until)
                typer.echo(json.dumps([{"kind": KIND_OF[type(r)], **r.to_dict()} for r in recs],
                                      indent=2))
                return
            df = store.timeline_frame(patient, codes=code or None, since=since, until=until)
        except MedtwinError as exc:
            _fail(exc)
    typer.echo(df.to_string(index=False) if not df.empty else "no records match")


@app.command("export")
def export_cmd(
    patient: str = typer.Argument(..., help="Patient id (see `medtwin patients`)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    bundle_type: str = typer.Option("collection", "--type", help="collection or transaction."),
    deidentify: bool = typer.Option(False, "--deidentify", help="HIPAA Safe Harbor: drop the "
                                    "identifiers, shift dates per patient (intervals kept)."),
    table: bool = typer.Option(False, "--table", help="With --deidentify: a CSV table."),
) -> None:
    """Write a patient's record as a FHIR R4 Bundle to stdout."""
    from medtwin.core.records import Consent

    if bundle_type not in {"collection", "transaction"}:
        _fail(ValueError("--type must be collection or transaction"))
    with _open_store(db) as store:
        try:
            who = store.patient(patient)
            records = [r for r in store.timeline(patient) if not isinstance(r, Consent)]
            if deidentify:
                from medtwin.security.deid import Deidentifier

                deid = Deidentifier(store.keyring.pseudonym_secret)  # type: ignore[union-attr]
                if table:
                    typer.echo(deid.frame(who, records).to_csv(index=False), nl=False)
                    return
                bundle = deid.bundle(who, records)
            else:
                bundle = to_bundle(who, records, bundle_type=bundle_type)
        except MedtwinError as exc:
            _fail(exc)
    typer.echo(json.dumps(bundle, indent=2))


@app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="Folder to write one FHIR bundle per patient into."),
    patients: int = typer.Option(6, "--patients", min=1, max=10_000),
    days: int = typer.Option(2, "--days", min=1, max=365),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    """Write seeded synthetic patients as FHIR R4 transaction bundles (for demos and tests)."""
    from medtwin.interop.fhir.synthetic import generate_patients, write_bundles

    try:
        paths = write_bundles(generate_patients(patients, seed=seed, days=days), out)
    except MedtwinError as exc:
        _fail(exc)
    typer.echo(f"wrote {len(paths)} bundles to {out}")


@app.command("demo")
def demo_cmd(
    db: str | None = typer.Option(None, "--db", help="Store for the demo (default: a fresh "
                                  "medtwin-demo.sqlite in the user data directory)."),
    patients: int = typer.Option(6, "--patients", min=1, max=200),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    """Create a fresh store, generate synthetic patients, import them and summarise."""
    from medtwin.demo import run_demo

    try:
        report = run_demo(db, n_patients=patients, seed=seed)
    except MedtwinError as exc:
        _fail(exc)
    typer.echo(report)


# --- simulation commands (issue 3) -------------------------------------------------------
# @@SIMULATION-COMMANDS@@
simulate_app = typer.Typer(help="Simulate one virtual patient (a twin) and write its trace.",
                           no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")


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

    fig, ax = plt.subplots(3, 1, sharex=True, figsize=(10, 7))
    ax[0].plot(df["time"], df["BG"], label="BG")
    ax[0].plot(df["time"], df["CGM"], label="CGM", alpha=0.7)
    ax[0].axhspan(70, 180, color="green", alpha=0.08)
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
) -> None:
    """Simulate one subject (UVA/Padova, simglucose 0.2.11 conventions) and write the trace."""
    from medtwin.devices.scenario import parse_meal, simulate_scenario

    try:
        meals = [parse_meal(m) for m in meal]
        df = simulate_scenario(subject, meals, controller=controller, sensor=sensor, pump=pump,
                               seed=seed, days=days)
        df.to_csv(out, index=False)
        if plot is not None:
            _plot_trace(df, plot, f"{subject}, {controller}, sensor {sensor}")
    except (MedtwinError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{subject}: {days} day(s), BG mean {df['BG'].mean():.1f} mg/dL "
        f"(min {df['BG'].min():.1f}, max {df['BG'].max():.1f}), insulin "
        f"{df['insulin'].sum():.1f} U, CHO {df['CHO'].sum():.0f} g -> {out}"
    )

trial_app = typer.Typer(help="In-silico trials: cohort x meals x controller x days -> outcomes.",
                        no_args_is_help=True)
app.add_typer(trial_app, name="trial")


@trial_app.command("glucose")
def trial_glucose_cmd(
    cohort: str = typer.Option("uva-padova", help="Cohort name."),
    subjects: str | None = typer.Option(None, help="Subject ids or a pattern, e.g. 'adult#*'."),
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
) -> None:
    """Run a glucose in-silico trial and write the outcome table (and a report)."""
    from medtwin.trials.protocol import FixedMeals, RandomMeals
    from medtwin.trials.runner import Trial, load_cohort, run_trial

    if not logging.getLogger().isEnabledFor(logging.INFO):
        import distributed  # noqa: F401  (its import sets its loggers to INFO; quiet them after)

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
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    zones = result.table["cvga zone"].value_counts().reindex(list("ABCDE"), fill_value=0)
    typer.echo(
        f"{len(result.table)} subjects x {days:g} days: mean glucose "
        f"{result.table['mean [mg/dL]'].mean():.1f} mg/dL, time in 70-180 "
        f"{result.table['time 70-180 [%]'].mean():.1f}%, CVGA "
        + " ".join(f"{z}:{c}" for z, c in zones.items()) + f" -> {out}"
    )



# --- command groups mounted from medtwin.commands (one module per area) ------------------
# each line: from medtwin.commands.<area> import app as _<area>_app; app.add_typer(...)
# @@MOUNT-COMMANDS@@
from medtwin.commands.ops import app as _ops_app; app.add_typer(_ops_app, name="ops")  # noqa: E402, E702, I001
from medtwin.commands.pk import app as _pk_app; app.add_typer(_pk_app, name="pk")  # noqa: E402, E702, I001
from medtwin.commands.pk import dose_cmd as _dose_cmd; app.command("dose")(_dose_cmd)  # noqa: E402, E702, I001
from medtwin.commands.security import user_app as _user_app; app.add_typer(_user_app, name="user")  # noqa: E402,E501,E702,I001
from medtwin.commands.security import key_app as _key_app; app.add_typer(_key_app, name="key")  # noqa: E402,E501,E702,I001
from medtwin.commands.security import audit_app as _audit_app; app.add_typer(_audit_app, name="audit")  # noqa: E402,E501,E702,I001
from medtwin.commands.security import keys_app as _keys_app; app.add_typer(_keys_app, name="keys")  # noqa: E402,E501,E702,I001
from medtwin.commands.security import serve_app as _serve_app; app.add_typer(_serve_app, name="serve")  # noqa: E402,E501,E702,I001
from medtwin.commands.monitor import app as _monitor_app  # noqa: E402

app.registered_commands += _monitor_app.registered_commands
from medtwin.commands.live import app as _live_app  # noqa: E402

app.registered_commands += _live_app.registered_commands


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
