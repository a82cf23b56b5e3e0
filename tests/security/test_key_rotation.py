"""A running service follows a rotated key file (WatchedKeyRing), and token signing keys
rotate by ``kid`` with the old key still verifying its tokens until they expire."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from medtwin.security.crypto import KeyRingError, WatchedKeyRing, create_key_file, load_key_file
from medtwin.security.tokens import TokenError, TokenIssuer

SECRET = "s" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_rotated_key_file_is_picked_up_after_the_check_interval(tmp_path):
    path = tmp_path / "keys.json"
    create_key_file(path)
    clock = Clock()
    ring = WatchedKeyRing(path, check_seconds=1.0, clock=clock)
    old = ring.current
    sealed_old = ring.encrypt_json({"name": "Ada"}, context="p1")
    rotated = load_key_file(path).rotated()
    rotated.save(path)
    assert ring.current == old  # not checked yet: no stat on every call
    clock.now = 1.5
    assert ring.current == rotated.current != old
    assert ring.key_of(ring.encrypt_json({"x": 1}, context="p1")) == rotated.current
    assert ring.decrypt_json(sealed_old, context="p1") == {"name": "Ada"}


def test_a_value_under_an_unknown_key_rereads_the_file_at_once(tmp_path):
    path = tmp_path / "keys.json"
    create_key_file(path)
    ring = WatchedKeyRing(path, check_seconds=3600.0, clock=Clock())
    rotated = load_key_file(path).rotated()
    rotated.save(path)  # another process (``medtwin keys rotate``) rotates and reseals
    sealed_new = rotated.encrypt_json({"name": "Ada"}, context="p1")
    assert ring.decrypt_json(sealed_new, context="p1") == {"name": "Ada"}
    assert ring.current == rotated.current


def test_an_unknown_key_with_an_unchanged_file_still_fails_with_the_reason(tmp_path):
    path = tmp_path / "keys.json"
    create_key_file(path)
    ring = WatchedKeyRing(path, check_seconds=0.0, clock=Clock())
    stranger = load_key_file(path).rotated()  # never saved
    token = stranger.encrypt_json({"a": 1}, context="p1")
    with pytest.raises(KeyRingError, match="restore the key file"):
        ring.decrypt_json(token, context="p1")


def test_a_broken_key_file_keeps_the_keys_in_use(tmp_path, caplog):
    path = tmp_path / "keys.json"
    create_key_file(path)
    clock = Clock()
    ring = WatchedKeyRing(path, check_seconds=1.0, clock=clock)
    before = ring.current
    sealed = ring.encrypt_json({"a": 1}, context="p1")
    path.write_text("{not json")
    os.chmod(path, 0o600)
    clock.now = 2.0
    assert ring.current == before
    assert ring.decrypt_json(sealed, context="p1") == {"a": 1}
    assert "could not be reloaded" in caplog.text


def test_tokens_rotate_by_kid_and_old_tokens_verify_until_they_expire(tmp_path):
    path = tmp_path / "keys.json"
    create_key_file(path)
    clock = Clock()
    ring = WatchedKeyRing(path, check_seconds=1.0, clock=clock)
    issuer = TokenIssuer(SECRET, keys=ring)
    old_token = issuer.issue("u1", "clinician", 0, session="s1")
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    assert old_kid == ring.current

    rotated = load_key_file(path).rotated()
    rotated.save(path)
    clock.now = 2.0
    new_token = issuer.issue("u1", "clinician", 0, session="s1")
    assert jwt.get_unverified_header(new_token)["kid"] == rotated.current != old_kid
    assert issuer.verify(old_token).user_id == "u1"  # the old key still verifies
    assert issuer.verify(new_token).user_id == "u1"

    # the old key dropped from the file (after re-encryption): its tokens still verify
    rotated.without_old_keys().save(path)
    clock.now = 4.0
    fresh = TokenIssuer(SECRET, keys=WatchedKeyRing(path))  # e.g. a worker started later
    assert old_kid not in fresh._keys.keys  # type: ignore[union-attr]
    assert fresh.verify(old_token).user_id == "u1"
    # ... until they expire
    expired = issuer.issue("u1", "clinician", 0, session="s1",
                           now=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(TokenError, match="expired"):
        fresh.verify(expired)


def test_a_token_under_another_secret_or_an_unknown_kid_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    create_key_file(path)
    ring = WatchedKeyRing(path)
    token = TokenIssuer(SECRET, keys=ring).issue("u1", "admin", 0)
    with pytest.raises(TokenError, match="invalid token"):
        TokenIssuer("t" * 40, keys=ring).verify(token)  # same kid, another service secret
    forged = jwt.encode({"iss": "medtwin", "sub": "u1", "typ": "access", "ver": 0, "iat": 0,
                         "exp": 2**40}, SECRET, algorithm="HS256", headers={"kid": "nope"})
    with pytest.raises(TokenError, match="does not hold"):
        TokenIssuer(SECRET, keys=ring).verify(forged)
    # a token signed with the bare secret (no kid) is refused once a key ring signs
    bare = TokenIssuer(SECRET).issue("u1", "admin", 0)
    with pytest.raises(TokenError):
        TokenIssuer(SECRET, keys=ring).verify(bare)
