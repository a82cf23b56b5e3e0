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


def open_store(db: str | None) -> EventStore:
    """Open the store at ``db`` with the key ring (identities are sealed at rest)."""
    from medtwin.security.crypto import load_keyring

    try:
        return EventStore.open(db, keyring=load_keyring())
    except MedtwinError as exc:
        fail(exc)


def fail(exc: Exception, code: int = 2) -> NoReturn:
    """Print ``error: ...`` to stderr and exit with ``code``."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def progress(total: int, desc: str, unit: str = "file") -> tqdm:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False)
