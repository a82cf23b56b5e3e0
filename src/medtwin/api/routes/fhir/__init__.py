"""The FHIR R4 RESTful API at ``/fhir`` (R4 http.html and search.html): capabilities,
read/vread/update/delete/history per type, search with paging, transaction and batch,
``$everything``, Bulk Data ``$export``; JSON only (XML gets 406); every error an
OperationOutcome; every interaction through the same access rules and audit as the rest
of the API (``access``).

Route order matters: fixed paths (``metadata``, ``_history``, ``_search``, ``$...``) come
before the ``{type}/{id}`` patterns."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from medtwin.api.routes.fhir import (
    capability,
    crud,
    export,
    history,
    legacy,
    operations,
    search,
    transaction,
)
from medtwin.api.routes.fhir.formats import FHIR_JSON, negotiate

_OO = {"description": "OperationOutcome", "content": {FHIR_JSON: {"schema": {"type": "object"}}}}
router = APIRouter(prefix="/fhir", tags=["fhir"], dependencies=[Depends(negotiate)],
                   responses={s: _OO for s in (400, 401, 403, 404, 406, 409, 410, 412, 413,
                                               415, 422)})
router.add_api_route("", transaction.transaction, methods=["POST"],
                     summary="transaction / batch")
for module in (capability, export, legacy, operations, history, search, crud):
    router.include_router(module.router)
