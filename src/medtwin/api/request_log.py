"""Request ids and structured logs: every request gets an id (the caller's ``X-Request-ID``
when it is a plain token, else a new one), echoed in the response and put on every log
record written while it is served; an access line per request names the route template,
never the raw path (which carries patient ids) nor the query (which may carry tokens)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medtwin.api.metrics import route_template

HEADER = "X-Request-ID"
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("medtwin_request_id",
                                                                         default=None)
access_log = logging.getLogger("medtwin.access")


def current_request_id() -> str | None:
    """The id of the request being served (None outside a request)."""
    return _request_id.get()


class RequestId:
    """ASGI middleware: take or make the request id, echo it, log one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                      if k == b"x-request-id"), "")
        rid = given if _VALID.fullmatch(given) else uuid.uuid4().hex
        token = _request_id.set(rid)
        start = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            access_log.info("request", extra={
                "method": scope.get("method", "WS"), "route": route_template(scope),
                "status": status, "ms": round(1000 * (time.perf_counter() - start), 2)})
            _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on each record (``record.request_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                          "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id and the record's
    extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or _request_id.get()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_logging(level: int = logging.INFO) -> dict[str, object]:
    """A ``logging.config.dictConfig`` (uvicorn's ``log_config``; saved as JSON it is a file
    for ``uvicorn --log-config``) writing JSON lines to stderr for medtwin's and uvicorn's
    loggers; uvicorn's own access log stays off (it logs raw paths)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "filters": ["request_id"], "stream": "ext://sys.stderr"}
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": handler},
        "root": {"handlers": ["json"], "level": logging.getLevelName(level)},
        "loggers": {"uvicorn": {"level": logging.getLevelName(level)},
                    "uvicorn.access": {"level": "WARNING", "propagate": True}},
    }
