"""The CLI: medtwin pk map|fit|simulate and medtwin dose."""

from __future__ import annotations

import json

import numpy as np
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


def test_pk_map_keeps_doses_after_the_last_sample(reference):
    """mapbayr's raw table (its test drops the doses at 72 h after subjects 1-2's samples):
    kept, they change nothing, and NONMEM's etas come out."""
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--data",
                              str(reference / "pk" / "mapbayr_model001_data.csv"), "--json",
                              "--npde", "0"])
    assert res.exit_code == 0, res.output
    s1 = json.loads(res.stdout)["subjects"][0]
    assert s1["ofv"] == pytest.approx(22.29351, abs=1e-4)
    assert s1["eta"]["ETA1"] == pytest.approx(0.405058, abs=1e-5)


def test_pk_map_bad_input_is_a_clear_error(tmp_path):
    data = tmp_path / "blq.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT,DV,MDV,BLQ\n1,0,1,10000,1,.,1,0\n"
                    "1,4,0,0,2,80,0,0\n1,30,0,0,2,.,0,1\n")
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--data", str(data)])
    assert res.exit_code == 2
    assert "line 4, column BLQ" in res.output and "LLOQ" in res.output


BLQ_TABLE = ("ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,DV,MDV,CENS,CRCL,WT,DIAL\n"
             "A,0,1,1000,1,1000,12,3,.,1,0,80,75,0\n"
             "A,37,0,0,1,0,0,0,28.5,0,0,80,75,0\n"
             "A,47.9,0,0,1,0,0,0,10,0,1,80,75,0\n"
             "B,0,1,1500,1,1500,12,3,.,1,0,60,90,0\n"
             "B,11.5,0,0,1,0,0,0,12.2,0,0,60,90,0\n"
             "B,38,0,0,1,0,0,0,35.1,0,0,60,90,0\n")


def test_pk_map_out_writes_the_record_table_and_refuses_to_overwrite(tmp_path):
    from medtwin.interop.nonmem import EventTable
    from medtwin.twin.pk import PKTwin
    from medtwin.twin.pk_diagnostics import record_table

    data = tmp_path / "events.csv"
    data.write_text(BLQ_TABLE)
    out = tmp_path / "records.csv"
    args = ["pk", "map", "--model", "vancomycin-goti2018", "--data", str(data), "--out",
            str(out), "--npde", "200"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "4 records -> " in res.output
    table = pd.read_csv(out, dtype={"ID": str})
    assert list(table.columns) == ["ID", "TIME", "DV", "BLQ", "LLOQ", "PRED", "IPRED",
                                   "IWRES", "CWRES", "NPDE", "LINE"]
    assert table["ID"].tolist() == ["A", "A", "B", "B"]
    assert table["LINE"].tolist() == [3, 4, 6, 7]
    assert table["BLQ"].tolist() == [0, 1, 0, 0] and table["LLOQ"].iloc[1] == 10
    # the CSV holds what the Python API computes for the same fit
    twin = PKTwin("vancomycin-goti2018").fit(EventTable.read_csv(data))
    api = record_table(twin, npde_samples=200).records
    np.testing.assert_allclose(table[["PRED", "IPRED", "IWRES", "CWRES", "NPDE"]].to_numpy(),
                               api[["PRED", "IPRED", "IWRES", "CWRES", "NPDE"]].to_numpy(),
                               rtol=1e-9)
    before = out.read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "exists" in res.output and "--force" in res.output
    assert out.read_text() == before
    out.write_text("old")
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert out.read_text() == before


def test_pk_map_json_has_records_and_provenance(tmp_path):
    data = tmp_path / "events.csv"
    data.write_text(BLQ_TABLE)
    res = runner.invoke(app, ["pk", "map", "--model", "vancomycin-goti2018", "--data",
                              str(data), "--json", "--npde", "100"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    recs = out["records"]
    assert [r["LINE"] for r in recs] == [3, 4, 6, 7]
    blq = recs[1]
    assert blq["BLQ"] == 1 and blq["LLOQ"] == 10 and blq["DV"] is None
    assert blq["CWRES"] is None and blq["NPDE"] is None and blq["IPRED"] > 0
    assert all(isinstance(r["CWRES"], float) for i, r in enumerate(recs) if i != 1)
    prov = out["provenance"]
    assert prov["model"] == "vancomycin-goti2018" and prov["data_cutoff_time"] == 47.9
    assert prov["medtwin_version"] and prov["computed_at"] and prov["model_digest"]
    assert prov["subjects"] == ["A", "B"] == [s["ID"] for s in out["subjects"]]


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
