"""One router per resource."""

from __future__ import annotations

from typing import Any

from medtwin.api.schemas import Problem

_P = {"model": Problem}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: _P, 403: _P, 422: _P}
PATIENT_ERRORS: dict[int | str, dict[str, Any]] = {401: _P, 403: _P, 404: _P, 422: _P}
