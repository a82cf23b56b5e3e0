"""Turn a ``--db`` value into a SQLAlchemy engine and bring its schema up to date."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from medtwin.core.errors import StoreError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def default_db_path() -> Path:
    """``medtwin.sqlite`` in the user's data directory (``MEDTWIN_DB`` overrides)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("medtwin", appauthor=False)) / "medtwin.sqlite"


def resolve_url(db: str | os.PathLike[str] | None) -> str:
    """A SQLAlchemy URL from a path, a URL or nothing (env ``MEDTWIN_DB``, then the default)."""
    value = str(db) if db is not None else os.environ.get("MEDTWIN_DB") or str(default_db_path())
    if "://" not in value:
        path = Path(value).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if value.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + value.split("://", 1)[1]
    if value.startswith(("sqlite://", "postgresql+")):
        return value
    raise StoreError(f"unsupported store URL {value!r}: use a file path, sqlite:///PATH or "
                     "postgresql://HOST/DB")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a write is acknowledged only once durable
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(db: str | os.PathLike[str] | None, *, schema: str | None = None) -> Engine:
    """Create the engine; for PostgreSQL, ``schema`` puts every table in that schema."""
    url = resolve_url(db)
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise StoreError(f"invalid schema name {schema!r}: lower-case letters, digits, _")
    engine = create_engine(url, pool_pre_ping=True, **kwargs)
    if schema:
        @event.listens_for(engine, "connect")
        def _search_path(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            cur.execute(f'SET search_path TO "{schema}"')
            cur.close()
            dbapi_conn.commit()
    return engine


def migrate(engine: Engine, *, schema: str | None = None) -> None:
    """Run the Alembic migrations up to head on ``engine``."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["schema"] = schema
        command.upgrade(cfg, "head")


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
