"""What every twin route does around its twin: check access, build the view, audit the
outcome, map the twin's errors to statuses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

from medtwin.api.deps import Caller, Svc, audited, guard
from medtwin.api.problems import ApiError
from medtwin.core.errors import MedtwinError, NotFoundError
from medtwin.security.policy import Action, not_found
from medtwin.twin.service import TwinNotReadyError

T = TypeVar("T")


def twin_view(request: Request, svc: Svc, who: Caller, patient_id: str, resource: str,
              build: Callable[[], T]) -> T:
    """Check access, build a twin's view, audit the outcome, map errors to statuses (404 an
    unknown patient, 409 a twin without enough data yet, 422 other bad input)."""
    grant = guard(request, svc, who, patient_id, Action.READ, resource)
    try:
        view = build()
    except NotFoundError:
        audited(request, svc, who, grant, resource, "not-found")
        raise not_found(patient_id) from None
    except TwinNotReadyError as exc:
        audited(request, svc, who, grant, resource, "not-ready")
        raise ApiError(409, str(exc)) from None
    except MedtwinError as exc:
        audited(request, svc, who, grant, resource, "invalid")
        raise ApiError(422, str(exc)) from None
    audited(request, svc, who, grant, resource)
    return view
