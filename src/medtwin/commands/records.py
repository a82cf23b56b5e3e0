"""Records commands: import FHIR, list patients, read a timeline, export, synthesise, demo."""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime
from pathlib import Path

import typer

from medtwin.commands._common import (
    DB_HELP,
    JSON_HELP,
    USAGE,
    echo_json,
    fail,
    open_store,
    progress,
    usage,
)
from medtwin.core.errors import MedtwinError
from medtwin.core.records import KIND_OF
from medtwin.interop.importer import auto_workers, import_paths, iter_fhir_files, warm_up

app = typer.Typer(add_completion=False)


@app.command("import")
def import_cmd(
    paths: list[Path] = typer.Argument(..., help="FHIR JSON files or folders."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    workers: int | None = typer.Option(
        None, "--workers", "-j", min=1,
        help="Parallel parser processes (default: one per core for a large import, else 1)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Import FHIR R4 bundles or resources; print read / stored / duplicates / rejected."""
    try:  # the files first: a mistyped path creates no store
        files = list(iter_fhir_files(paths))
    except (MedtwinError, FileNotFoundError) as exc:
        fail(exc, USAGE)  # a path the user gave
    store = open_store(db, create=True)
    try:
        jobs = workers or auto_workers(files)
        warm_up(unit_registry=False)  # the model classes, before forking and freezing:
        gc.freeze()  # what is loaded now lives to the end: keep the GC from rescanning it
        with progress(len(files), "import") as bar:
            summary = import_paths(store, files, workers=jobs, progress=bar.update)
    except (MedtwinError, FileNotFoundError) as exc:
        fail(exc)
    finally:
        store.close()
    typer.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.text())
    if summary.files_refused or summary.rejected:
        raise typer.Exit(1)


@app.command("patients")
def patients_cmd(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List stored patients (no identifying fields)."""
    with open_store(db) as store:
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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " (the records)"),
) -> None:
    """Show a patient's timeline, filtered by code and time."""
    since, until = (t.replace(tzinfo=UTC) if t and t.tzinfo is None else t
                    for t in (since, until))
    with open_store(db) as store:
        try:
            if as_json:
                recs = store.timeline(patient, codes=code or None, since=since, until=until)
                typer.echo(json.dumps([{"kind": KIND_OF[type(r)], **r.to_dict()} for r in recs],
                                      indent=2))
                return
            df = store.timeline_frame(patient, codes=code or None, since=since, until=until,
                                      include_flagged=True)  # shown, with their flag
        except MedtwinError as exc:
            fail(exc)
    typer.echo(df.to_string(index=False) if not df.empty else "no records match")
    if not df.empty and df["quality"].notna().any():
        typer.echo("quality: readings flagged future-dated are quarantined (kept as evidence, "
                   "never used as the latest value nor scored)", err=True)


@app.command("export")
def export_cmd(
    patient: str = typer.Argument(..., help="Patient id (see `medtwin patients`)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    bundle_type: str = typer.Option("collection", "--type", help="collection or transaction."),
    deidentify: bool = typer.Option(False, "--deidentify", help="HIPAA Safe Harbor (45 CFR "
                                    "164.514(b)(2)): no identifiers, no free text, dates cut "
                                    "to the year, ages over 89 grouped."),
    limited: bool = typer.Option(False, "--limited-data-set", help="Instead of Safe Harbor: "
                                 "a HIPAA limited data set (45 CFR 164.514(e)): direct "
                                 "identifiers and free text removed, dates shifted per "
                                 "patient. Still PHI: only under a data use agreement."),
    table: bool = typer.Option(False, "--table", help="With --deidentify or "
                               "--limited-data-set: a CSV table."),
) -> None:
    """Write a patient's record as a FHIR R4 Bundle to stdout."""
    from medtwin.core.records import Consent

    if bundle_type not in {"collection", "transaction"}:
        usage("--type must be collection or transaction")
    if deidentify and limited:
        usage("--deidentify (Safe Harbor) and --limited-data-set are two different exports; "
              "give one of them")
    if table and not (deidentify or limited):
        usage("--table needs --deidentify or --limited-data-set")
    with open_store(db) as store:
        try:
            who = store.patient(patient)
            records = [r for r in store.timeline(patient) if not isinstance(r, Consent)]
            if deidentify or limited:
                from medtwin.security.deid import Deidentifier, DeidMode

                mode = DeidMode.LIMITED if limited else DeidMode.SAFE_HARBOR
                deid = Deidentifier(store.keyring.pseudonym_secret)  # type: ignore[union-attr]
                if mode is DeidMode.LIMITED:
                    typer.echo(f"medtwin: {mode.notice}", err=True)
                if table:
                    typer.echo(deid.frame(who, records, mode).to_csv(index=False), nl=False)
                    return
                bundle = deid.bundle(who, records, mode)
            else:
                from medtwin.interop.fhir.repository import FhirRepository, export_patient

                bundle = export_patient(FhirRepository(store), patient,
                                        bundle_type=bundle_type)
        except MedtwinError as exc:
            fail(exc)
    typer.echo(json.dumps(bundle, indent=2))


@app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="Folder to write one FHIR bundle per patient into."),
    patients: int = typer.Option(6, "--patients", min=1, max=10_000),
    days: int = typer.Option(2, "--days", min=1, max=365),
    seed: int = typer.Option(0, "--seed", min=0),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help="Write into a folder that already "
                               "holds JSON files (files of the same patients are replaced)."),
) -> None:
    """Write seeded synthetic patients as FHIR R4 transaction bundles (for demos and tests)."""
    from medtwin.interop.fhir.synthetic import generate_patients, write_bundles

    if out.exists() and not out.is_dir():
        usage(f"{out} is a file; give a folder", "OUT")
    if not force and out.is_dir() and any(out.glob("*.json")):
        usage(f"{out} already holds JSON files; pass --force to write into it (bundles of "
              "the same patients are replaced), or give another folder", "OUT")
    try:
        paths = write_bundles(generate_patients(patients, seed=seed, days=days), out)
    except (MedtwinError, OSError) as exc:
        fail(exc)
    if as_json:
        echo_json({"folder": out, "bundles": len(paths), "files": paths})
        return
    typer.echo(f"wrote {len(paths)} bundles to {out}")


@app.command("demo")
def demo_cmd(
    db: str | None = typer.Option(None, "--db", help="Store for the demo (default: a fresh "
                                  "medtwin-demo.sqlite in the user data directory)."),
    patients: int = typer.Option(6, "--patients", min=1, max=200),
    seed: int = typer.Option(0, "--seed", min=0),
    serve: bool | None = typer.Option(None, "--serve/--no-serve", help="Run the platform "
                                      "live (devices, broker, monitor, dashboard) after "
                                      "building the store (default: when run in a terminal)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port on 127.0.0.1."),
    duration: float | None = typer.Option(None, "--duration", min=1.0, help="Stop the live "
                                          "demo after this many seconds (default: Ctrl-C)."),
    broker: str | None = typer.Option(None, "--broker", help="Use this MQTT broker "
                                      "(mqtt://HOST:PORT) instead of the embedded one."),
    force: bool = typer.Option(False, "--force", help="Replace the SQLite file given with "
                               "--db when it exists (its data is lost)."),
) -> None:
    """Create a fresh store with synthetic patients; in a terminal, then run it all live."""
    import sys

    from medtwin.demo import live_demo, run_demo

    live = sys.stdout.isatty() if serve is None else serve
    if db is not None and ("://" in db or (not force and Path(db).exists())):
        from medtwin.demo import _fresh

        try:  # before any work: a store the demo may not replace is refused (nothing deleted)
            _fresh(db, force=False)
        except MedtwinError as exc:  # the refusal itself is bad input; reaching a store is not
            fail(exc, USAGE if type(exc) is MedtwinError else None)
    try:
        if live:
            live_demo(db, n_patients=patients, seed=seed, port=port, duration=duration,
                      broker=broker, echo=typer.echo, force=force)
            return
        report = run_demo(db, n_patients=patients, seed=seed, force=force)
    except MedtwinError as exc:
        fail(exc)
    except KeyboardInterrupt:
        typer.echo("stopped")
        return
    typer.echo(report)
    if serve is None:  # not a terminal: say how to get the live platform
        typer.echo("not a terminal, so the demo built its store and stopped; `medtwin demo "
                   "--serve` runs the platform live: devices, broker, monitor and the "
                   f"dashboard on http://127.0.0.1:{port}/ui/", err=True)
