"""AES-GCM at rest: round trips, binding to the patient, key files, rotation, and a raw
dump of the database that shows no identity."""

from __future__ import annotations

import json
import os
import stat

import pytest
from sqlalchemy import inspect, select, text

from medtwin.core.errors import StoreError
from medtwin.core.records import Patient
from medtwin.interop.importer import import_paths
from medtwin.security.crypto import KeyRing, KeyRingError, load_key_file, load_keyring
from medtwin.store import schema as t
from medtwin.store.event_store import EventStore

SYNTHEA = "fhir/synthea/Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json"


def _identity_strings(path) -> list[str]:
    data = json.loads(path.read_text())
    patient = next(e["resource"] for e in data["entry"]
                   if e["resource"]["resourceType"] == "Patient")
    out = []
    for n in patient["name"]:
        out += n.get("given", []) + [n["family"]]
    for a in patient.get("address", []):
        out += a.get("line", []) + [a["city"]]
    out += [tc["value"] for tc in patient.get("telecom", [])]
    out += [i["value"] for i in patient.get("identifier", []) if len(i["value"]) > 6]
    return [s for s in out if len(s) >= 4]


def test_seal_open_and_binding():
    ring = KeyRing.generate()
    token = ring.encrypt_json({"name": "Ada"}, context="p1")
    assert "Ada" not in token and ring.decrypt_json(token, context="p1") == {"name": "Ada"}
    with pytest.raises(KeyRingError, match="changed or moved"):
        ring.decrypt_json(token, context="p2")  # a ciphertext moved to another patient
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(KeyRingError):
        ring.decrypt_json(flipped, context="p1")
    with pytest.raises(KeyRingError, match="not in the key ring"):
        KeyRing.generate().decrypt_json(token, context="p1")


def test_key_sources(tmp_path):
    path = tmp_path / "keys.json"
    KeyRing.generate().save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring({"MEDTWIN_KEY_FILE": str(path)}).current == load_key_file(path).current
    os.chmod(path, 0o644)
    with pytest.raises(KeyRingError, match="chmod 600"):
        load_key_file(path)
    with pytest.raises(KeyRingError, match="32-byte"):
        load_keyring({"MEDTWIN_KEY": "c2hvcnQ"})
    import base64
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    a, b = load_keyring({"MEDTWIN_KEY": key}), load_keyring({"MEDTWIN_KEY": key})
    assert a.pseudonym_secret == b.pseudonym_secret  # stable pseudonyms from one env key


def test_rotation_reencrypts_without_loss(secure_store):
    store, _, _ = secure_store
    p = Patient(id="p1", source_id="Patient/p1", identity={"name": [{"family": "Lovelace"}]})
    store.append([p])
    new = store.keyring.rotated()
    assert store.reseal_identities(new) == 1
    with store.engine.connect() as conn:
        sealed = conn.scalar(select(t.patient_identity.c.data))["enc"]
    assert new.key_of(sealed) == new.current
    assert store.patient("p1").identity == p.identity
    only_new = new.without_old_keys()
    store.keyring = only_new
    assert store.patient("p1").identity == p.identity  # nothing needs the old key any more
    store.keyring = None
    with pytest.raises(StoreError, match="encrypted"):
        store.patient("p1")


def test_a_raw_dump_contains_no_identity(secure_store, reference):
    store, db, schema = secure_store
    bundle = reference / SYNTHEA
    summary = import_paths(store, [bundle])
    assert summary.patients_added == 1
    secrets = _identity_strings(bundle)
    assert secrets and any("Buster" in s or "Hoeger" in s for s in secrets)
    pid = store.patients()["id"][0]
    assert store.patient(pid).identity["name"][0]["family"].startswith("Hoeger")
    if schema is None:
        store.close()
        raw = b"".join(open(db + suffix, "rb").read() for suffix in ("", "-wal")
                       if os.path.exists(db + suffix))
        dump = raw.decode("latin-1")
    else:  # pg_dump-like: every row of every table of the schema, as text
        parts = []
        with store.engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                    parts.append(repr(tuple(row)))
        dump = "\n".join(parts)
    leaked = [s for s in secrets if s in dump]
    assert not leaked, leaked


def test_plain_store_without_key_still_works(tmp_path):
    with EventStore.open(tmp_path / "plain.sqlite") as s:
        s.append([Patient(id="x", source_id="Patient/x", identity={"name": "demo"})])
        assert s.patient("x").identity == {"name": "demo"}
