"""External OpenID Connect access tokens: verified against the provider's JWKS (served on
127.0.0.1 or read from a file), with every forged or misdirected token refused."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from tests.security.oidc_provider import AUDIENCE, ISSUER, Provider

from medtwin.security.oidc import OidcVerifier
from medtwin.security.tokens import TokenError


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp():
    p = Provider()
    p.add_key("k1", "RSA")
    p.add_key("e1", "EC")
    yield p
    p.close()


@pytest.fixture
def served(idp):
    """(provider, verifier over its HTTP JWKS, clock)."""
    clock = Clock()
    v = OidcVerifier(ISSUER, AUDIENCE, idp.serve(), min_refresh_seconds=60,
                     cache_seconds=3600, clock=clock)
    return idp, v, clock


def test_valid_rs256_and_es256_tokens_name_their_user_scopes_and_patient(served):
    idp, v, _ = served
    ident = v.verify(idp.token("k1", sub="dr_a", scope="patient/Observation.rs launch/patient",
                               patient="p1"))
    assert (ident.user, ident.scope, ident.patient) == (
        "dr_a", "patient/Observation.rs launch/patient", "p1")
    ident = v.verify(idp.token("e1", sub="pat1", scope=None, extra={"scp": ["user/*.rs"]}))
    assert (ident.user, ident.scope, ident.patient) == ("pat1", "user/*.rs", None)


def test_the_user_claim_is_configurable(idp):
    v = OidcVerifier(ISSUER, AUDIENCE, idp.serve(), user_claim="preferred_username")
    assert v.verify(idp.token(sub="0f3c-uuid", extra={"preferred_username": "dr_a"})
                    ).user == "dr_a"
    with pytest.raises(TokenError, match="preferred_username"):
        v.verify(idp.token(sub="0f3c-uuid"))


def _unsigned(claims: dict, header: dict) -> str:
    enc = [base64.urlsafe_b64encode(json.dumps(x).encode()).rstrip(b"=").decode()
           for x in (header, claims)]
    return f"{enc[0]}.{enc[1]}."


def test_alg_none_is_refused(served):
    idp, v, _ = served
    good = jwt.decode(idp.token(), options={"verify_signature": False})
    with pytest.raises(TokenError, match="algorithm 'none'"):
        v.verify(_unsigned(good, {"alg": "none", "kid": "k1", "typ": "JWT"}))


def test_hs256_signed_with_the_public_key_is_refused(served):
    idp, v, _ = served
    claims = jwt.decode(idp.token(), options={"verify_signature": False})
    forged = _hs256(claims, idp.public_pem("k1"))  # PyJWT refuses to make it: by hand
    with pytest.raises(TokenError, match="HS256"):
        v.verify(forged)


def _hs256(claims: dict, secret: bytes) -> str:
    import hashlib
    import hmac

    header = {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    enc = [base64.urlsafe_b64encode(json.dumps(x).encode()).rstrip(b"=") for x in (header, claims)]
    signing = b".".join(enc)
    sig = base64.urlsafe_b64encode(hmac.new(secret, signing, hashlib.sha256).digest()).rstrip(b"=")
    return (signing + b"." + sig).decode()


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(served):
    idp, v, _ = served
    idp.add_key("rogue", "RSA", publish=False)
    idp.private["k1"], real = idp.private["rogue"], idp.private["k1"]
    forged = idp.token("k1")
    idp.private["k1"] = real
    with pytest.raises(TokenError, match="invalid token"):
        v.verify(forged)


def test_an_rsa_kid_with_an_es256_header_is_refused(served):
    idp, v, _ = served
    idp.private["k1"], real = idp.private["e1"], idp.private["k1"]
    token = idp.token("k1")  # ES256 with the EC key, under the RSA key's kid
    idp.private["k1"] = real
    with pytest.raises(TokenError, match="not a ES256 key"):
        v.verify(token)


@pytest.mark.parametrize(("kw", "match"), [
    ({"ttl": -120}, "expired"),
    ({"aud": "another-api"}, "audience"),
    ({"iss": "https://evil.example/"}, "issuer"),
])
def test_expired_wrong_audience_and_wrong_issuer_are_refused(served, kw, match):
    idp, v, _ = served
    with pytest.raises(TokenError, match=match):
        v.verify(idp.token(**kw))


def test_a_token_without_expiry_is_refused(served):
    idp, v, _ = served
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "dr_a"}
    token = jwt.encode(claims, idp.private["k1"], algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(TokenError, match="exp"):
        v.verify(token)


def test_unknown_kid_is_refused_and_refetches_at_most_once_per_interval(served):
    idp, v, clock = served
    v.verify(idp.token("k1"))
    assert idp.fetches == 1
    idp.add_key("ghost", publish=False)
    clock.now += 61
    with pytest.raises(TokenError, match="unknown signing key id 'ghost'"):
        v.verify(idp.token("ghost"))
    assert idp.fetches == 2  # the unknown kid made one refetch
    for _ in range(20):  # a flood of forged kids within the interval: no more fetches
        with pytest.raises(TokenError, match="unknown signing key"):
            v.verify(idp.token("ghost"))
    assert idp.fetches == 2


def test_key_rotation_new_kid_is_fetched_and_a_removed_kid_stops_working(served):
    idp, v, clock = served
    old = idp.token("k1")
    assert v.verify(old).user == "dr_a"
    # the provider adds k2 and drops k1
    idp.add_key("k2", "RSA")
    idp.unpublish("k1")
    clock.now += 61
    assert v.verify(idp.token("k2", sub="dr_b")).user == "dr_b"  # the new kid: refetched
    with pytest.raises(TokenError, match="unknown signing key id 'k1'"):
        v.verify(old)  # the refetched set no longer holds k1


def test_a_removed_key_expires_from_the_cache_without_a_new_kid(served):
    idp, v, clock = served
    old = idp.token("k1")
    v.verify(old)
    idp.unpublish("k1")
    clock.now += 100
    assert v.verify(old).user == "dr_a"  # cached for cache_seconds
    clock.now += 3600
    with pytest.raises(TokenError, match="unknown signing key id 'k1'"):
        v.verify(old)


def test_jwks_from_a_file(idp, tmp_path):
    path = idp.write(tmp_path / "jwks.json")
    v = OidcVerifier(ISSUER, AUDIENCE, path)
    assert v.verify(idp.token("e1", sub="res")).user == "res"


def test_an_unreadable_jwks_refuses_tokens_with_a_clear_reason(idp, tmp_path):
    v = OidcVerifier(ISSUER, AUDIENCE, str(tmp_path / "missing.json"))
    with pytest.raises(TokenError, match="unknown signing key"):
        v.verify(idp.token("k1"))


def test_token_issued_by_routes_on_the_unverified_issuer(served):
    idp, v, _ = served
    assert v.issued(idp.token())
    assert not v.issued(idp.token(iss="medtwin"))
    assert not v.issued("not-a-jwt")
