"""Issue 16: `medtwin db upgrade|current|history`, and safe commands: a read command refuses
a store that does not exist (and makes no file or folder), a write command creates it and
says so, `demo --db EXISTING` refuses without --force and never wipes a server database."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.store.engine import make_engine
from medtwin.store.migrate import head, history

runner = CliRunner()
READS = [["patients"], ["timeline", "p1"], ["export", "p1"], ["news2", "--patient", "p1"],
         ["alerts"], ["db", "current"]]


def test_db_upgrade_current_and_history(tmp_path):
    db = str(tmp_path / "s.sqlite")
    hist = runner.invoke(app, ["db", "history", "--json"])
    revs = json.loads(hist.stdout)
    assert [r["revision"] for r in revs] == [r.id for r in history()]
    assert revs[0]["down"] is None and revs[-1]["revision"] == head()
    assert all(r["down"] == p["revision"] for p, r in zip(revs, revs[1:], strict=False))
    up = runner.invoke(app, ["db", "upgrade", "--db", db, "--revision", "0003"])
    assert up.exit_code == 0 and "created a new store" in up.output and "0003" in up.output
    cur = runner.invoke(app, ["db", "current", "--db", db, "--json"])
    assert cur.exit_code == 1  # behind
    assert json.loads(cur.stdout) == {"store": f"sqlite:///{tmp_path / 's.sqlite'}",
                                      "current": "0003", "head": head(), "up_to_date": False}
    up = runner.invoke(app, ["db", "upgrade", "--db", db])
    assert up.exit_code == 0 and f"from schema 0003 to {head()}" in up.output
    again = runner.invoke(app, ["db", "upgrade", "--db", db])
    assert "nothing to do" in again.output
    cur = runner.invoke(app, ["db", "current", "--db", db])
    assert cur.exit_code == 0 and "up to date" in cur.output


def test_a_newer_store_is_refused_by_every_command_with_what_to_do(tmp_path):
    db = str(tmp_path / "s.sqlite")
    assert runner.invoke(app, ["db", "upgrade", "--db", db]).exit_code == 0
    engine = make_engine(db)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9001'"))
    engine.dispose()
    for cmd in (["patients"], ["db", "current"], ["db", "upgrade"], ["import", db]):
        out = runner.invoke(app, [*cmd, "--db", db])
        assert out.exit_code == 3, (cmd, out.output)  # a store error (issue 17: exit 3)
        assert "schema version 9001" in out.output and f"its newest is {head()}" in out.output
        assert "pip install -U medtwin" in out.output


@pytest.mark.parametrize("cmd", READS, ids=lambda c: " ".join(c))
def test_read_commands_refuse_a_missing_store_and_create_nothing(tmp_path, cmd):
    db = tmp_path / "typo" / "ward.sqlite"
    out = runner.invoke(app, [*cmd, "--db", str(db)])
    assert out.exit_code == 3, out.output  # a store error (issue 17: exit 3)
    assert "no medtwin store" in out.output and "--db" in out.output
    assert not (tmp_path / "typo").exists()


def test_secure_read_commands_refuse_a_missing_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(tmp_path / "keys.json"))
    assert runner.invoke(app, ["keys", "generate"]).exit_code == 0
    for cmd in (["user", "list"], ["audit", "verify"], ["audit", "export"]):
        out = runner.invoke(app, [*cmd, "--db", str(tmp_path / "typo" / "w.sqlite")])
        assert out.exit_code == 3 and "no medtwin store" in out.output, (cmd, out.output)
    assert not (tmp_path / "typo").exists()


def test_a_write_command_creates_the_store_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(tmp_path / "keys.json"))
    assert runner.invoke(app, ["keys", "generate"]).exit_code == 0
    src = tmp_path / "b"
    assert runner.invoke(app, ["synth", str(src), "--patients", "1", "--days", "1"]
                         ).exit_code == 0
    db = tmp_path / "new" / "ward.sqlite"
    bad = runner.invoke(app, ["import", str(tmp_path / "nope"), "--db", str(db)])
    assert bad.exit_code == 2 and not db.exists()  # a failed import makes no store
    out = runner.invoke(app, ["import", str(src), "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    assert f"created a new store at sqlite:///{db}" in out.stderr
    assert json.loads(out.stdout)["patients_added"] == 1
    again = runner.invoke(app, ["import", str(src), "--db", str(db)])
    assert "created" not in again.stderr
    assert len(json.loads(runner.invoke(app, ["patients", "--db", str(db), "--json"]
                                        ).stdout)) == 1


def test_demo_never_silently_replaces_an_existing_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(tmp_path / "keys.json"))
    assert runner.invoke(app, ["keys", "generate"]).exit_code == 0
    src = tmp_path / "b"
    runner.invoke(app, ["synth", str(src), "--patients", "3", "--days", "1", "--seed", "5"])
    db = str(tmp_path / "ward.sqlite")
    assert runner.invoke(app, ["import", str(src), "--db", db]).exit_code == 0
    out = runner.invoke(app, ["demo", "--db", db, "--patients", "2", "--no-serve"])
    assert out.exit_code == 2 and "holds 3 patient(s)" in out.output and "--force" in out.output
    kept = json.loads(runner.invoke(app, ["patients", "--db", db, "--json"]).stdout)
    assert len(kept) == 3  # untouched
    other = tmp_path / "notes.txt"  # any existing file, not only a medtwin store
    other.write_text("mine")
    out = runner.invoke(app, ["demo", "--db", str(other), "--no-serve"])
    assert out.exit_code == 2 and other.read_text() == "mine"
    out = runner.invoke(app, ["demo", "--db", db, "--patients", "2", "--no-serve", "--force"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(runner.invoke(app, ["patients", "--db", db, "--json"]).stdout)) == 2


@pytest.mark.postgres
def test_demo_never_wipes_a_server_database(pg_url, pg_schema, monkeypatch):
    from medtwin.core.records import Patient
    from medtwin.store.event_store import EventStore

    with EventStore.open(pg_url, schema=pg_schema) as s:
        s.append([Patient(id="p1", source_id="Patient/p1")])
    url = f"{pg_url}?options=-csearch_path%3D{pg_schema}"
    for force in ([], ["--force"]):
        out = runner.invoke(app, ["demo", "--db", url, "--no-serve", *force])
        assert out.exit_code == 2 and "never wipes a server database" in out.output
    with EventStore.open(pg_url, schema=pg_schema) as s:
        assert list(s.patients()["id"]) == ["p1"]
