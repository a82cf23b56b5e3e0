"""NEWS2 from stored vitals: the synthetic deteriorating patient scores high, the stable low."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.interop.fhir.read import parse_fhir
from medtwin.interop.fhir.synthetic import generate_patients
from medtwin.monitor.news2 import Risk, news2
from medtwin.monitor.vitals import latest_vitals


def test_latest_vitals_from_the_store(store):
    bundles = generate_patients(2, seed=4, days=2, kinds=["stable", "deteriorating"])
    ids = []
    for b in bundles:
        p = parse_fhir(b)
        store.append(p.patients, p.records)
        ids.append(p.patients[0].id)
    stable, worse = (latest_vitals(store, pid) for pid in ids)
    assert not news2(stable[0]).partial and news2(stable[0]).risk is Risk.LOW
    end = news2(worse[0])
    assert not end.partial and end.risk is Risk.HIGH and end.total >= 7
    assert end.points["consciousness"] == 3 and end.points["air_or_oxygen"] == 2
    first_day = latest_vitals(store, ids[1], at=worse[1].replace(hour=0) if worse[1] else None)
    assert news2(first_day[0]).total < end.total


def test_news2_command(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["news2", "--rr", "25", "--spo2", "95", "--air", "--sbp", "120",
                              "--pulse", "115", "--acvpu", "A", "--temp", "37", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert (got["total"], got["risk"], got["partial"]) == (6, "medium", False)
    out = runner.invoke(app, ["news2", "--rr", "30"])
    assert "NEWS2 3: low-medium risk (partial: missing spo2" in out.output
    bad = runner.invoke(app, ["news2", "--temp", "98.6"])
    assert bad.exit_code == 2 and "plausible range" in bad.output
    db = tmp_path / "s.sqlite"
    runner.invoke(app, ["demo", "--db", str(db), "--patients", "2"])
    pid = json.loads(runner.invoke(app, ["patients", "--db", str(db), "--json"]).output)[0]["id"]
    # the demo's record is from a past stay: as of now nothing is current, so no score
    stale = runner.invoke(app, ["news2", "--patient", pid, "--db", str(db), "--json"])
    assert stale.exit_code == 1 and "no current vitals" in stale.stderr
    newest = datetime.fromisoformat(re.search(r"newest reading (\S+);", stale.stderr)[1])
    at = (newest + timedelta(minutes=1)).isoformat()  # just after it: that reading is current
    out = runner.invoke(app, ["news2", "--patient", pid, "--db", str(db), "--json",
                              "--at", at])
    assert out.exit_code == 0, out.output
    assert datetime.fromisoformat(json.loads(out.stdout)["at"]) == newest
