"""Doses after the last sample: kept for prediction, without any effect on the fit."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import load_model
from medtwin.twin.pk import PKTwin
from medtwin.twin.pk_data import prepare

VANCO = ("ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,DV,MDV,CRCL,WT,DIAL\n"
         "A,0,1,1000,1,1000,12,3,.,1,80,75,0\n"
         "A,37,0,0,1,0,0,0,28.5,0,80,75,0\n"
         "A,47.9,0,0,1,0,0,0,14.2,0,80,75,0\n")
LATE = "A,60,1,1500,1,1500,12,2,.,1,80,75,0\n"  # 1500 mg at 60, 72 and 84 h


def _table(text: str) -> EventTable:
    return EventTable.from_frame(pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False))


@pytest.fixture(scope="module")
def fits() -> tuple[PKTwin, PKTwin]:
    return (PKTwin("vancomycin-goti2018").fit(_table(VANCO)),
            PKTwin("vancomycin-goti2018").fit(_table(VANCO + LATE)))


def test_later_doses_do_not_change_the_fit(fits):
    base, late = fits
    np.testing.assert_allclose(late.eta_, base.eta_, rtol=0, atol=1e-12)
    assert late.ofv_[0] == pytest.approx(base.ofv_[0], rel=1e-13)
    assert late.converged_.all()


def test_predict_after_the_last_sample_includes_the_later_doses(fits):
    """Linear kinetics: the fitted twin's prediction is the base prediction plus the later
    regimen alone, at the same (MAP) parameters."""
    base, late = fits
    times = np.array([40.0, 60.0, 61.0, 73.0, 90.0])
    only_late = prepare(load_model("vancomycin-goti2018"),
                        _table(VANCO.splitlines()[0] + "\n" + LATE), for_fit=False).doses
    expected = base.predict(times)[0] + base.predict(times, doses=only_late)[0]
    got = late.predict(times)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(base.predict(times)[0][0], rel=1e-13)  # before 60 h
    assert got[3] > base.predict(times)[0][3] + 10.0  # the 72 h dose is in
    assert late.data_.doses.amt[0].tolist().count(1500.0) == 3
