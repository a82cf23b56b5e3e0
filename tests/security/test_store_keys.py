"""The key check at open reads which keys the store's identities are sealed with, in the
database, on SQLite and PostgreSQL; rotation moves them to the new key."""

from __future__ import annotations

import pytest

from medtwin.core.records import Patient
from medtwin.security.crypto import KeyRing
from medtwin.security.store_keys import StoreKeyError, check_store_keys, sealed_key_ids


def test_sealed_key_ids_and_the_check(secure_store):
    store, _, _ = secure_store
    ring = store.keyring
    check_store_keys(store.engine, KeyRing.generate())  # nothing sealed yet: any ring will do
    store.append([Patient(id=f"p{i}", source_id=f"Patient/p{i}",
                          identity={"name": [{"family": "Noether"}]}) for i in range(3)])
    assert sealed_key_ids(store.engine) == {ring.current}
    check_store_keys(store.engine, ring)
    with pytest.raises(StoreKeyError, match=f"sealed with key {ring.current}; the key ring in "
                       "use does not hold it"):
        check_store_keys(store.engine, KeyRing.generate())
    with pytest.raises(StoreKeyError, match="no key is configured"):
        check_store_keys(store.engine, None)
    new = ring.rotated()
    store.reseal_identities(new)
    assert sealed_key_ids(store.engine) == {new.current}
    check_store_keys(store.engine, new.without_old_keys())
