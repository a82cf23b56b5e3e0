"""The ``medtwin`` command line: the edge where settings and the store are built and handed in."""

from __future__ import annotations

import logging

import typer

from medtwin import __version__
from medtwin.commands import cardio, glucose, hl7, live, monitor, ops, pk, records, security

app = typer.Typer(
    name="medtwin",
    help="medtwin: healthcare digital twins (patients, devices, hospitals) kept in step with data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


# --- the command groups, one module of medtwin.commands per area ---------------------------
for _module in (records, monitor, live):  # top-level commands: import, patients, news2, live ...
    app.registered_commands += _module.app.registered_commands
app.command("dose")(pk.dose_cmd)
glucose.simulate_app.command("cardio")(cardio.simulate_cardio_cmd)
for _name, _group in (("simulate", glucose.simulate_app), ("trial", glucose.trial_app),
                      ("pk", pk.app), ("ops", ops.app), ("user", security.user_app),
                      ("key", security.key_app), ("audit", security.audit_app),
                      ("keys", security.keys_app), ("serve", security.serve_app),
                      ("hl7", hl7.app)):
    app.add_typer(_group, name=_name)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
