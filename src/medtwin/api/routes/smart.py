"""SMART App Launch discovery: ``/.well-known/smart-configuration`` (also under the FHIR base,
where SMART clients look), listing only what works.

Without an external identity provider, tokens come from medtwin's own ``/auth/token``
(OAuth2 password grant, with an optional ``scope``); there is no authorization endpoint, so
no launch, PKCE or OpenID capability is claimed. When an external OpenID Connect provider is
configured with its authorization and token endpoints, the document points SMART apps at
it (authorization code with PKCE S256, which SMART v2 requires of it) and names its issuer.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from medtwin.api.deps import Svc

router = APIRouter(tags=["smart"])

#: Scopes medtwin enforces (v2 forms; the v1 forms read/write/* are accepted as well).
SCOPES = ["patient/*.cruds", "patient/*.rs", "user/*.cruds", "user/*.rs", "system/*.cruds",
          "system/*.rs"]
PERMISSIONS = ["permission-v1", "permission-v2", "permission-patient", "permission-user"]


def smart_document(base: str, svc: Svc) -> dict[str, Any]:
    """The SMART configuration of the service reached at ``base``."""
    s = svc.settings
    doc: dict[str, Any] = {
        "token_endpoint": f"{base}/auth/token",
        "grant_types_supported": ["password"],
        "capabilities": list(PERMISSIONS),
        "scopes_supported": list(SCOPES),
    }
    if svc.oidc is not None:
        doc["issuer"] = svc.oidc.issuer
        if svc.oidc.jwks.startswith(("https://", "http://")):
            doc["jwks_uri"] = svc.oidc.jwks
        if s.oidc_authorization_endpoint and s.oidc_token_endpoint:
            doc.update({
                "authorization_endpoint": s.oidc_authorization_endpoint,
                "token_endpoint": s.oidc_token_endpoint,
                "grant_types_supported": ["authorization_code"],
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "capabilities": ["launch-standalone", "context-standalone-patient",
                                 *PERMISSIONS],
                "scopes_supported": [*SCOPES, "launch/patient"],
            })
    return doc


@router.get("/.well-known/smart-configuration", response_class=JSONResponse)
@router.get("/fhir/.well-known/smart-configuration", response_class=JSONResponse,
            include_in_schema=False)
def smart_configuration(request: Request, svc: Svc) -> JSONResponse:
    """SMART on FHIR discovery: where to get tokens, which scopes and capabilities work."""
    base = str(request.base_url).rstrip("/")
    return JSONResponse(smart_document(base, svc),
                        headers={"Cache-Control": "public, max-age=300"})
