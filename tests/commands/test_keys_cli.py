"""Issue 12, finding 6: the CLI, finding no key, silently made a new key file and imported
into an existing store under it, so the store's identities ended up split across two keys.
Now a key is only made by `medtwin keys generate`, and a store refuses a key ring that does
not hold the key its identities are sealed with."""

from __future__ import annotations

import json
import stat

import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.interop.fhir.synthetic import generate_patients, write_bundles
from medtwin.security.crypto import KeyRing, load_key_file
from medtwin.security.store_keys import sealed_key_ids
from medtwin.store.event_store import EventStore

runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """No key configured, and an empty user data directory (where the default key file
    would be)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for name in ("MEDTWIN_KEY", "MEDTWIN_KEY_FILE", "MEDTWIN_AUDIT_ANCHOR_FILE"):
        monkeypatch.delenv(name, raising=False)
    default = tmp_path / "data" / "medtwin" / "keys.json"
    first, second = (write_bundles(generate_patients(1, seed=s, days=1), tmp_path / f"b{s}")
                     for s in (1, 2))
    return tmp_path, default, first, second


def _ids(db) -> list[str]:
    with EventStore.open(db) as s:
        return sorted(s.patients()["id"])


def test_no_key_for_a_sealed_store_is_refused_and_no_key_is_made(home, monkeypatch):
    tmp, default, first, second = home
    db = str(tmp / "ward.sqlite")
    keyfile = tmp / "site-keys.json"
    KeyRing.generate().save(keyfile)
    kid = load_key_file(keyfile).current
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(keyfile))
    assert runner.invoke(app, ["import", *map(str, first), "--db", db]).exit_code == 0
    before = _ids(db)
    # the attack: the same import a day later from a shell without MEDTWIN_KEY_FILE
    monkeypatch.delenv("MEDTWIN_KEY_FILE")
    out = runner.invoke(app, ["import", *map(str, second), "--db", db])
    assert out.exit_code == 2
    assert f"sealed with key {kid}" in out.output and "MEDTWIN_KEY_FILE" in out.output
    assert not default.exists()  # no key file was made behind the operator's back
    assert _ids(db) == before and sealed_key_ids(EventStore.open(db).engine) == {kid}


def test_another_key_ring_is_refused_naming_both(home, monkeypatch):
    tmp, _, first, second = home
    db = str(tmp / "ward.sqlite")
    a, b = tmp / "a.json", tmp / "b.json"
    KeyRing.generate().save(a)
    KeyRing.generate().save(b)
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(a))
    assert runner.invoke(app, ["import", *map(str, first), "--db", db]).exit_code == 0
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(b))
    for cmd in (["import", *map(str, second)], ["patients"], ["user", "list"],
                ["audit", "verify"]):
        out = runner.invoke(app, [*cmd, "--db", db])
        assert out.exit_code == 2, (cmd, out.output)
        assert (f"sealed with key {load_key_file(a).current}; the key ring at {b} does not "
                "hold it: restore the key file or set MEDTWIN_KEY_FILE") in out.output
    with EventStore.open(db) as s:
        assert sealed_key_ids(s.engine) == {load_key_file(a).current}
        assert len(s.patients()) == 1


def test_a_fresh_store_without_a_key_says_which_command_makes_one(home):
    tmp, default, first, _ = home
    db = str(tmp / "new.sqlite")
    out = runner.invoke(app, ["import", *map(str, first), "--db", db, "--json"])
    assert out.exit_code != 0 and "medtwin keys generate" in out.output, out.output
    assert not default.exists() and _ids(db) == []  # nothing stored in the clear either
    out = runner.invoke(app, ["user", "list", "--db", db])
    assert out.exit_code == 2 and "medtwin keys generate" in out.output
    assert runner.invoke(app, ["patients", "--db", db]).exit_code == 0  # needs no key


def test_keys_generate_is_explicit_private_and_never_overwrites(home, monkeypatch):
    tmp, default, first, _ = home
    out = runner.invoke(app, ["keys", "generate"])
    assert out.exit_code == 0 and str(default) in out.output
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    ring = load_key_file(default)
    again = runner.invoke(app, ["keys", "generate"])
    assert again.exit_code == 2 and "already exists" in again.output
    assert load_key_file(default) == ring  # untouched
    other = tmp / "elsewhere" / "k.json"
    assert runner.invoke(app, ["keys", "generate", "--out", str(other)]).exit_code == 0
    assert load_key_file(other).current != ring.current
    db = str(tmp / "w.sqlite")  # the default key file is now found and used
    report = runner.invoke(app, ["import", *map(str, first), "--db", db, "--json"])
    assert report.exit_code == 0 and json.loads(report.stdout)["patients_added"] == 1
    with EventStore.open(db) as s:
        assert sealed_key_ids(s.engine) == {ring.current}
