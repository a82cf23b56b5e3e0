"""Checks where the event table meets the model: compartments, late doses, Omega, BLQ (M3)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import library, load_model, parse_model
from medtwin.twin.pk import PKTwin
from medtwin.twin.pk_data import prepare

VANCO = ("ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,DV,MDV,CRCL,WT,DIAL\n"
         "A,0,1,1000,1,1000,12,3,.,1,80,75,0\n"
         "A,37,0,0,1,0,0,0,28.5,0,80,75,0\n"
         "A,47.9,0,0,1,0,0,0,14.2,0,80,75,0\n")


def _table(text):
    return EventTable.from_frame(pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False))


def test_library_has_the_published_models():
    assert {"vancomycin-goti2018", "vancomycin-buelga2005", "theophylline-nlme",
            "mapbayr-001"} <= set(library())
    goti = load_model("vancomycin-goti2018")
    # CL = 4.5 (CrCL/120)^0.8 0.7^DIAL, CrCL capped at 150
    tv = goti.typical_values({"CRCL": np.array([60.0, 200.0]), "WT": np.array([70.0, 70.0]),
                              "DIAL": np.array([1.0, 0.0])}, 2)
    assert tv["CL"][0] == pytest.approx(4.5 * 0.5**0.8 * 0.7)
    assert tv["CL"][1] == pytest.approx(4.5 * 1.25**0.8)
    assert tv["V"][0] == pytest.approx(58.4 * 0.5)
    assert goti.omega[0, 0] == pytest.approx(np.log(1 + 0.398**2))
    buelga = load_model("vancomycin-buelga2005")
    assert buelga.omega[0, 1] == pytest.approx(0.2312 * np.sqrt(buelga.omega[0, 0]
                                                                * buelga.omega[1, 1]))
    with pytest.raises(NotFoundError):
        load_model("no-such-model")


def test_unknown_compartment_names_line_and_cmt():
    goti = load_model("vancomycin-goti2018")
    with pytest.raises(ValidationError) as exc:
        prepare(goti, _table(VANCO.replace("A,0,1,1000,1,", "A,0,1,1000,3,")))
    assert exc.value.where == "line 2, column CMT"
    with pytest.raises(ValidationError) as exc:
        prepare(goti, _table(VANCO.replace("A,37,0,0,1,", "A,37,0,0,2,")))
    assert exc.value.where == "line 3, column CMT"


def test_missing_covariate_for_the_model():
    with pytest.raises(ValidationError) as exc:
        PKTwin("vancomycin-goti2018").fit(_table(VANCO.replace(",CRCL,", ",CLCR,")))
    assert "CRCL" in str(exc.value)


def test_omega_not_positive_definite_is_refused():
    spec = load_model("vancomycin-buelga2005").to_dict()
    spec["omega"] = {"etas": ["eta_CL", "eta_V"], "variance": [0.1, 0.1],
                     "correlation": [["eta_CL", "eta_V", 1.2]]}
    with pytest.raises(ValidationError) as exc:
        parse_model(spec)
    assert exc.value.where == "omega" and "positive definite" in exc.value.message


def test_blq_sample_enters_by_m3_and_pulls_the_estimate_down():
    """A trough reported below LLOQ = 10 mg/L (M3) instead of 14.2 lowers the predicted trough."""
    blq = _table(VANCO.replace("DV,MDV,", "DV,MDV,BLQ,LLOQ,")
                 .replace(",.,1,80,", ",.,1,0,.,80,")
                 .replace(",28.5,0,80,", ",28.5,0,0,.,80,")
                 .replace(",14.2,0,80,", ",.,0,1,10,80,"))
    t_base = PKTwin("vancomycin-goti2018").fit(_table(VANCO))
    t_blq = PKTwin("vancomycin-goti2018").fit(blq)
    assert t_blq.data_.observed.blq.sum() == 1
    assert t_blq.predict([47.9])[0, 0] < t_base.predict([47.9])[0, 0] - 2.0
    assert t_base.converged_.all() and t_blq.converged_.all()
