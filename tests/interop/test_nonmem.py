"""NONMEM-style event tables: ADDL/II, SS, NOCB covariates, records, and typed errors."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import ValidationError
from medtwin.core.records import Intervention, InterventionKind, Observation
from medtwin.interop.nonmem import EventTable, events_from_records


def _table(text: str) -> EventTable:
    return EventTable.from_frame(pd.read_csv(io.StringIO(text), dtype=str,
                                             keep_default_na=False))


def test_addl_expands_to_doses_every_ii_and_lowercase_columns():
    t = _table("id,time,evid,amt,cmt,rate,ii,addl,dv\n1,0,1,500,1,250,12,3,.\n1,40,0,0,1,0,0,0,9\n")
    d = t.doses()
    assert d["TIME"].tolist() == [0, 12, 24, 36]
    assert d["DUR"].tolist() == [2.0] * 4
    assert d["SS"].tolist() == [0] * 4
    assert t.observations()["DV"].tolist() == [9.0]


def test_ss_dose_resets_and_evid_without_column():
    t = _table("ID,TIME,AMT,II,SS,DV,MDV\n1,0,100,0,0,.,1\n1,48,100,12,1,.,1\n1,50,0,0,0,3,0\n")
    d = t.doses()
    assert d["RESET"].tolist() == [False, True]
    assert t.records["EVID"].tolist() == [1, 1, 0]


def test_time_varying_covariates_are_carried_backward():
    t = _table("ID,TIME,EVID,AMT,DV,WT\n1,0,1,100,.,.\n1,2,0,0,5,70\n1,4,0,0,4,.\n"
               "1,6,0,0,3,72\n2,0,1,100,.,80\n")
    assert t.records["WT"].tolist() == [70, 70, 72, 72, 80]
    assert t.subject_covariates(["WT"])["WT"].tolist() == [72, 80]


@pytest.mark.parametrize("text, where, what", [
    ("TIME,EVID,AMT,DV\n0,1,100,.\n", "header", "missing column ID"),
    ("ID,TIME,EVID,AMT\n1,0,1,100\n", "header", "missing column DV"),
    ("ID,TIME,EVID,AMT,DV\n1,0,1,100,.\n1,2,0,0,abc\n", "line 3, column DV", "not a number"),
    ("ID,TIME,EVID,AMT,DV\n1,0,1,100,.\n1,2,0,0,-1.5\n", "line 3, column DV", "negative"),
    ("ID,TIME,EVID,AMT,DV\n1,0,1,0,.\n", "line 2, column AMT", "AMT > 0"),
    ("ID,TIME,EVID,AMT,DV\n1,3,1,10,.\n1,2,0,0,1\n", "line 3, column TIME", "goes back"),
    ("ID,TIME,EVID,AMT,DV,ADDL,II\n1,0,1,10,.,2,0\n", "line 2, column II", "II must be > 0"),
    ("ID,TIME,EVID,AMT,DV\n1,0,7,10,.\n", "line 2, column EVID", "EVID must be"),
    ("ID,TIME,EVID,AMT,DV\n1,x,1,10,.\n", "line 2, column TIME", "not a number"),
])
def test_bad_tables_name_line_and_column(text, where, what):
    with pytest.raises(ValidationError) as exc:
        _table(text)
    assert exc.value.where == where
    assert what in exc.value.message


def test_missing_covariate_names_subject_line_and_column():
    t = _table("ID,TIME,EVID,AMT,DV,WT\n1,0,1,100,.,70\n2,0,1,100,.,.\n2,1,0,0,3,.\n")
    with pytest.raises(ValidationError) as exc:
        t.subject_covariates(["WT"])
    assert exc.value.where == "line 3, column WT" and "'2'" in exc.value.message
    with pytest.raises(ValidationError, match="CRCL"):
        t.subject_covariates(["CRCL"])


def test_events_from_records():
    t0 = datetime(2024, 5, 1, 8, tzinfo=UTC)
    doses = [Intervention("p1", InterventionKind.INFUSION, t0 + timedelta(hours=12 * k), 1.0,
                          "g", f"d{k}", route="IV", duration=timedelta(hours=1))
             for k in range(3)]
    levels = [Observation("p1", "4092-3", t0 + timedelta(hours=35.5), 15000.0, "ug/L", "o1"),
              Observation("p1", "2345-7", t0 + timedelta(hours=30), 5.0, "mmol/L", "g1")]
    table = events_from_records(doses, levels, codes=["4092-3"],
                                covariates=pd.DataFrame({"WT": [70.0]}, index=["p1"]))
    d = table.doses()
    assert d["TIME"].tolist() == [0, 12, 24]
    assert d["AMT"].tolist() == [1000.0] * 3 and d["DUR"].tolist() == [1.0] * 3
    obs = table.observations()
    assert obs["TIME"].tolist() == [35.5] and obs["DV"].iloc[0] == pytest.approx(15.0)
    assert np.all(table.records["WT"] == 70.0)
