"""The key check at the edge: a store whose identities are sealed under a key refuses to run
with a key ring that does not hold it (otherwise new identities would be sealed under another
key and the store's identities would end up split across two keys)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from medtwin.security.crypto import ENV_KEY, PREFIX, KeyRing, KeyRingError, NoKeyError
from medtwin.store import schema as t


class StoreKeyError(KeyRingError):
    """The store's identities are sealed with a key that the configured key ring lacks."""


def sealed_key_ids(engine: Engine) -> set[str]:
    """The ids of the keys the store's identities are sealed with (read in the database: the
    key id is the clear prefix ``mtenc1:<kid>:`` of each sealed value)."""
    enc = t.patient_identity.c.data["enc"].as_string()
    head = func.substr(enc, 1, len(PREFIX) + 34)
    with engine.connect() as conn:
        prefixes = conn.scalars(select(head).where(enc.is_not(None)).distinct()).all()
    out = set()
    for p in prefixes:
        parts = str(p).split(":")
        if len(parts) >= 3 and parts[0] == PREFIX:
            out.add(parts[1])
    return out


def check_store_keys(engine: Engine, keyring: KeyRing | None) -> None:
    """Raise :class:`StoreKeyError` when an identity of the store is sealed with a key that
    ``keyring`` does not hold (or when there is no key ring at all)."""
    missing = sorted(sealed_key_ids(engine) - (set(keyring.keys) if keyring else set()))
    if not missing:
        return
    kids = ", ".join(missing)
    if keyring is None:
        raise StoreKeyError(f"this store's identities are sealed with key {kids}; no key is "
                            "configured: restore the key file or set MEDTWIN_KEY_FILE")
    where = (f"at {keyring.file}" if keyring.file else
             f"from {ENV_KEY}" if keyring.source == ENV_KEY else "in use")
    raise StoreKeyError(f"this store's identities are sealed with key {kids}; the key ring "
                        f"{where} does not hold it: restore the key file or set "
                        "MEDTWIN_KEY_FILE")


class AbsentKeyRing:
    """Stands in for the key ring of a command run without one: whatever needs a key fails
    with the reason (naming ``medtwin keys generate``); nothing is ever sealed or stored
    in the clear for lack of a key."""

    def __init__(self, error: NoKeyError) -> None:
        self.error = error

    @property
    def pseudonym_secret(self) -> bytes:
        """Refuse: pseudonyms are keyed by the key ring."""
        raise self.error

    def encrypt_json(self, value: Any, *, context: str) -> str:
        """Refuse: there is no key to seal with."""
        raise self.error

    def decrypt_json(self, token: str, *, context: str) -> Any:
        """Refuse: there is no key to open with."""
        raise self.error
