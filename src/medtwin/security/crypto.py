"""Encryption of identifying fields at rest: AES-256-GCM under keys kept outside the database.

A :class:`KeyRing` holds named 256-bit keys and which one is current. New data is sealed
under the current key; any key of the ring opens what it sealed, so rotation can re-encrypt
at leisure. Keys come from ``MEDTWIN_KEY`` (one base64 key) or a JSON key file
(``MEDTWIN_KEY_FILE``, else ``keys.json`` in the user data directory). A key file is only
ever made on purpose (``medtwin keys generate``): a missing key is an error that names that
command, never a reason to make a new key (identities would end up split across two keys).

The ring also holds the secret that keys pseudonyms and date shifts of de-identification, so
those stay stable across key rotations, and derives (HKDF-SHA256) the key of the audit
chain's HMACs from each of its keys; when an old key is dropped its derived audit key is kept,
so the audit trail written under it can still be verified.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medtwin.core.errors import MedtwinError

log = logging.getLogger(__name__)

PREFIX = "mtenc1"
ENV_KEY = "MEDTWIN_KEY"
ENV_KEY_FILE = "MEDTWIN_KEY_FILE"
GENERATE_HINT = "create one with `medtwin keys generate` (or set MEDTWIN_KEY_FILE)"
_AUDIT_INFO = b"medtwin-audit-chain-1"
_TOKEN_INFO = b"medtwin-token-root-1"


class KeyRingError(MedtwinError):
    """A key is missing, malformed, or does not open the data (wrong key or tampered data)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return AESGCM.generate_key(bit_length=256)


class NoKeyError(KeyRingError):
    """No key is configured and there is no key file (a key is only ever made on purpose)."""


def derive_audit_key(key: bytes) -> bytes:
    """The audit chain's HMAC key derived from an encryption key (HKDF-SHA256; one-way, so
    it opens no identity)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_AUDIT_INFO).derive(key)


def derive_token_root(key: bytes) -> bytes:
    """The root of the token-signing keys of key ``key`` (HKDF-SHA256, one-way); the
    service mixes in its secret (:meth:`KeyRing.token_key`)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_TOKEN_INFO).derive(key)


@functools.lru_cache(maxsize=16)
def _aead(key: bytes) -> AESGCM:
    """The AES-GCM cipher of ``key``, built once (building one costs more than sealing a
    small value: stores seal and open one value per row)."""
    return AESGCM(key)


def key_id(key: bytes) -> str:
    """A short public name of a key (a hash prefix; reveals nothing of the key)."""
    return hashlib.sha256(b"medtwin-key-id\x00" + key).hexdigest()[:12]


