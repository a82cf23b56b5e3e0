"""The command line: demo, import summaries and exit codes, errors that say how to fix."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medtwin.cli import app

runner = CliRunner()


def test_demo_builds_a_fresh_store_each_time(tmp_path):
    db = tmp_path / "demo.sqlite"
    first = runner.invoke(app, ["demo", "--db", str(db), "--patients", "4"])
    assert first.exit_code == 0, first.output
    assert "patients added: 4" in first.output and "HR " in first.output
    assert "`medtwin demo --serve` runs the platform live" in first.output  # issue 17
    refused = runner.invoke(app, ["demo", "--db", str(db), "--patients", "2"])  # issue 16
    assert refused.exit_code == 2 and "--force" in refused.output
    assert "holds 4 patient(s)" in refused.output
    second = runner.invoke(app, ["demo", "--db", str(db), "--patients", "4", "--force"])
    assert "patients added: 4" in second.output  # fresh, not duplicates of the first run
    listed = runner.invoke(app, ["patients", "--db", str(db), "--json"])
    assert len(json.loads(listed.output)) == 4


def test_import_reports_and_exits_nonzero_on_rejections(tmp_path):
    db = str(tmp_path / "s.sqlite")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceType": "Patient", "id": "bad id"}))
    out = runner.invoke(app, ["import", str(bad), "--db", db, "--json"])
    assert out.exit_code == 1
    report = json.loads(out.stdout)
    assert report["files_refused"] == 1 and report["issues"][0]["element"] == "id"
    missing = runner.invoke(app, ["import", str(tmp_path / "nope"), "--db", db])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output


def test_unknown_patient_and_bad_store_say_how_to_fix(tmp_path):
    db = str(tmp_path / "s.sqlite")
    out = runner.invoke(app, ["timeline", "ghost", "--db", db])  # no store there (issue 16)
    assert out.exit_code == 3 and "no medtwin store" in out.output  # a store error: 3
    assert runner.invoke(app, ["db", "upgrade", "--db", db]).exit_code == 0
    out = runner.invoke(app, ["timeline", "ghost", "--db", db])
    assert out.exit_code == 2 and "medtwin patients" in out.output
    out = runner.invoke(app, ["patients", "--db", "mysql://x/y"])
    assert out.exit_code == 3 and "unsupported store URL" in out.output
