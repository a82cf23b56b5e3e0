"""Login throttling kept in the store (PostgreSQL), so that every service worker and replica
counts the same attempts: the rules of :class:`~medtwin.api.limits.MemoryLoginThrottle`, with
its tables in the database and each reservation one transaction under one advisory lock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sqlalchemy import Engine, and_, delete, func, insert, select, text, update

from medtwin.api.limits import MemoryLoginThrottle, Reservation, Throttled
from medtwin.store import schema as t

#: the advisory lock that orders login reservations of every worker (a fixed 64-bit number)
LOGIN_LOCK = 0x6D74_6C6F_6769_6E01


class DbLoginThrottle:
    """:class:`~medtwin.api.limits.LoginThrottle` over ``login_pairs`` and ``login_attempts``.

    Same limits as the in-memory throttle (per pair a backoff after ``attempts`` failures,
    per address and per account sliding windows); the clock is the wall clock (epoch
    seconds), shared by the workers of one host and, within NTP's error, across hosts. A
    reservation takes a transaction-scoped advisory lock, so a parallel burst spread over
    several workers cannot have more passwords checked than the limits allow."""

    FORGET_SECONDS = MemoryLoginThrottle.FORGET_SECONDS
    ADDRESS_FACTOR = MemoryLoginThrottle.ADDRESS_FACTOR
    ACCOUNT_FACTOR = MemoryLoginThrottle.ACCOUNT_FACTOR

    def __init__(self, engine: Engine, attempts: int, window: float, *,
                 max_delay: float = 900.0, clock: Callable[[], float] = time.time) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("DbLoginThrottle needs PostgreSQL (SQLite: MemoryLoginThrottle)")
        self.engine = engine
        self.attempts = attempts
        self.window = window
        self.max_delay = max_delay
        self._clock = clock

    def delay(self, failures: int) -> float:
        """Seconds a pair waits after its last attempt, having failed ``failures`` times."""
        if failures < self.attempts:
            return 0.0
        return min(self.max_delay, 2.0 ** min(failures - self.attempts, 62))

    def reserve(self, account: str, address: str) -> Reservation:
        """Count one attempt now (atomically across workers), or raise :class:`Throttled`."""
        now = self._clock()
        account, address = account[:320], address[:64]  # the columns' widths
        p, a = t.login_pairs, t.login_attempts
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOGIN_LOCK})
            conn.execute(delete(a).where(a.c.at <= now - self.window))
            conn.execute(delete(p).where(p.c.last_at <= now - self.FORGET_SECONDS,
                                         func.coalesce(p.c.trusted_at, 0.0)
                                         <= now - self.FORGET_SECONDS))
            pair = conn.execute(select(p.c.fails, p.c.last_at, p.c.trusted_at).where(
                p.c.account == account, p.c.address == address)).first()
            fails, last = (int(pair.fails), float(pair.last_at)) if pair else (0, now)
            trusted = bool(pair and pair.trusted_at is not None
                           and now - pair.trusted_at < self.FORGET_SECONDS)
            if now - last > self.FORGET_SECONDS:
                fails = 0
            waits = [last + self.delay(fails) - now]
            n, first = conn.execute(select(func.count(), func.min(a.c.at)).where(
                a.c.address == address)).one()
            if n >= self.attempts * self.ADDRESS_FACTOR:
                waits.append(first + self.window - now)
            if not trusted:
                n, first = conn.execute(select(func.count(), func.min(a.c.at)).where(
                    a.c.account == account, a.c.for_account)).one()
                if n >= self.attempts * self.ACCOUNT_FACTOR:
                    waits.append(first + self.window - now)
            wait = max(waits)
            if wait > 0:
                raise Throttled(math.ceil(wait))
            if pair:
                conn.execute(update(p).where(p.c.account == account, p.c.address == address)
                             .values(fails=fails + 1, last_at=now))
            else:
                conn.execute(insert(p).values(account=account, address=address, fails=1,
                                              last_at=now, trusted_at=None))
            conn.execute(insert(a).values(account=account, address=address, at=now,
                                          for_account=not trusted))
        return Reservation(account, address, now, trusted)

    def succeeded(self, reservation: Reservation) -> None:
        """Refund the attempt, clear the pair's backoff and trust the pair from now on."""
        p, a = t.login_pairs, t.login_attempts
        r = reservation
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOGIN_LOCK})
            conn.execute(delete(a).where(and_(a.c.account == r.account,
                                              a.c.address == r.address, a.c.at == r.at)))
            now = self._clock()
            done = conn.execute(update(p).where(p.c.account == r.account,
                                                p.c.address == r.address)
                                .values(fails=0, last_at=now, trusted_at=now)).rowcount
            if not done:
                conn.execute(insert(p).values(account=r.account, address=r.address, fails=0,
                                              last_at=now, trusted_at=now))
