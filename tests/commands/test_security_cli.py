"""`medtwin user|key|audit|keys|serve`: the command-line side of the service's security."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.core.records import Patient
from medtwin.security.crypto import KeyRing, load_key_file
from medtwin.store.event_store import EventStore

runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    keyfile = tmp_path / "keys.json"
    KeyRing.generate().save(keyfile)
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(keyfile))
    monkeypatch.setenv("MEDTWIN_ARGON2_MEMORY_KIB", "256")
    monkeypatch.setenv("MEDTWIN_ARGON2_TIME_COST", "1")
    return str(tmp_path / "cli.sqlite"), keyfile


def test_user_add_list_disable_and_device_key(env):
    db, _ = env
    out = runner.invoke(app, ["user", "add", "alice", "--role", "clinician", "--team", "w1",
                              "--db", db], input="long enough pw\nlong enough pw\n")
    assert out.exit_code == 0, out.output
    short = runner.invoke(app, ["user", "add", "bob", "--role", "admin", "--db", db],
                          input="short\nshort\n")
    assert short.exit_code == 2 and "at least 10" in short.output
    listed = json.loads(runner.invoke(app, ["user", "list", "--db", db, "--json"]).output)
    assert listed == [{"username": "alice", "role": "clinician", "patient_id": None,
                       "disabled": False}]
    assert "hash" not in runner.invoke(app, ["user", "list", "--db", db]).output
    assert runner.invoke(app, ["user", "disable", "alice", "--db", db]).exit_code == 0
    assert json.loads(runner.invoke(app, ["user", "list", "--db", db, "--json"]).output
                      )[0]["disabled"] is True
    assert runner.invoke(app, ["user", "disable", "nobody", "--db", db]).exit_code == 2
    key = runner.invoke(app, ["key", "add", "--device", "cgm-7", "--patient", "p1", "--db", db])
    assert key.exit_code == 0 and key.output.startswith("mtk_")
    assert "bearer token, shown only now" in key.output  # issue 17: say what it is
    verify = runner.invoke(app, ["audit", "verify", "--db", db])
    assert verify.exit_code == 0 and "intact: 3 entries" in verify.output
    events = json.loads(runner.invoke(app, ["audit", "export", "--db", db]).output)
    assert len(events["entry"]) == 3


def test_keys_rotate_reencrypts_and_keeps_identities(env):
    db, keyfile = env
    ring = load_key_file(keyfile)
    with EventStore.open(db, keyring=ring) as s:
        s.append([Patient(id="p1", source_id="Patient/p1",
                          identity={"name": [{"family": "Curie"}]})])
    assert runner.invoke(app, ["key", "add", "--device", "d1", "--patient", "p1",
                               "--db", db]).exit_code == 0  # audited under the old key
    out = runner.invoke(app, ["keys", "rotate", "--db", db, "--drop-old"])
    assert out.exit_code == 0 and "re-encrypted 1" in out.output, out.output
    new = load_key_file(keyfile)
    assert new.current != ring.current and list(new.keys) == [new.current]
    exported = runner.invoke(app, ["export", "p1", "--db", db])
    assert exported.exit_code == 0 and "Curie" in exported.output
    # the old key is gone, the audit entries written under it still verify
    verify = runner.invoke(app, ["audit", "verify", "--db", db])
    assert verify.exit_code == 0 and "intact: 2 entries" in verify.output, verify.output


def test_serve_refuses_production_without_a_secret(env, monkeypatch):
    db, _ = env
    monkeypatch.setenv("MEDTWIN_MODE", "production")
    monkeypatch.delenv("MEDTWIN_SECRET", raising=False)
    out = runner.invoke(app, ["serve", "--db", db, "--port", "8999"])
    assert out.exit_code == 2 and "MEDTWIN_SECRET" in out.output
    monkeypatch.setenv("MEDTWIN_SECRET", "changeme")
    out = runner.invoke(app, ["serve", "--db", db, "--port", "8999"])
    assert out.exit_code == 2 and "MEDTWIN_SECRET" in out.output


def test_audit_anchor_and_verify_name_the_anchor_file(env):
    db, keyfile = env
    assert runner.invoke(app, ["audit", "anchor", "--db", db]).exit_code == 3  # no store
    assert runner.invoke(app, ["db", "upgrade", "--db", db]).exit_code == 0
    empty = runner.invoke(app, ["audit", "anchor", "--db", db])
    assert empty.exit_code == 2 and "nothing to anchor" in empty.output
    runner.invoke(app, ["key", "add", "--device", "d1", "--patient", "p1", "--db", db])
    out = runner.invoke(app, ["audit", "anchor", "--db", db])
    anchors = keyfile.parent / "audit-anchors"
    assert out.exit_code == 0 and "anchored entry #1" in out.output and str(anchors) in out.output
    report = json.loads(runner.invoke(app, ["audit", "verify", "--db", db, "--json"]).output)
    assert report["ok"] and report["anchors"] >= 2
    assert report["anchor_source"].startswith(str(anchors))
