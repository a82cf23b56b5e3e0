"""Turn a ``--db`` value into a SQLAlchemy engine (the schema version: ``store.migrate``)."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from medtwin.core.errors import StoreError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('medtwin.schema:' || %s, 0))"
POOL_SIZE = 20  # PostgreSQL connections kept per process
POOL_OVERFLOW = 20  # ... and opened beyond them at a peak, up to the API threadpool's 40 threads
# (2 service workers then hold at most 80 of PostgreSQL's default 100 connections)
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def default_db_path() -> Path:
    """``medtwin.sqlite`` in the user's data directory (``MEDTWIN_DB`` overrides)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("medtwin", appauthor=False)) / "medtwin.sqlite"


def resolve_url(db: str | os.PathLike[str] | None) -> str:
    """A SQLAlchemy URL from a path, a URL or nothing (env ``MEDTWIN_DB``, then the default).
    Nothing is created here."""
    value = str(db) if db is not None else os.environ.get("MEDTWIN_DB") or str(default_db_path())
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    if value.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + value.split("://", 1)[1]
    if value.startswith(("sqlite://", "postgresql+")):
        return value
    raise StoreError(f"unsupported store URL {value!r}: use a file path, sqlite:///PATH or "
                     "postgresql://HOST/DB")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None: in memory, or not SQLite)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


SQLITE_BUSY_SECONDS = 10.0  # how long a connection waits for another's lock


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL, durable commits, foreign keys and a busy timeout on every SQLite connection."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
    # switching a new file to WAL can answer "database is locked" at once while another
    # process switches it (SQLite does not always call the busy handler there): try again
    # within the same busy timeout
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA synchronous=FULL")  # a write is acknowledged only once durable
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(db: str | os.PathLike[str] | None, *, schema: str | None = None,
                create: bool = True) -> Engine:
    """Create the engine; for PostgreSQL, ``schema`` puts every table in that schema.

    ``create`` makes what is missing (a SQLite file's folder, a PostgreSQL schema); without
    it a missing SQLite file is refused with :class:`StoreNotFoundError` and nothing is made.
    """
    from medtwin.store.migrate import StoreNotFoundError

    url = resolve_url(db)
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None and create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif path is not None and not path.is_file():
            raise StoreNotFoundError(str(path))
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", sqlite_pragmas)
        return engine
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise StoreError(f"invalid schema name {schema!r}: lower-case letters, digits, _")
    from medtwin.extras import require

    require("psycopg", "a PostgreSQL store")
    # a pooled connection per thread of the API's threadpool: with fewer, the threads queue
    # for a connection, and a pool smaller than its overflow closes and reopens connections
    engine = create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE,
                           max_overflow=POOL_OVERFLOW, **kwargs)
    if schema:
        @event.listens_for(engine, "connect")
        def _search_path(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if create and cur.fetchone() is None:  # one creator at a time: no unique race
                cur.execute(_SCHEMA_LOCK, (schema,))
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            cur.execute(f'SET search_path TO "{schema}"')
            cur.close()
            dbapi_conn.commit()
    return engine


def migrate(engine: Engine, *, schema: str | None = None) -> None:
    """Run the Alembic migrations up to head on ``engine`` (under the migration lock)."""
    from medtwin.store.migrate import upgrade

    upgrade(engine, schema=schema)


def describe(engine: Engine) -> str:
    """The store's address without any password, for logs and summaries."""
    return make_url(str(engine.url)).render_as_string(hide_password=True)


def ping(engine: Engine) -> None:
    """Raise :class:`StoreError` if the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise StoreError(f"cannot reach the store at {describe(engine)}: {exc}") from exc
