"""The service accepts access tokens from a configured OpenID Connect provider (its JWKS made
in the test), maps them to medtwin users by a claim, and refuses everything else."""

from __future__ import annotations

import pytest
from tests.api.conftest import login
from tests.api.smart_world import audit, bearer, oidc_service, tok
from tests.security.oidc_provider import ISSUER

from medtwin.api.settings import Settings
from medtwin.core.errors import ValidationError


@pytest.fixture
def oidc_world(tmp_path):
    with oidc_service(tmp_path) as world:
        yield world


def test_a_valid_external_token_acts_as_the_mapped_medtwin_user(oidc_world):
    client, idp = oidc_world
    r = client.get("/patients/p1", headers=bearer(tok(idp, "dr_a", kid="e1")))
    assert r.status_code == 200, r.text
    e = [x for x in audit(client) if x.resource == "Patient" and x.outcome == "success"][-1]
    assert e.actor == "clinician:dr_a"  # the medtwin user, not the provider's subject


def test_the_role_comes_from_medtwin_never_from_a_token_claim(oidc_world):
    client, idp = oidc_world
    t = idp.token("k1", sub="x", extra={"preferred_username": "pat1", "role": "admin",
                                        "roles": ["admin"]})
    assert client.get("/users", headers=bearer(t)).status_code == 403
    assert client.get("/patients/p2", headers=bearer(t)).status_code == 404


def test_unknown_external_users_are_refused_and_audited(oidc_world):
    client, idp = oidc_world
    r = client.get("/patients/p1", headers=bearer(tok(idp, "stranger")))
    assert r.status_code == 401
    e = [x for x in audit(client) if x.resource == "oidc"][-1]
    assert e.outcome == "denied" and "'stranger'" in e.detail and ISSUER in e.detail


def test_a_disabled_user_is_refused_even_with_a_valid_external_token(oidc_world):
    client, idp = oidc_world
    client.app.state.services.directory.disable("dr_b")
    assert client.get("/patients/p2", headers=bearer(tok(idp, "dr_b"))).status_code == 401


@pytest.mark.parametrize("kw", [{"ttl": -120}, {"aud": "other"}])
def test_expired_and_misdirected_external_tokens_get_401(oidc_world, kw):
    client, idp = oidc_world
    r = client.get("/patients/p1", headers=bearer(tok(idp, "dr_a", **kw)))
    assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]


def test_an_unknown_kid_gets_401(oidc_world):
    client, idp = oidc_world
    idp.add_key("unpublished", publish=False)
    r = client.get("/patients/p1", headers=bearer(tok(idp, "dr_a", kid="unpublished")))
    assert r.status_code == 401 and "unknown signing key" in r.json()["detail"]


def test_a_key_added_by_the_provider_is_accepted_at_once(oidc_world):
    client, idp = oidc_world
    assert client.get("/patients/p1", headers=bearer(tok(idp, "dr_a"))).status_code == 200
    idp.add_key("k2", "EC")  # rotation: first use of the new kid refetches the JWKS
    client.app.state.services.oidc.min_refresh_seconds = 0
    assert client.get("/patients/p1", headers=bearer(tok(idp, "dr_a", kid="k2"))
                      ).status_code == 200


def test_medtwin_own_tokens_still_work_next_to_the_provider(oidc_world):
    client, _ = oidc_world
    r = login(client, "dr_a")
    assert client.get("/patients/p1", headers=bearer(r.json()["access_token"])
                      ).status_code == 200


def test_partial_provider_settings_are_refused():
    with pytest.raises(ValidationError, match="OIDC_AUDIENCE"):
        Settings.from_env({"MEDTWIN_OIDC_ISSUER": ISSUER})
    with pytest.raises(ValidationError, match="cannot be 'medtwin'"):
        Settings.from_env({"MEDTWIN_OIDC_ISSUER": "medtwin", "MEDTWIN_OIDC_AUDIENCE": "a",
                           "MEDTWIN_OIDC_JWKS": "/x.json"})
