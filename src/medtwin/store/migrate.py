"""The store's schema version: Alembic migrations run under a lock, so several processes
opening one store at once migrate it once; a store written by a newer medtwin is refused.

The lock is a PostgreSQL transaction-level advisory lock keyed by the schema, or SQLite's
write lock (``BEGIN IMMEDIATE``); the migrations and the version stamp commit together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from medtwin.core.errors import StoreError
from medtwin.store.engine import MIGRATIONS, describe, sqlite_file, sqlite_pragmas

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

_LOCK_SQL = ("SELECT pg_advisory_xact_lock(hashtextextended('medtwin.migrate:' || "
             "current_schema(), 0))")


class StoreNotFoundError(StoreError):
    """No medtwin store exists where a command that only reads looked for one."""

    def __init__(self, where: str) -> None:
        super().__init__(f"no medtwin store at {where}: check --db (or MEDTWIN_DB); a command "
                         "that writes (e.g. `medtwin import`) or `medtwin db upgrade --db ...` "
                         "creates one")


class SchemaTooNewError(StoreError):
    """The store's schema was written by a newer medtwin than this one."""

    def __init__(self, found: str, known: str, where: str) -> None:
        self.found, self.known = found, known
        super().__init__(
            f"the store at {where} has schema version {found}, which this medtwin does not "
            f"know (its newest is {known}): it was upgraded by a newer medtwin. Upgrade this "
            "installation (pip install -U medtwin) or use the version that wrote it; never "
            "downgrade a store by hand")


@dataclass(frozen=True)
class Revision:
    """One migration: its id, the one before it, and what it does (its first paragraph)."""

    id: str
    down: str | None
    doc: str


@dataclass(frozen=True)
class Upgrade:
    """What one :func:`upgrade` did: the version before and after (equal: nothing ran)."""

    before: str | None
    after: str

    @property
    def ran(self) -> bool:
        return self.before != self.after


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def head() -> str:
    """The newest schema version this medtwin knows."""
    h = _script().get_current_head()
    assert h is not None, "medtwin ships its migrations"
    return h


def history() -> list[Revision]:
    """Every migration this medtwin knows, oldest first."""
    revs = [Revision(r.revision, r.down_revision if isinstance(r.down_revision, str) else None,
                     " ".join((r.doc or "").strip().split("\n\n")[0].split()))
            for r in _script().walk_revisions()]
    return revs[::-1]


def _known(rev: str) -> bool:
    return any(r.revision == rev for r in _script().walk_revisions())


def current(conn: Connection | Engine) -> str | None:
    """The schema version stamped in the store (None: no medtwin schema there)."""
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return current(c)
    if conn.dialect.name == "postgresql":
        present = conn.execute(text("SELECT to_regclass('alembic_version')")).scalar()
    else:
        present = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table' "
                                    "AND name = 'alembic_version'")).scalar()
    if present is None:
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def check(found: str | None, where: str) -> None:
    """Raise :class:`SchemaTooNewError` when ``found`` is a version this medtwin lacks."""
    if found is not None and not _known(found):
        raise SchemaTooNewError(found, head(), where)


def _migration_engine(engine: Engine) -> Engine:
    """SQLite: an engine whose transactions are ``BEGIN IMMEDIATE`` (the database's write
    lock, so the DDL and the version stamp are one transaction and a second process waits);
    PostgreSQL: the store's own engine (the advisory lock is taken in the transaction)."""
    if engine.dialect.name != "sqlite" or sqlite_file(str(engine.url)) is None:
        return engine  # PostgreSQL, or an in-memory database no other process can see
    eng = create_engine(engine.url, poolclass=NullPool)

    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=60000")  # wait for another migrator
        sqlite_pragmas(dbapi_conn, record)
        dbapi_conn.execute("PRAGMA busy_timeout=60000")
        dbapi_conn.isolation_level = None  # transactions begin below, not by the driver

    @event.listens_for(eng, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return eng


def upgrade(engine: Engine, *, schema: str | None = None, target: str = "head") -> Upgrade:
    """Bring the store to ``target`` under the migration lock; a second caller waits, then
    finds nothing to do. A schema newer than this medtwin is refused."""
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    where = describe(engine)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    eng = _migration_engine(engine)
    try:
        with eng.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(_LOCK_SQL))
            before = current(conn)
            check(before, where)
            want = head() if target == "head" else target
            if before != want:
                log.info("upgrading the store at %s from %s to %s", where, before or "empty",
                         want)
                cfg.attributes["connection"] = conn
                cfg.attributes["schema"] = schema
                try:
                    command.upgrade(cfg, want)
                except CommandError as exc:  # an unknown or older target
                    raise StoreError(f"cannot upgrade the store at {where} from "
                                     f"{before or 'empty'} to {want!r}: {exc}; see "
                                     "`medtwin db history`") from exc
            after = current(conn)
    finally:
        if eng is not engine:
            eng.dispose()
    assert after is not None
    return Upgrade(before, after)


def ensure(engine: Engine, *, schema: str | None = None, create: bool = True) -> Upgrade:
    """The check at every store open: refuse a newer schema, refuse a missing store unless
    ``create``, and upgrade an older one (a store at head costs one query, no lock)."""
    found = current(engine)
    check(found, describe(engine))
    if found is None and not create:
        raise StoreNotFoundError(describe(engine))
    if found == head():
        return Upgrade(found, found)
    return upgrade(engine, schema=schema)
