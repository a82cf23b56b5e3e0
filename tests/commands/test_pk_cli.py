"""The CLI: medtwin pk map|fit|simulate and medtwin dose."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from medtwin.cli import app

VANCO = ("ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,DV,MDV,CRCL,WT,DIAL\n"
         "A,0,1,1000,1,1000,12,3,.,1,80,75,0\n"
         "A,37,0,0,1,0,0,0,28.5,0,80,75,0\n"
         "A,47.9,0,0,1,0,0,0,14.2,0,80,75,0\n")
runner = CliRunner()


@pytest.fixture
def vanco(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text(VANCO)
    return p


def test_pk_map_json_on_reference(reference, tmp_path):
    df = pd.read_csv(reference / "pk" / "mapbayr_model001_data.csv", dtype=str)
    df = df[~((df["evid"] == "1") & (df["time"] == "72") & df["s2_sampling"].isin(["1", "2"]))]
    data = tmp_path / "m001.csv"
    df.to_csv(data, index=False)
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--data", str(data),
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    s1 = out["subjects"][0]
    assert s1["ofv"] == pytest.approx(22.29351, abs=1e-4)
    assert s1["eta"]["ETA1"] == pytest.approx(0.405058, abs=1e-5)


def test_pk_map_bad_input_is_a_clear_error(reference):
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--data",
                              str(reference / "pk" / "mapbayr_model001_data.csv")])
    assert res.exit_code == 2
    assert "line 7, column TIME" in res.output


def test_dose_command_with_plot(vanco, tmp_path):
    png = tmp_path / "course.png"
    res = runner.invoke(app, ["dose", "--model", "vancomycin-goti2018", "--data", str(vanco),
                              "--target", "auc24=400:600", "--plot", str(png), "--json",
                              "--samples", "500"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)["recommendations"][0]
    assert rec["dose [mg]"] % 250 == 0 and 0 <= rec["probability"] <= 1
    assert png.stat().st_size > 1000


def test_simulate_and_fit(vanco, tmp_path):
    out = tmp_path / "sim.csv"
    res = runner.invoke(app, ["pk", "simulate", "--model", "vancomycin-goti2018", "--data",
                              str(vanco), "--times", "0:48:1", "--draws", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    sim = pd.read_csv(out)
    assert len(sim) == 3 * 49 and (sim["CONC"] >= 0).all()
    res = runner.invoke(app, ["pk", "simulate", "--model", "nope", "--data", str(vanco)])
    assert res.exit_code == 2 and "no model" in res.output


def test_fit_command_on_theoph(reference, tmp_path):
    from medtwin.twin.pk_population import theoph_events

    table = theoph_events(pd.read_csv(reference / "pk" / "theoph.csv"))
    data = tmp_path / "theoph_events.csv"
    table.records.drop(columns=["LINE"]).to_csv(data, index=False)
    out = tmp_path / "fitted.yaml"
    res = runner.invoke(app, ["pk", "fit", "--model", "theophylline-nlme", "--data", str(data),
                              "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    fe = {r["parameter"]: r["estimate"] for r in json.loads(res.stdout)["fixed_effects"]}
    assert fe["KA"] == pytest.approx(1.593, rel=0.05)
    res = runner.invoke(app, ["pk", "map", "--model", str(out), "--data", str(data)])
    assert res.exit_code == 0 and res.output.count("OFV") == 12
