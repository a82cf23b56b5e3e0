"""Error bodies: RFC 9457 problem+json, or a FHIR OperationOutcome under ``/fhir``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medtwin.core.errors import (
    ConflictError,
    GoneError,
    MedtwinError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    ValidationError,
)
from medtwin.interop.fhir.issues import FhirImportError

log = logging.getLogger(__name__)

_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 410: "Gone",
           412: "Precondition Failed", 413: "Payload Too Large", 415: "Unsupported Media Type",
           422: "Unprocessable Content", 428: "Precondition Required", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}
_FHIR_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
               405: "not-supported", 406: "not-supported", 409: "conflict", 410: "deleted",
               412: "conflict", 413: "too-costly", 415: "not-supported", 422: "invalid",
               428: "required", 429: "throttled", 500: "exception", 503: "transient"}


class ApiError(Exception):
    """An error the service returns on purpose: status, message, optional extra headers."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 issues: list[dict[str, Any]] | None = None) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers
        self.issues = issues
        super().__init__(detail)


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


def outcome(status: int, detail: str, *, severity: str = "error",
            code: str | None = None) -> dict[str, Any]:
    """A FHIR OperationOutcome with one issue (``code`` defaults to the status's)."""
    return {"resourceType": "OperationOutcome", "issue": [
        {"severity": severity, "code": code or _FHIR_CODES.get(status, "processing"),
         "diagnostics": detail}]}


def error_response(request: Request, status: int, detail: str, *,
                   headers: dict[str, str] | None = None,
                   issues: list[dict[str, Any]] | None = None) -> JSONResponse:
    """The error body in the form the path calls for."""
    if _is_fhir(request):
        body: dict[str, Any] = (outcome(status, detail) if not issues else
                                {"resourceType": "OperationOutcome", "issue": issues})
        return JSONResponse(body, status, headers=headers, media_type="application/fhir+json")
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status,
            "detail": detail}
    if issues:
        body["errors"] = [i.get("diagnostics", "") for i in issues]
    return JSONResponse(body, status, headers=headers, media_type="application/problem+json")


def install(app: FastAPI) -> None:
    """Register the handlers: no bad input ever becomes a 5xx."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.detail, headers=exc.headers,
                              issues=exc.issues)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()))
            issues.append({"severity": "error", "code": "invalid",
                           "diagnostics": f"{where}: {e.get('msg', 'invalid')}",
                           "expression": [where]})
        return error_response(request, 422, "; ".join(i["diagnostics"] for i in issues[:5]),
                              issues=issues)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(FhirImportError)
    async def _fhir(request: Request, exc: FhirImportError) -> JSONResponse:
        outcome = exc.outcome()
        return error_response(request, 422, str(exc).splitlines()[0], issues=outcome["issue"])

    @app.exception_handler(NotFoundError)
    async def _missing(request: Request, exc: NotFoundError) -> JSONResponse:
        return error_response(request, 404, str(exc))

    @app.exception_handler(ValidationError)
    async def _bad(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(request, 422, str(exc))

    @app.exception_handler(GoneError)
    async def _gone(request: Request, exc: GoneError) -> JSONResponse:
        return error_response(request, 410, str(exc))

    @app.exception_handler(PreconditionFailedError)
    async def _precondition(request: Request, exc: PreconditionFailedError) -> JSONResponse:
        return error_response(request, 412, str(exc))

    @app.exception_handler(ConflictError)
    async def _conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return error_response(request, 409, str(exc))

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(request, 503, "the store is unavailable; try again")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal error (logged); nothing more is said")

    @app.exception_handler(MedtwinError)
    async def _other(request: Request, exc: MedtwinError) -> JSONResponse:
        return error_response(request, 400, str(exc))
