"""Request limits: body size (413) and login attempts (429); which client address to trust
(``X-Forwarded-For`` only from configured proxies); tokens kept out of the server's logs."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware


class BodyTooLarge(Exception):  # noqa: N818 - internal signal, never leaves this module
    """Raised inside the receive wrapper when the body exceeds the limit."""


class BodySizeLimit:
    """ASGI middleware: refuse bodies larger than ``max_bytes`` with 413 before reading them
    (by Content-Length) or as soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, send)
                    return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        fhir = scope.get("path", "").startswith("/fhir")
        detail = f"the request body is larger than {self.max_bytes} bytes"
        body: dict[str, Any] = (
            {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "too-costly", "diagnostics": detail}]}
            if fhir else {"type": "about:blank", "title": "Payload Too Large", "status": 413,
                          "detail": detail})
        raw = json.dumps(body).encode()
        ctype = b"application/fhir+json" if fhir else b"application/problem+json"
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(raw)).encode())]})
        await send({"type": "http.response.body", "body": raw})



# --- login throttling ------------------------------------------------------------------------
class Throttled(Exception):  # noqa: N818 - a signal to the login route, which answers 429
    """Too many login attempts: try again in ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__(f"try again in {self.retry_after} s")


@dataclass(frozen=True, slots=True)
class Reservation:
    """A login attempt counted before its password is checked."""

    account: str
    address: str
    at: float
    trusted: bool


class LoginThrottle(Protocol):
    """Decides whether a login attempt may have its password checked.

    :meth:`reserve` counts the attempt as a failure *before* the password is checked, in one
    atomic step, so a parallel burst cannot have more passwords checked than the limits
    allow; :meth:`succeeded` takes the count back when the password was right.
    """

    def reserve(self, account: str, address: str) -> Reservation:
        """Count one attempt now, or raise :class:`Throttled`."""
        ...

    def succeeded(self, reservation: Reservation) -> None:
        """The password was right: refund the attempt and clear the pair's backoff."""
        ...


class MemoryLoginThrottle:
    """:class:`LoginThrottle` in this process's memory (one service process; Redis later).

    Per (account, address) pair: ``attempts`` free failures, then an exponential backoff
    (1, 2, 4 ... seconds, at most ``max_delay``) that a success clears. This slows a guesser
    down without locking the account: the real user signing in from another address is not
    affected. Per address: at most ``attempts * ADDRESS_FACTOR`` attempts per ``window``
    (password spraying over many accounts). Per account: at most ``attempts *
    ACCOUNT_FACTOR`` failures per ``window`` from addresses where the account never signed in
    (a guesser using many addresses); addresses where it did are not held back by this.
    """

    ADDRESS_FACTOR = 4
    ACCOUNT_FACTOR = 10
    FORGET_SECONDS = 24 * 3600.0  # an idle pair's failures, and a pair's trust, expire
    MAX_ENTRIES = 100_000

    def __init__(self, attempts: int, window: float, *, max_delay: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window = window
        self.max_delay = max_delay
        self._clock = clock
        self._pairs: dict[tuple[str, str], tuple[int, float]] = {}
        self._addresses: dict[str, deque[float]] = {}
        self._accounts: dict[str, deque[float]] = {}
        self._trusted: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def delay(self, failures: int) -> float:
        """Seconds a pair waits after its last attempt, having failed ``failures`` times."""
        if failures < self.attempts:
            return 0.0
        return min(self.max_delay, 2.0 ** min(failures - self.attempts, 62))

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        q = table.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def reserve(self, account: str, address: str) -> Reservation:
        """Count one attempt now (atomically), or raise :class:`Throttled`."""
        now = self._clock()
        key = (account, address)
        with self._lock:
            self._sweep(now)
            trusted = now - self._trusted.get(key, -math.inf) < self.FORGET_SECONDS
            fails, last = self._pairs.get(key, (0, now))
            if now - last > self.FORGET_SECONDS:
                fails = 0
            waits = [last + self.delay(fails) - now]
            by_address = self._recent(self._addresses, address, now)
            if len(by_address) >= self.attempts * self.ADDRESS_FACTOR:
                waits.append(by_address[0] + self.window - now)
            by_account = self._recent(self._accounts, account, now)
            if not trusted and len(by_account) >= self.attempts * self.ACCOUNT_FACTOR:
                waits.append(by_account[0] + self.window - now)
            wait = max(waits)
            if wait > 0:
                raise Throttled(math.ceil(wait))
            self._pairs[key] = (fails + 1, now)
            by_address.append(now)
            if not trusted:
                by_account.append(now)
        return Reservation(account, address, now, trusted)

    def succeeded(self, reservation: Reservation) -> None:
        """Refund the attempt, clear the pair's backoff and trust the pair from now on."""
        key = (reservation.account, reservation.address)
        with self._lock:
            self._pairs.pop(key, None)
            for table, name in ((self._addresses, reservation.address),
                                (self._accounts, reservation.account)):
                q = table.get(name)
                if q is not None and reservation.at in q:
                    q.remove(reservation.at)
            self._trusted[key] = self._clock()

    def _sweep(self, now: float) -> None:
        """Drop stale entries once the tables grow large (memory stays bounded)."""
        if len(self._pairs) + len(self._trusted) + len(self._addresses) + len(
                self._accounts) < self.MAX_ENTRIES:
            return
        old = now - self.FORGET_SECONDS
        self._pairs = {k: v for k, v in self._pairs.items() if v[1] > old}
        self._trusted = {k: v for k, v in self._trusted.items() if v > old}
        for table in (self._addresses, self._accounts):
            for name in [n for n, q in table.items() if not q or q[-1] <= now - self.window]:
                del table[name]


# --- client addresses ------------------------------------------------------------------------
def check_proxies(entries: Iterable[str]) -> tuple[str, ...]:
    """Validated trusted-proxy entries (IP addresses or networks; never ``*``)."""
    out = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"trusted proxy {entry!r} is not an IP address or network "
                             "(e.g. 10.0.0.5 or 10.0.0.0/8)") from None
        out.append(entry)
    return tuple(out)


class TrustedProxies(ProxyHeadersMiddleware):
    """uvicorn's ProxyHeadersMiddleware trusting only ``proxies``: the client address
    (``request.client``: the audit ``source``, the login limits) comes from
    ``X-Forwarded-For`` only when the direct peer is one of them. Run uvicorn with
    ``proxy_headers=False`` so that its own copy (which trusts 127.0.0.1) stays out."""

    def __init__(self, app: ASGIApp, proxies: Iterable[str] = ()) -> None:
        super().__init__(app, trusted_hosts=list(check_proxies(proxies)))  # type: ignore[arg-type]


# --- tokens never in logs --------------------------------------------------------------------
_TOKEN_IN_URL = re.compile(r"((?:access_|refresh_|id_)?token=)[^&\s\"']+", re.IGNORECASE)
_LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    """``text`` with the value of any ``token=`` query parameter replaced by ``[redacted]``."""
    return _TOKEN_IN_URL.sub(r"\1[redacted]", text)


class TokenRedaction(logging.Filter):
    """Redacts ``?token=...`` in log records (uvicorn logs request lines with the query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_token_redaction() -> None:
    """Add :class:`TokenRedaction` to uvicorn's loggers (once)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedaction) for f in logger.filters):
            logger.addFilter(TokenRedaction())
