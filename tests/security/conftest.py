"""A store with a key ring on SQLite and on PostgreSQL (fresh schema per test); the key ring
is in a key file named by MEDTWIN_KEY_FILE, so `medtwin audit verify` on the same store uses
the same key and the same anchor file."""

from __future__ import annotations

import pytest

from medtwin.security.audit import AuditLog
from medtwin.security.audit_anchor import anchor_sink
from medtwin.security.crypto import KeyRing, load_key_file
from medtwin.store.event_store import EventStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def secure_store(request, tmp_path, monkeypatch):
    """(store, db address, schema) with encryption on."""
    keyfile = tmp_path / "keys.json"
    KeyRing.generate().save(keyfile)
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(keyfile))
    monkeypatch.delenv("MEDTWIN_AUDIT_ANCHOR_FILE", raising=False)
    ring = load_key_file(keyfile)
    if request.param == "sqlite":
        db, schema = str(tmp_path / "secure.sqlite"), None
    else:
        db, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")
    s = EventStore.open(db, schema=schema, keyring=ring)
    yield s, db, schema
    s.close()


def _audit_log(store: EventStore, **kw) -> AuditLog:
    ring = store.keyring
    return AuditLog(store.engine, ring, anchor_sink(store.engine, configured=None,
                                                    key_file=ring.file), **kw)


@pytest.fixture
def audit_log():
    """``audit_log(store, **options)``: the store's audit chain as the service and the CLI
    build it (same key ring, same anchor file)."""
    return _audit_log