@dataclass(frozen=True)
class KeyRing:
    """Named AES-256 keys, the current one, the pseudonym secret, and the audit keys of
    keys that were dropped (to verify what was written under them)."""

    keys: Mapping[str, bytes]
    current: str
    pseudonym_secret: bytes
    retired_audit_keys: Mapping[str, bytes] = field(default_factory=dict)
    retired_token_roots: Mapping[str, bytes] = field(default_factory=dict)
    source: str = field(default="the key ring", compare=False)
    file: Path | None = field(default=None, compare=False)  # the key file it was read from

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise KeyRingError(f"current key {self.current!r} is not in the key ring")
        for kid, key in self.keys.items():
            if len(key) != 32:
                raise KeyRingError(f"key {kid!r} must be 32 bytes (AES-256), got {len(key)}")

    @classmethod
    def generate(cls) -> KeyRing:
        """A new ring with one random key."""
        key = new_key()
        return cls({key_id(key): key}, key_id(key), secrets.token_bytes(32))

    @classmethod
    def from_key(cls, key: bytes) -> KeyRing:
        """A ring of one key; the pseudonym secret is derived from it."""
        secret = hmac.new(key, b"medtwin-pseudonyms", hashlib.sha256).digest()
        return cls({key_id(key): key}, key_id(key), secret, source=ENV_KEY)

    # --- the audit chain's keys -------------------------------------------------------------
    def audit_key(self, kid: str) -> bytes | None:
        """The HMAC key of the audit chain under key id ``kid`` (None when not in the ring)."""
        if kid in self.keys:
            return derive_audit_key(self.keys[kid])
        return self.retired_audit_keys.get(kid)

    def audit_key_ids(self) -> set[str]:
        """Every key id whose audit entries this ring can verify."""
        return set(self.keys) | set(self.retired_audit_keys)

    # --- token signing keys -----------------------------------------------------------------
    def token_key(self, kid: str, secret: bytes) -> bytes | None:
        """The key that signs the service's tokens under key id ``kid`` (None when neither the
        ring nor its retired token roots hold it): a rotation of the ring rotates the token
        keys, and a dropped key's tokens still verify until they expire."""
        if kid in self.keys:
            root = derive_token_root(self.keys[kid])
        elif kid in self.retired_token_roots:
            root = self.retired_token_roots[kid]
        else:
            return None
        return hmac.new(root, secret, hashlib.sha256).digest()

    # --- sealing ----------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes, *, context: str) -> str:
        """Seal ``plaintext`` under the current key; ``context`` (e.g. the patient id) is bound
        as associated data, so a ciphertext moved to another row no longer opens."""
        nonce = secrets.token_bytes(12)
        ct = _aead(self.keys[self.current]).encrypt(nonce, plaintext, context.encode())
        return f"{PREFIX}:{self.current}:{_b64(nonce + ct)}"

    def decrypt(self, token: str, *, context: str) -> bytes:
        """Open a sealed value; :class:`KeyRingError` if no key of the ring opens it."""
        try:
            prefix, kid, body = token.split(":", 2)
        except ValueError:
            raise KeyRingError("not an encrypted value") from None
        if prefix != PREFIX:
            raise KeyRingError(f"unknown encryption format {prefix!r}")
        key = self.keys.get(kid)
        if key is None:
            raise KeyRingError(f"the data was sealed with key {kid!r}, which is not in the key "
                            "ring; restore the key file that holds it")
        raw = _unb64(body)
        try:
            return _aead(key).decrypt(raw[:12], raw[12:], context.encode())
        except InvalidTag:
            raise KeyRingError("the encrypted value does not open: it was changed or moved "
                            "(authentication failed)") from None

    def encrypt_json(self, value: Any, *, context: str) -> str:
        """Seal a JSON-ready value."""
        return self.encrypt(json.dumps(value, sort_keys=True).encode(), context=context)

    def decrypt_json(self, token: str, *, context: str) -> Any:
        """Open a value sealed by :meth:`encrypt_json`."""
        return json.loads(self.decrypt(token, context=context))

    def key_of(self, token: str) -> str:
        """The id of the key a sealed value was sealed with."""
        return token.split(":", 2)[1]

    def rotated(self) -> KeyRing:
        """A ring with a new current key; old keys stay so existing data still opens."""
        key = new_key()
        return replace(self, keys={**self.keys, key_id(key): key}, current=key_id(key))

    def without_old_keys(self) -> KeyRing:
        """The ring reduced to its current key (after every value was re-encrypted); the
        audit keys derived from the dropped keys stay, so the audit trail still verifies."""
        dropped = {kid: k for kid, k in self.keys.items() if kid != self.current}
        retired = {**self.retired_audit_keys,
                   **{kid: derive_audit_key(k) for kid, k in dropped.items()}}
        roots = {**self.retired_token_roots,
                 **{kid: derive_token_root(k) for kid, k in dropped.items()}}
        return replace(self, keys={self.current: self.keys[self.current]},
                       retired_audit_keys=retired, retired_token_roots=roots)

    # --- files ------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The key file content."""
        data: dict[str, Any] = {"format": "medtwin-keyring-1", "current": self.current,
                                "keys": {k: _b64(v) for k, v in self.keys.items()},
                                "pseudonym_secret": _b64(self.pseudonym_secret)}
        if self.retired_audit_keys:
            data["retired_audit_keys"] = {k: _b64(v) for k, v in
                                          self.retired_audit_keys.items()}
        if self.retired_token_roots:
            data["retired_token_roots"] = {k: _b64(v) for k, v in
                                           self.retired_token_roots.items()}
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, *, where: str = "key file") -> KeyRing:
        """Parse a key file."""
        try:
            data = json.loads(text)
            return cls({k: _unb64(v) for k, v in data["keys"].items()}, data["current"],
                       _unb64(data["pseudonym_secret"]),
                       {k: _unb64(v) for k, v in data.get("retired_audit_keys", {}).items()},
                       {k: _unb64(v) for k, v in data.get("retired_token_roots", {}).items()},
                       source=where)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyRingError(f"{where} is not a medtwin key file: {exc}") from None

    def save(self, path: Path) -> None:
        """Write the key file atomically with owner-only (0600) permissions."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def default_key_file() -> Path:
    """``keys.json`` in the user data directory (used when no key is configured)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("medtwin", appauthor=False)) / "keys.json"


def load_key_file(path: Path) -> KeyRing:
    """Read a key file; refuse one that others can read."""
    try:
        mode = path.stat().st_mode & 0o077
        text = path.read_text()
    except FileNotFoundError:
        raise NoKeyError(f"there is no key file at {path}; create one with `medtwin keys "
                         f"generate --out {path}` (or point MEDTWIN_KEY_FILE at the existing "
                         "one)") from None
    except OSError as exc:
        raise KeyRingError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode:
        raise KeyRingError(f"key file {path} is readable by others; run `chmod 600 {path}`")
    return replace(KeyRing.from_json(text, where=str(path)), file=path)


