"""The ``medtwin`` command line: the edge where settings and the store are built and handed in.

Command modules are imported only when their command runs (or its own ``--help`` is asked
for), so ``medtwin --version`` and ``medtwin --help`` start in a fraction of a second: the
root help lists each command from :data:`COMMANDS` (a test checks it against the loaded
commands). A missing optional extra ends in ``install medtwin[X]``, not a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from difflib import get_close_matches
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from medtwin import __version__

#: command name -> (where it lives, its one-paragraph summary in ``medtwin --help``).
#: ``module:app/name`` is command ``name`` of a Typer of commands, ``module:attr`` a Typer
#: group or a command function, ``module:attr()`` a function returning the group.
COMMANDS: dict[str, tuple[str, str]] = {
    "import": ("records:app/import", "Import FHIR R4 bundles or resources; print read / "
               "stored / duplicates / rejected."),
    "patients": ("records:app/patients", "List stored patients (no identifying fields)."),
    "timeline": ("records:app/timeline", "Show a patient's timeline, filtered by code and "
                 "time."),
    "export": ("records:app/export", "Write a patient's record as a FHIR R4 Bundle to stdout."),
    "synth": ("records:app/synth", "Write seeded synthetic patients as FHIR R4 transaction "
              "bundles (for demos and tests)."),
    "demo": ("records:app/demo", "Create a fresh store with synthetic patients; in a "
             "terminal, then run it all live."),
    "news2": ("monitor:app/news2", "Print the NEWS2 total, each item's points and the risk "
              "band."),
    "live": ("live:app/live", "Run ingestion until Ctrl-C or SIGTERM; every acknowledged "
             "reading is stored."),
    "stream": ("live:app/stream", "Publish live readings of simulated patients, or replay a "
               "recorded signal."),
    "alerts": ("live:app/alerts", "List active alerts (newest first), or acknowledge one."),
    "dose": ("pk:dose_cmd", "Recommend the regimen with the highest probability of target "
             "attainment."),
    "simulate": ("medtwin.cli:simulate_group()", "Simulate one virtual patient (a twin) and "
                 "write its trace."),
    "trial": ("medtwin.cli:trial_group()", "In-silico trials: cohort x meals x controller x "
              "days -> outcomes; cardio scenarios on virtual populations."),
    "pk": ("pk:app", "Pharmacokinetics: MAP personalisation, population fits, simulation."),
    "ops": ("ops:app", "Hospital operations twin: patient flow (SimPy), calibration from the "
            "store, staffing optimisation, live occupancy forecast."),
    "user": ("security:user_app", "Users of the service: add, list, disable."),
    "key": ("security:key_app", "Device API keys."),
    "audit": ("security:audit_app", "The audit trail."),
    "keys": ("security:keys_app", "Encryption keys of identifying fields."),
    "serve": ("security:serve", "Run the HTTP service."),
    "hl7": ("hl7:app", "HL7 v2 over MLLP: ADT (admissions, transfers, discharges) and ORU "
            "(results) from an EHR or a lab system."),
    "db": ("db:app", "The store's schema: create or upgrade it, show its version and the "
           "migrations."),
}
_SETTINGS: dict[str, Any] = {"add_completion": False, "pretty_exceptions_enable": False,
                              "rich_markup_mode": None}
#: the same for every command (see :mod:`medtwin.commands._common`)
EXIT_CODES = ("Exit codes: 0 ok; 1 findings (e.g. an import with rejections, a failed check); "
              "2 usage or bad input (including an output file that exists without --force); "
              "3 runtime error (the store, a simulation, the broker, an unexpected failure; "
              "-v shows its traceback). --json prints one JSON document on stdout.")


def simulate_group() -> typer.Typer:
    """``medtwin simulate``: glucose (commands.glucose) and cardio (commands.cardio)."""
    from medtwin.commands import cardio, glucose

    if not any(c.name == "cardio" for c in glucose.simulate_app.registered_commands):
        glucose.simulate_app.command("cardio")(cardio.simulate_cardio_cmd)
    return glucose.simulate_app


def trial_group() -> typer.Typer:
    """``medtwin trial``: glucose (commands.glucose) and cardio (commands.cardio)."""
    from medtwin.commands import cardio, glucose

    if not any(c.name == "cardio" for c in glucose.trial_app.registered_commands):
        glucose.trial_app.command("cardio")(cardio.trial_cardio_cmd)
    return glucose.trial_app


def load_command(name: str) -> Any:
    """Import the module of command ``name`` and build its click command, exactly as an
    eager ``app.command``/``app.add_typer`` would have."""
    target = COMMANDS[name][0]
    module, _, attr = target.partition(":")
    mod = importlib.import_module(module if "." in module else f"medtwin.commands.{module}")
    attr, _, sub = attr.partition("/")
    obj = getattr(mod, attr.removesuffix("()"))
    if attr.endswith("()"):
        obj = obj()
    root = typer.Typer(**_SETTINGS)
    if sub:
        root.registered_commands += [c for c in obj.registered_commands if c.name == sub]
    elif isinstance(obj, typer.Typer):
        root.add_typer(obj, name=name)
    else:
        root.command(name)(obj)
    return tidy(typer.main.get_group(root).commands[name])


#: typer's type labels -> the words click uses in help (no Python type names)
_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "int range": "INTEGER",
          "float range": "NUMBER", "bool": "BOOLEAN", "datetime": "ISO-TIME", "path": "PATH",
          "file": "FILE", "dir": "FOLDER", "Path": "PATH"}


def _no_type(ctx: Any = None) -> str:
    return ""


def tidy(cmd: Any) -> Any:
    """Plain help for ``cmd`` and its subcommands: no Rich markup (which would swallow a unit
    such as ``[mg]``) and no Python type names as metavars (``<bool>``, ``<list[Path]>``,
    ``<str>``): an argument shows its name, an option the kind of value (TEXT, INTEGER,
    NUMBER, PATH...), unless the command set a ``metavar``."""
    if hasattr(cmd, "rich_markup_mode"):
        cmd.rich_markup_mode = None
    for p in cmd.params:
        if p.metavar is not None or getattr(p, "is_flag", False) or \
                not hasattr(p, "display_type"):
            continue
        shown = p.display_type(None).strip("<>")
        if p.param_type_name == "argument":
            p.metavar = (p.name or "value").upper()
            p.display_type = p.display_type_rich = _no_type
        else:
            p.metavar = _WORDS.get(shown.removeprefix("list[").removesuffix("]"),
                                   shown.replace("[", "").replace("]", "").upper())
    for sub in getattr(cmd, "commands", {}).values():
        tidy(sub)
    return cmd


class LazyGroup(TyperGroup):
    """The root group: a command's module is imported when that command is resolved; the
    root help lists every command from its summary without importing any of them."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(dict.fromkeys([*COMMANDS, *self.commands]))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        if self._listing:
            return TyperCommand(name=cmd_name, help=COMMANDS[cmd_name][1])
        self.commands[cmd_name] = load_command(cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def invoke(self, ctx: Any) -> Any:
        """Every error a command did not catch ends in one line and its exit code
        (:func:`medtwin.commands._common.handle_error`), with the traceback under ``-v``."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from medtwin.commands._common import handle_error

            handle_error(exc, verbose=bool(ctx.params.get("verbose")))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:  # click's UsageError: suggest the commands not loaded yet
            message = getattr(exc, "message", None)
            if args and isinstance(message, str) and "Did you mean" not in message:
                matches = get_close_matches(args[0], self.list_commands(ctx))
                if matches:
                    exc.message = (message.rstrip(".") + ". Did you mean "  # type: ignore
                                   + ", ".join(repr(m) for m in matches) + "?")
            raise


app = typer.Typer(
    name="medtwin",
    help="medtwin: healthcare digital twins (patients, devices, hospitals) kept in step with data.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    cls=LazyGroup,
    **_SETTINGS,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medtwin {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", "--debug", help="Log progress to "
                                 "stderr; an unexpected failure shows its traceback."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)


def main() -> None:
    """Console-script entry point; a missing optional extra says which one to install."""
    from medtwin.extras import MissingExtraError, as_missing_extra

    try:
        app()
    except ModuleNotFoundError as exc:
        words = [a for a in sys.argv[1:] if not a.startswith("-")][:1]
        missing = exc if isinstance(exc, MissingExtraError) else as_missing_extra(
            exc, f"`medtwin {words[0]}`" if words else None)
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
