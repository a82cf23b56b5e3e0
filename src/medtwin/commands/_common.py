"""What every command shares: the store option, opening the store with its key ring, failing
with a message that says how to fix, and a progress bar only on a terminal.

A command that only reads opens an existing store (``create=False``: a mistyped ``--db`` is
refused, nothing is created); a command that writes creates a missing one and says so."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

import typer

from medtwin.core.errors import MedtwinError

if TYPE_CHECKING:
    from tqdm import tqdm

    from medtwin.store.event_store import EventStore

DB_HELP = "Store URL or SQLite path (default: medtwin.sqlite in the user data directory)."


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


def fail(exc: Exception, code: int = 2) -> NoReturn:
    """Print ``error: ...`` to stderr and exit with ``code``."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def progress(total: int, desc: str, unit: str = "file") -> tqdm:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False)