def create_key_file(path: Path) -> KeyRing:
    """Make a new key file at ``path`` (0600); refuse to replace an existing one (its keys
    may be the only way to open what was sealed under them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ring = KeyRing.generate()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ring.to_json())
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # atomic: fails if the file exists, never leaves half a file
    except FileExistsError:
        raise KeyRingError(f"a key file already exists at {path}; it is not replaced (what "
                           "was sealed under it would be lost): choose another --out") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created a new encryption key file at %s; back it up: without it the "
                "identifying fields stored under it cannot be read", path)
    return load_key_file(path)


def configured_key_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The key file in use: ``MEDTWIN_KEY_FILE``, else the default one (None when the key
    comes from ``MEDTWIN_KEY``)."""
    env = os.environ if env is None else env
    if env.get(ENV_KEY):
        return None
    if env.get(ENV_KEY_FILE):
        return Path(env[ENV_KEY_FILE]).expanduser()
    return default_key_file()


def load_keyring(env: Mapping[str, str] | None = None) -> KeyRing:
    """The key ring configured by ``MEDTWIN_KEY`` / ``MEDTWIN_KEY_FILE``, else the default
    key file; :class:`NoKeyError` (naming ``medtwin keys generate``) when there is none."""
    env = os.environ if env is None else env
    if env.get(ENV_KEY):
        try:
            key = _unb64(env[ENV_KEY].strip())
        except ValueError:
            raise KeyRingError(f"{ENV_KEY} is not base64") from None
        if len(key) != 32:
            raise KeyRingError(f"{ENV_KEY} must be a base64 32-byte key; make one with "
                            "`python -c 'import secrets,base64;print(base64.urlsafe_b64encode("
                            "secrets.token_bytes(32)).decode())'`")
        return KeyRing.from_key(key)
    if env.get(ENV_KEY_FILE):
        return load_key_file(Path(env[ENV_KEY_FILE]).expanduser())
    path = default_key_file()
    if not path.exists():
        raise NoKeyError(f"no encryption key: {ENV_KEY} and {ENV_KEY_FILE} are not set and "
                         f"there is no key file at {path}; {GENERATE_HINT}")
    return load_key_file(path)


def key_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether a key was given explicitly (production refuses the implicit default file)."""
    env = os.environ if env is None else env
    return bool(env.get(ENV_KEY) or env.get(ENV_KEY_FILE))


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


class WatchedKeyRing:
    """The key ring of a key file, reloaded when the file changes, so that a running service
    follows ``medtwin keys rotate`` without a restart.

    The file's identity (inode, mtime, size) is checked at most every ``check_seconds``; a
    value sealed under a key id the ring does not hold makes it re-read the file at once (a
    rotation another process has just committed). A file that cannot be read or parsed
    keeps the ring in use (and is logged): a half-written or mistyped file never takes the
    keys away from a running service. Everything else is the current :class:`KeyRing`'s."""

    def __init__(self, path: Path, *, check_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.check_seconds = check_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = _stamp(path)
        self._ring = load_key_file(path)
        self._checked = clock()

    @property
    def ring(self) -> KeyRing:
        """The ring as of the key file's latest readable version."""
        if self._clock() - self._checked >= self.check_seconds:
            self.refresh()
        return self._ring

    def refresh(self) -> bool:
        """Re-read the key file if it changed; True when the ring was replaced."""
        with self._lock:
            self._checked = self._clock()
            try:
                stamp = _stamp(self.path)
                if stamp == self._stamp:
                    return False
                ring = load_key_file(self.path)
            except (OSError, KeyRingError) as exc:
                log.error("key file %s could not be reloaded (the keys in use are kept): %s",
                          self.path, exc)
                return False
            old, self._ring, self._stamp = self._ring, ring, stamp
        if ring.current != old.current or set(ring.keys) != set(old.keys):
            log.info("key file %s reloaded: current key %s, %d key(s)", self.path,
                     ring.current, len(ring.keys))
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ring, name)

    def token_key(self, kid: str, secret: bytes) -> bytes | None:
        """:meth:`KeyRing.token_key`, re-reading the file once for an unknown ``kid``."""
        key = self.ring.token_key(kid, secret)
        if key is None and self.refresh():
            key = self._ring.token_key(kid, secret)
        return key

    def decrypt(self, token: str, *, context: str) -> bytes:
        """:meth:`KeyRing.decrypt`, re-reading the file once when the value was sealed under
        a key the ring does not (yet) hold."""
        ring = self.ring
        try:
            kid = ring.key_of(token)
        except IndexError:
            kid = ""
        if kid and kid not in ring.keys and self.refresh():
            ring = self._ring
        return ring.decrypt(token, context=context)

    def decrypt_json(self, token: str, *, context: str) -> Any:
        """Open a value sealed by :meth:`KeyRing.encrypt_json`."""
        return json.loads(self.decrypt(token, context=context))


def watch_keyring(env: Mapping[str, str] | None = None) -> KeyRing | WatchedKeyRing:
    """The configured key ring (:func:`load_keyring`), watched for changes when it comes from
    a key file (a ``MEDTWIN_KEY`` is fixed for the life of the process)."""
    env = os.environ if env is None else env
    ring = load_keyring(env)
    if ring.file is None:
        return ring
    return WatchedKeyRing(ring.file)
