"""Anonymous authentication failures aggregated in the store (PostgreSQL), so that several
service workers share one window per (address, path class, reason): the rules of
:class:`~medtwin.security.audit_failures.FailureAggregator`, its windows in
``auth_failure_windows``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from medtwin.security.audit import AuditEntry
from medtwin.security.audit_failures import OVERFLOW, FailureAggregator, _Window, path_class
from medtwin.store import schema as t


class DbFailureAggregator:
    """Counts anonymous failures per (address, path class, reason) in the database and audits
    them per window through ``write``: the first failure of a window at once (by the worker
    that opened it), the count when the window has ended (by the worker that sweeps it)."""

    def __init__(self, engine: Engine, write: Callable[[list[AuditEntry]], object], *,
                 window: float = 60.0, max_groups: int = 1000, max_paths: int = 16,
                 clock: Callable[[], float] = time.time) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("DbFailureAggregator needs PostgreSQL (SQLite: FailureAggregator)")
        self.engine = engine
        self.write = write
        self.window = window
        self.max_groups = max_groups
        self.max_paths = max_paths
        self.clock = clock
        self._swept = 0.0

    def failed(self, source: str | None, path: str, reason: str) -> None:
        """Note one anonymous failure; audit it at once when it opens a window."""
        now, wall = self.clock(), datetime.now(UTC)
        w = t.auth_failure_windows
        key = ((source or "?")[:64], path_class(path)[:64], reason[:200])
        out = self._expired(now)
        with self.engine.begin() as conn:
            exists = select(w.c.source).where(w.c.source == key[0], w.c.path_class == key[1],
                                              w.c.reason == key[2])
            if conn.execute(exists).first() is None:
                per_address = conn.scalar(select(func.count()).where(w.c.source == key[0]))
                if per_address >= self.max_paths:
                    key = (key[0], OVERFLOW, OVERFLOW)
                elif conn.scalar(select(func.count()).select_from(w)) >= self.max_groups:
                    key = (OVERFLOW, OVERFLOW, OVERFLOW)
            opened = conn.execute(pg_insert(w).values(
                source=key[0], path_class=key[1], reason=key[2], started=now, first_at=wall,
                last_at=wall, count=0).on_conflict_do_nothing().returning(w.c.source)).first()
            if opened is not None:
                out.append(FailureAggregator._first(key, wall))
            else:
                conn.execute(update(w).where(w.c.source == key[0], w.c.path_class == key[1],
                                             w.c.reason == key[2])
                             .values(count=w.c.count + 1, last_at=wall))
        if out:
            self.write(out)

    def sweep(self) -> None:
        """Audit the windows that have ended (cheap: at most once a second per worker)."""
        now = self.clock()
        if now - self._swept < 1.0:
            return
        out = self._expired(now)
        if out:
            self.write(out)

    def close(self) -> None:
        """At a worker's shutdown: audit the windows that have ended; open ones stay for the
        other workers (or the next start) to audit when they end."""
        self._swept = 0.0
        self.sweep()

    def _expired(self, now: float) -> list[AuditEntry]:
        """Take the ended windows out of the table (each exactly once, whichever worker)."""
        self._swept = now
        w = t.auth_failure_windows
        with self.engine.begin() as conn:
            rows = conn.execute(w.delete().where(w.c.started <= now - self.window)
                                .returning(w.c.source, w.c.path_class, w.c.reason,
                                           w.c.started, w.c.first_at, w.c.last_at,
                                           w.c.count)).all()
        out = []
        for r in rows:
            s = FailureAggregator._summary(
                (r.source, r.path_class, r.reason),
                _Window(r.started, r.first_at, r.last_at, int(r.count)))
            if s is not None:
                out.append(s)
        return out
