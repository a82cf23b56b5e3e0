"""What every command shares: the store option, opening the store with its key ring, failing
with a message that says how to fix, and a progress bar only on a terminal."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from tqdm import tqdm

from medtwin.core.errors import MedtwinError
from medtwin.store.event_store import EventStore

DB_HELP = "Store URL or SQLite path (default: medtwin.sqlite in the user data directory)."


def open_store(db: str | None, *, need_key: bool = False) -> EventStore:
    """Open the store at ``db`` with the key ring (identities are sealed at rest).

    A store whose identities are sealed with a key the ring lacks is refused. Without any key
    (none configured, no key file) a command that needs none still runs; sealing or opening
    an identity then fails, naming ``medtwin keys generate``. ``need_key`` refuses at once.
    No key file is ever created here."""
    from medtwin.security.crypto import KeyRing, NoKeyError, load_keyring
    from medtwin.security.store_keys import AbsentKeyRing, check_store_keys

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
        store = EventStore.open(db, keyring=cipher)  # type: ignore[arg-type]
    except MedtwinError as exc:
        fail(exc)
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
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False)
