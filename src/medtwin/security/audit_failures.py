"""Anonymous authentication failures, audited in aggregate.

A flood of requests without a valid credential must not turn into a flood of synchronous
audit rows (one client wrote 5,826 rows in 30 s, and the chain cannot be pruned). Failures
are grouped per (source address, path class, reason) in windows of ``window`` seconds: the
first failure of a window is audited at once, the rest are counted and audited as one entry
"N further anonymous authentication failures from <addr> ... between t0 and t1" when the
window ends (noticed on the next failure or :meth:`sweep`) and at :meth:`close`. Groups are
bounded per address (``max_paths``, beyond which an address's failures share one group) and
in all (``max_groups``, beyond which all share one overflow group per reason), so spraying
paths or addresses cannot make a flood either. Failures of
authenticated callers are not handled here: they stay individual entries.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from medtwin.security.audit import AuditEntry

log = logging.getLogger(__name__)

OVERFLOW = "*"
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def path_class(path: str) -> str:
    """The resource family of a request path: its first segment (``/patients/p1/timeline``
    -> ``/patients/...``), so that probing many paths does not make many groups."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "/"
    head = parts[0] if _SEGMENT.fullmatch(parts[0]) else "?"
    return f"/{head}" + ("/..." if len(parts) > 1 else "")


@dataclass
class _Window:
    started: float  # monotonic
    first: datetime
    last: datetime
    count: int = 0  # failures after the first (the first is audited on its own)


class FailureAggregator:
    """Counts anonymous failures per (address, path class, reason) and audits them per window
    through ``write`` (a batch of entries, e.g. ``AuditLog.append_many``)."""

    def __init__(self, write: Callable[[list[AuditEntry]], object], *, window: float = 60.0,
                 max_groups: int = 1000, max_paths: int = 16,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        self.window = window
        self.max_groups = max_groups
        self.max_paths = max_paths
        self._paths: dict[str, int] = {}  # open groups per address
        self.clock = clock
        self._groups: dict[tuple[str, str, str], _Window] = {}
        self._lock = threading.Lock()
        self._swept = clock()

    def failed(self, source: str | None, path: str, reason: str) -> None:
        """Note one anonymous failure; audit it at once when it opens a window."""
        now, wall = self.clock(), datetime.now(UTC)
        key = (source or "?", path_class(path), reason)
        out: list[AuditEntry] = []
        with self._lock:
            out += self._expired(now)
            # past the bounds every failure shares one group, whatever its reason says (a
            # reason may carry caller-chosen text, which must not open groups of its own)
            if key not in self._groups and self._paths.get(key[0], 0) >= self.max_paths:
                key = (key[0], OVERFLOW, OVERFLOW)
            if key not in self._groups and len(self._groups) >= self.max_groups:
                key = (OVERFLOW, OVERFLOW, OVERFLOW)
            w = self._groups.get(key)
            if w is None:
                self._groups[key] = _Window(now, wall, wall)
                self._paths[key[0]] = self._paths.get(key[0], 0) + 1
                out.append(self._first(key, wall))
            else:
                w.count += 1
                w.last = wall
        if out:
            self.write(out)

    def sweep(self) -> None:
        """Audit the windows that have ended (cheap: at most once a second)."""
        now = self.clock()
        with self._lock:
            if now - self._swept < 1.0:
                return
            out = self._expired(now)
        if out:
            self.write(out)

    def close(self) -> None:
        """Audit every open window's count (at shutdown)."""
        with self._lock:
            out = [s for k, w in self._groups.items() if (s := self._summary(k, w))]
            self._groups.clear()
            self._paths.clear()
        if out:
            self.write(out)

    def _expired(self, now: float) -> list[AuditEntry]:
        self._swept = now
        done = [k for k, w in self._groups.items() if now - w.started >= self.window]
        for k in done:
            left = self._paths.get(k[0], 1) - 1
            if left > 0:
                self._paths[k[0]] = left
            else:
                self._paths.pop(k[0], None)
        return [s for k in done if (s := self._summary(k, self._groups.pop(k)))]

    @staticmethod
    def _first(key: tuple[str, str, str], when: datetime) -> AuditEntry:
        source, cls, reason = key
        return AuditEntry(actor="anonymous", action="authenticate", resource=cls,
                          outcome="denied", source=source[:64], detail=reason, time=when)

    @staticmethod
    def _summary(key: tuple[str, str, str], w: _Window) -> AuditEntry | None:
        if not w.count:
            return None
        source, cls, reason = key
        t0 = w.first.isoformat(timespec="seconds")
        t1 = w.last.isoformat(timespec="seconds")
        return AuditEntry(actor="anonymous", action="authenticate", resource=cls,
                          outcome="denied", source=source[:64],
                          detail=f"{w.count} further anonymous authentication failures from "
                                 f"{source} on {cls} between {t0} and {t1} ({reason})")
