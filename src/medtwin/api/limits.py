"""Request limits: body size (413) and login attempts (429)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


class LoginLimiter:
    """At most ``attempts`` failed logins per ``window`` seconds per user name and per client
    address; successful logins do not count."""

    def __init__(self, attempts: int, window: float) -> None:
        self.attempts = attempts
        self.window = window
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails[key]
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def retry_after(self, username: str, address: str) -> int:
        """Seconds to wait before trying again, 0 when allowed now."""
        now = time.monotonic()
        with self._lock:
            waits = [q[0] + self.window - now for key in (f"u:{username}", f"a:{address}")
                     if len(q := self._recent(key, now)) >= self.attempts * (
                         1 if key.startswith("u:") else 4)]
        return max(1, int(max(waits)) + 1) if waits else 0

    def failed(self, username: str, address: str) -> None:
        """Count one failed attempt."""
        now = time.monotonic()
        with self._lock:
            for key in (f"u:{username}", f"a:{address}"):
                self._recent(key, now).append(now)
