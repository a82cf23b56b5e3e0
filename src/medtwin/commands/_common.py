"""What every command shares: the store option, opening the store with its key ring, failing
with a message that says how to fix, the exit codes, ``--json`` output, refusing to overwrite
an output file without ``--force``, and a progress bar only on a terminal.

A command that only reads opens an existing store (``create=False``: a mistyped ``--db`` is
refused, nothing is created); a command that writes creates a missing one and says so.

Exit codes, the same for every command (``medtwin --help`` shows ``medtwin.cli.EXIT_CODES``):
0 ok; 1 findings (an import with rejections, a failed check or verification, a target not
met); 2 usage or bad input (a bad option or file, a typed ``ValidationError``/``NotFoundError``,
an output file that exists without ``--force``, missing configuration such as a key); 3 a
runtime error (the store, a simulation, the broker, an unexpected failure). :func:`fail`
picks the code from the error; the root group (``medtwin.cli``) sends every error a command
did not catch through :func:`handle_error`, so none ends in a traceback unless ``-v``."""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from medtwin.core.errors import ConflictError, MedtwinError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from tqdm import tqdm

    from medtwin.store.event_store import EventStore

OK, FINDINGS, USAGE, RUNTIME = 0, 1, 2, 3
JSON_HELP = "Print the results as one JSON document on stdout (messages go to stderr)."
FORCE_HELP = "Overwrite output files that exist."

DB_HELP = ("Store URL or SQLite path (default: $MEDTWIN_DB, else medtwin.sqlite in the user "
           "data directory).")


def open_store(db: str | None, *, need_key: bool = False, create: bool = False) -> EventStore:
    """Open the store at ``db`` with the key ring (identities are sealed at rest).

    ``create`` (commands that write) makes a missing store and says so on stderr; without
    it a missing store is refused, naming what to check.

    A store whose identities are sealed with a key the ring lacks is refused. Without any key
    (none configured, no key file) a command that needs none still runs; sealing or opening
    an identity then fails, naming ``medtwin keys generate``. ``need_key`` refuses at once.
    No key file is ever created here."""
    from medtwin.security.crypto import KeyRing, NoKeyError, load_keyring
    from medtwin.security.store_keys import AbsentKeyRing, check_store_keys
    from medtwin.store.engine import describe
    from medtwin.store.event_store import EventStore

    try:
        ring: KeyRing | None = load_keyring()
        cipher: object = ring
    except NoKeyError as exc:
        if need_key:
            fail(exc)
        ring, cipher = None, AbsentKeyRing(exc)
    except MedtwinError as exc:
        fail(exc)
    try:
        store = EventStore.open(db, keyring=cipher, create=create)  # type: ignore[arg-type]
    except MedtwinError as exc:
        fail(exc)
    done = store.schema_upgrade
    if done is not None and done.ran:
        typer.echo(f"medtwin: created a new store at {describe(store.engine)}"
                   if done.before is None else
                   f"medtwin: upgraded the store at {describe(store.engine)} from schema "
                   f"{done.before} to {done.after}", err=True)
    try:
        check_store_keys(store.engine, ring)
    except MedtwinError as exc:
        store.close()
        fail(exc)
    return store


def exit_code(exc: BaseException) -> int:
    """The exit code an error ends a command with: 2 for bad input or configuration the user
    fixes (ValidationError, NotFoundError, ConflictError, a missing or wrong key, a missing
    optional extra), 3 for anything else (StoreError, SimulationError, the broker, OSError,
    an unexpected failure)."""
    from medtwin.security.crypto import KeyRingError

    usage = (ValidationError, NotFoundError, ConflictError, KeyRingError, ModuleNotFoundError,
             typer.BadParameter)
    return USAGE if isinstance(exc, usage) else RUNTIME


def fail(exc: Exception | str, code: int | None = None) -> NoReturn:
    """Print ``error: ...`` (one line) to stderr and exit with ``code``, by default the one
    :func:`exit_code` gives ``exc`` (a plain message: a usage error, 2)."""
    if code is None:
        code = USAGE if isinstance(exc, str) else exit_code(exc)
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def usage(message: str, where: str | None = None) -> NoReturn:
    """A usage error (exit 2): ``where`` names the option."""
    fail(ValidationError(message, where=where), USAGE)


def handle_error(exc: BaseException, *, verbose: bool = False) -> NoReturn:
    """An error a command did not catch: one line on stderr and its exit code (the traceback
    too with ``-v``). Exits and click's own errors pass through; so does a missing optional
    module (the entry point names the extra to install)."""
    passing = (typer.Exit, typer.Abort, typer.TyperException, ImportError)
    if isinstance(exc, passing) or not isinstance(exc, Exception) or \
            type(exc).__module__.startswith(("click.", "typer.")):
        raise exc
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, MedtwinError):
        fail(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    fail(f"unexpected failure: {detail}" + ("" if verbose else " (-v shows the traceback)"),
         RUNTIME)


def check_outputs(force: bool, **paths: Path | None) -> None:
    """Before any work: refuse (exit 2) an output file that exists without ``--force``, a
    directory given as a file, or a file in a folder that does not exist. Keywords name the
    options: ``summary_out=...`` is ``--summary-out``; a key ``option`` can be given as
    ``**{"--summary": path}``."""
    for opt, p in paths.items():
        if p is None:
            continue
        option = opt if opt.startswith("--") else "--" + opt.replace("_", "-")
        p = Path(p)
        if p.is_dir():
            usage(f"{p} is a directory; give a file name", option)
        if p.exists() and not force:
            usage(f"{p} exists; pass --force to overwrite it, or give another {option}",
                  option)
        if not p.parent.is_dir():
            usage(f"the folder {p.parent} does not exist", option)


def jsonable(x: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars and arrays -> Python, times -> ISO text,
    paths -> text."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if type(x).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    if hasattr(x, "isoformat"):
        return x.isoformat()
    if hasattr(x, "tolist") and not isinstance(x, str):
        x = x.tolist()
        if isinstance(x, list):
            return jsonable(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def echo_json(obj: Any) -> None:
    """One JSON document on stdout (NaN as null; anything else JSON lacks as text)."""
    typer.echo(json.dumps(jsonable(obj), indent=2, allow_nan=False, default=str))


def records(df: Any, index: str | None = None) -> list[dict]:
    """A DataFrame as JSON-ready records; ``index`` names the index column when kept."""
    d = df.reset_index() if index else df
    if index and "index" in d.columns:
        d = d.rename(columns={"index": index})
    return jsonable(d.to_dict(orient="records"))


def progress(total: int, desc: str, unit: str = "file") -> tqdm:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False)
