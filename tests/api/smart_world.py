"""A service trusting a test OpenID Connect provider (JWKS served on 127.0.0.1), for the
SMART and external-token tests: users dr_a (ward-a: p1, p2), dr_b (ward-b: p2), pat1
(patient p1) and root (admin)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient
from tests.api.conftest import PASSWORD, fast_settings, seed
from tests.security.oidc_provider import AUDIENCE, ISSUER, Provider

from medtwin.api.app import create_app
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore


@contextmanager
def oidc_service(tmp_path: Path) -> Iterator[tuple[TestClient, Provider]]:
    """(client, provider) of a fresh service; the provider has keys k1 (RSA), e1 (EC)."""
    idp = Provider()
    idp.add_key("k1", "RSA")
    idp.add_key("e1", "EC")
    keyring = KeyRing.generate()
    store = EventStore.open(tmp_path / "oidc.sqlite", keyring=keyring)
    seed(store)
    settings = fast_settings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks=idp.serve(),
                             oidc_user_claim="preferred_username",
                             oidc_authorization_endpoint=f"{ISSUER}/auth",
                             oidc_token_endpoint=f"{ISSUER}/token")
    app = create_app(settings, store, keyring)
    d = app.state.services.directory
    d.add_user("root", "admin", PASSWORD)
    a = d.add_user("dr_a", "clinician", PASSWORD)
    b = d.add_user("dr_b", "clinician", PASSWORD)
    d.add_user("pat1", "patient", PASSWORD, patient_id="p1")
    d.add_to_team("ward-a", user_id=a.id, patient_id="p1")
    d.add_to_team("ward-a", patient_id="p2")
    d.add_to_team("ward-b", user_id=b.id, patient_id="p2")
    try:
        with TestClient(app) as client:
            yield client, idp
    finally:
        store.close()
        idp.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tok(idp: Provider, user: str, **kw) -> str:
    """A provider token for medtwin user ``user`` (by preferred_username)."""
    return idp.token(kw.pop("kid", "k1"), extra={"preferred_username": user},
                     sub=f"idp-{user}", **kw)


def audit(client: TestClient):
    return client.app.state.services.audit.entries()
