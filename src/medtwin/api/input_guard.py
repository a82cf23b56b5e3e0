"""Refuse NUL characters anywhere in a request (path, query, JSON or form body) with 422.

A NUL is never part of clinical text, and PostgreSQL cannot store one in a text column: let
through, it fails the write deep in the store (the tester saw a 503 "try again" for a unit
with a NUL). Checking once at the edge names the offending field and keeps every route
free of the check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

NUL = "\x00"


def nul_paths(value: Any, where: str = "body") -> Iterator[str]:
    """The places (``body.a.0.b``) of the strings and keys in a JSON value holding a NUL."""
    if isinstance(value, str):
        if NUL in value:
            yield where
    elif isinstance(value, dict):
        for key, item in value.items():
            if NUL in str(key):
                yield f"{where} (a key)"
            yield from nul_paths(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from nul_paths(item, f"{where}.{i}")


def _form_or_json_paths(body: bytes, content_type: str) -> list[str]:
    if not body:
        return []
    if "json" in content_type:
        try:
            return list(nul_paths(json.loads(body)))
        except ValueError:  # not JSON: the route's own validation answers
            return ["body"] if b"\x00" in body else []
    if "x-www-form-urlencoded" in content_type:
        text = body.decode("latin-1")
        return [f"body.{k}" for k, v in parse_qsl(text, keep_blank_values=True)
                if NUL in k or NUL in v]
    return []


def _problem(path: str, where: list[str]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The 422 body: problem+json, or an OperationOutcome under ``/fhir``."""
    detail = (f"{', '.join(where[:5])}: text must not contain NUL (U+0000) characters; "
              "remove them and send again")
    if path.startswith("/fhir"):
        data: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": detail}]}
        media = b"application/fhir+json"
    else:
        data = {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
                "detail": detail}
        media = b"application/problem+json"
    body = json.dumps(data).encode()
    return body, [(b"content-type", media), (b"content-length", str(len(body)).encode())]


class RefuseNul:
    """ASGI middleware: 422 for a request whose path, query or body text holds a NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        where = []
        if NUL in scope.get("path", "") or NUL in unquote(scope.get("raw_path", b"").decode(
                "latin-1")):
            where.append("path")
        query = scope.get("query_string", b"").decode("latin-1")
        where += [f"query.{k}" for k, v in parse_qsl(query, keep_blank_values=True)
                  if NUL in k or NUL in v]
        if where or scope["type"] == "websocket":
            if where:
                await self._refuse(scope, send, where)
            else:
                await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if "json" not in content_type and "x-www-form-urlencoded" not in content_type:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        where = _form_or_json_paths(body, content_type)
        if where:
            await self._refuse(scope, send, where)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, where: list[str]) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body, headers = _problem(scope.get("path", ""), where)
        await send({"type": "http.response.start", "status": 422, "headers": headers})
        await send({"type": "http.response.body", "body": body})
