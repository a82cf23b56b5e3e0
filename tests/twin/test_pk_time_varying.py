"""Covariates that change within a subject: the closed-form model is fitted as its exact ODE
translation (NOCB between records) instead of silently using the last value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.language.model import LanguageModel
from medtwin.models.pk.spec import PopulationModel, library, load_model
from medtwin.twin.dosing import Target, plot_course, recommend_dose
from medtwin.twin.pk import PKTwin, changing_covariates, predictor
from medtwin.twin.pk_data import prepare
from medtwin.twin.pk_language import prepare_language


def _rows(scr: list[float]) -> pd.DataFrame:
    base = {"ID": "N1", "AMT": 0.0, "CMT": 1, "RATE": 0.0, "II": 0.0, "ADDL": 0, "SS": 0,
            "DV": np.nan, "MDV": 1, "EVID": 1, "WT": 1.5}
    rows = [dict(base, TIME=0.0, AMT=15.0, RATE=15.0, SCR=scr[0]),
            dict(base, TIME=2.0, EVID=0, MDV=0, DV=20.0, SCR=scr[1]),
            dict(base, TIME=12.0, AMT=15.0, RATE=15.0, SCR=scr[2]),
            dict(base, TIME=20.0, EVID=0, MDV=0, DV=12.0, SCR=scr[3])]
    return pd.DataFrame(rows)


def _piecewise(cl: list[float], v: float) -> list[float]:
    """One-compartment, 1-h infusions of 15 mg at 0 and 12 h; CL per interval (NOCB)."""
    k = [c / v for c in cl]
    c1 = 15 / (cl[0]) * (1 - np.exp(-k[0] * 1))  # end of the first infusion
    c2 = c1 * np.exp(-k[0] * 1)  # at 2 h
    c12 = c2 * np.exp(-k[1] * 10)  # at 12 h (interval ends with the dose record)
    c13 = c12 * np.exp(-k[2] * 1) + 15 / cl[2] * (1 - np.exp(-k[2] * 1))
    return [c2, c13 * np.exp(-k[2] * 7)]


def test_changing_creatinine_is_followed_record_by_record():
    model = load_model("vancomycin-grimsley1999")
    assert isinstance(model, PopulationModel)
    table = EventTable.from_frame(_rows([40.0, 60.0, 80.0, 120.0]))
    assert changing_covariates(model, table) == ["SCR"]
    twin = PKTwin(model).fit(table)
    assert isinstance(twin.model_, LanguageModel) and twin.source_model_ is model
    eta = twin.eta_[0]
    cl = [3.56 * 1.5 / s * np.exp(eta[0]) for s in (60.0, 80.0, 120.0)]
    v = 0.669 * 1.5 * np.exp(eta[1])
    got = predictor(twin.model_, twin.data_)(twin.eta_[:, None])[0, 0, :2]
    np.testing.assert_allclose(got, _piecewise(cl, v), rtol=1e-10)
    # a forecast carries the latest creatinine forward
    assert twin.forecast_parameters()["CL"][0] == pytest.approx(cl[2], rel=1e-12)


def test_constant_covariates_give_the_closed_form_fit():
    model = load_model("vancomycin-grimsley1999")
    table = EventTable.from_frame(_rows([60.0] * 4))
    assert changing_covariates(model, table) == []
    closed = PKTwin(model).fit(table)
    ode = PKTwin(model.to_language()).fit(table)
    np.testing.assert_allclose(ode.eta_, closed.eta_, atol=1e-7)
    np.testing.assert_allclose(ode.ofv_, closed.ofv_, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(n for n in library()
                                        if isinstance(load_model(n), PopulationModel)))
def test_every_closed_form_library_model_equals_its_ode_translation(name):
    model = load_model(name)
    rng = np.random.default_rng(1)
    cov = {}
    for c, spec in model.covariates.items():
        levels = {lv for p in model.parameters.values() for e in p.effects
                  if e.covariate == c and e.type == "categorical" for lv in e.levels}
        cov[c] = float(sorted(levels)[-1]) if levels else float(
            np.clip(rng.uniform(0.5, 1.5) * 60.0, spec.minimum or 1e-3, spec.maximum or 1e9))
    dose_cmt = 1
    base = {"ID": "A", "RATE": 0.0, "II": 0.0, "ADDL": 0, "DV": np.nan, "MDV": 1, **cov}
    rows = [dict(base, TIME=0.0, EVID=1, AMT=100.0, CMT=dose_cmt, SS=1, II=12.0),
            dict(base, TIME=12.0, EVID=1, AMT=100.0, CMT=model.central, RATE=50.0, SS=0),
            dict(base, TIME=30.0, EVID=1, AMT=100.0, CMT=dose_cmt, ADDL=2, II=8.0, SS=0)]
    rows += [dict(base, TIME=t, EVID=0, AMT=0.0, CMT=model.central, MDV=0, DV=1.0, SS=0)
             for t in (1.0, 5.0, 12.5, 14.0, 31.0, 47.0, 60.0)]
    table = EventTable.from_frame(pd.DataFrame(rows).sort_values("TIME", kind="stable"))
    eta = np.random.default_rng(2).normal(0, 0.3, (1, 3, model.n_eta))
    closed = predictor(model, prepare(model, table))(eta)
    lang = model.to_language()
    ode = predictor(lang, prepare_language(lang, table))(eta)
    np.testing.assert_allclose(ode, closed, rtol=1e-9, atol=1e-12)


def test_dose_recommendation_and_course_plot_use_the_latest_covariates(tmp_path):
    model = load_model("vancomycin-goti2018")
    base = {"ID": "P", "RATE": 0.0, "II": 0.0, "ADDL": 0, "SS": 0, "CMT": 1, "WT": 80.0,
            "DIAL": 0.0}
    rows = [dict(base, TIME=0.0, EVID=1, AMT=1000.0, RATE=1000.0, DV=np.nan, MDV=1,
                 CRCL=100.0),
            dict(base, TIME=11.5, EVID=0, AMT=0.0, DV=9.0, MDV=0, CRCL=60.0),
            dict(base, TIME=12.0, EVID=1, AMT=1000.0, RATE=1000.0, DV=np.nan, MDV=1,
                 CRCL=40.0),
            dict(base, TIME=23.5, EVID=0, AMT=0.0, DV=14.0, MDV=0, CRCL=40.0)]
    twin = PKTwin(model).fit(EventTable.from_frame(pd.DataFrame(rows)))
    assert isinstance(twin.model_, LanguageModel)
    rec = recommend_dose(twin, Target.parse("auc24=400:600"), n_samples=300)
    # linear PK: AUC24 = daily dose / CL, with CL at the latest CrCL (40 mL/min) per draw
    eta = twin.sample_eta(300, seed=0)
    cl = 4.5 * (40 / 120) ** 0.8 * np.exp(eta[:, 0])
    assert rec.median == pytest.approx(np.median(rec.dose * 24 / rec.interval / cl), rel=1e-9)
    path = plot_course(twin, rec, tmp_path / "course.png", days=1, n_samples=50)
    assert path.stat().st_size > 10_000


def test_a_closed_form_file_may_choose_locf():
    from dataclasses import replace

    model = replace(load_model("vancomycin-grimsley1999"), covariate_interpolation="locf")
    table = EventTable.from_frame(_rows([40.0, 60.0, 80.0, 120.0]))
    twin = PKTwin(model).fit(table)
    eta = twin.eta_[0]
    # LOCF: each interval runs with the creatinine of the record that starts it
    cl = [3.56 * 1.5 / s * np.exp(eta[0]) for s in (40.0, 60.0, 80.0)]
    v = 0.669 * 1.5 * np.exp(eta[1])
    got = predictor(twin.model_, twin.data_)(twin.eta_[:, None])[0, 0, :2]
    np.testing.assert_allclose(got, _piecewise(cl, v), rtol=1e-10)
    assert model.to_dict()["covariate_interpolation"] == "locf"
