"""A store with a key ring on SQLite and on PostgreSQL (fresh schema per test)."""

from __future__ import annotations

import pytest

from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def secure_store(request, tmp_path):
    """(store, db address, schema) with encryption on."""
    ring = KeyRing.generate()
    if request.param == "sqlite":
        db, schema = str(tmp_path / "secure.sqlite"), None
    else:
        db, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")
    s = EventStore.open(db, schema=schema, keyring=ring)
    yield s, db, schema
    s.close()
