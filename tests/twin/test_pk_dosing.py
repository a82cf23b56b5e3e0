"""Dose recommendation by probability of target attainment, and the plot of the course."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import ValidationError
from medtwin.interop.nonmem import EventTable
from medtwin.twin.dosing import DoseConstraints, Target, plot_course, recommend_dose
from medtwin.twin.pk import PKTwin

VANCO = ("ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,DV,MDV,CRCL,WT,DIAL\n"
         "A,0,1,1000,1,1000,12,3,.,1,80,75,0\n"
         "A,37,0,0,1,0,0,0,28.5,0,80,75,0\n"
         "A,47.9,0,0,1,0,0,0,14.2,0,80,75,0\n")


@pytest.fixture(scope="module")
def twin():
    table = EventTable.from_frame(pd.read_csv(io.StringIO(VANCO), dtype=str,
                                              keep_default_na=False))
    return PKTwin("vancomycin-goti2018").fit(table)


def test_recommendation_maximises_pta_and_respects_constraints(twin):
    cons = DoseConstraints(rounding=250, intervals=(8, 12, 24), max_rate=1000)
    rec = recommend_dose(twin, Target.parse("auc24=400:600"), cons, n_samples=2000, seed=1)
    assert rec.dose % 250 == 0 and rec.interval in (8, 12, 24)
    assert rec.duration >= rec.dose / 1000 - 1e-12
    assert rec.probability == pytest.approx(rec.candidates["probability"].max())
    assert 400 <= rec.median <= 600
    # the PTA is a Monte Carlo estimate of a posterior probability: check one by hand
    from medtwin.models.pk.closed_form import steady_state_exposure

    eta = twin.sample_eta(2000, seed=1)
    p = twin.individual_parameters(None, eta)
    lam, coef = twin.model_.disposition({k: v[None] for k, v in p.items()})
    auc = steady_state_exposure(lam, coef, p["CL"], rec.dose, rec.interval, rec.duration)["auc24"]
    assert np.mean((auc >= 400) & (auc <= 600)) == pytest.approx(rec.probability)
    # same seed, same answer
    again = recommend_dose(twin, Target.parse("auc24=400:600"), cons, n_samples=2000, seed=1)
    assert (again.dose, again.interval, again.probability) == (rec.dose, rec.interval,
                                                               rec.probability)


def test_trough_target_and_plot(twin, tmp_path):
    rec = recommend_dose(twin, Target("cmin", 10, 15), n_samples=500)
    assert 10 <= rec.median <= 15
    path = plot_course(twin, rec, tmp_path / "course.png", n_samples=200)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prediction_interval_brackets_the_mode(twin):
    band = twin.prediction_interval(np.linspace(0, 48, 25), n=400)
    assert (band["lower"] <= band["median"] + 1e-9).all()
    assert (band["median"] <= band["upper"] + 1e-9).all()
    assert (band["upper"] - band["lower"]).iloc[5:].min() > 0


def test_bad_targets():
    for text in ("auc=1:2", "auc24=600:400", "auc24"):
        with pytest.raises(ValidationError):
            Target.parse(text)


def test_a_fit_that_did_not_converge_gets_no_dose_nor_course(twin, tmp_path):
    """One Newton iteration per run (and per reset) cannot reach the mode: the fit says so
    and every use of its etas for dosing is refused, naming the subject and the fix."""
    table = EventTable.from_frame(pd.read_csv(io.StringIO(VANCO), dtype=str,
                                              keep_default_na=False))
    short = PKTwin("vancomycin-goti2018", max_iter=1, restarts=2).fit(table)
    assert not short.converged_[0]
    assert short.summary()[0]["converged"] is False
    # it really is short of the mode the full fit finds
    assert short.ofv_[0] > twin.ofv_[0] + 1e-6
    with pytest.raises(ValidationError) as exc:
        recommend_dose(short, Target.parse("auc24=400:600"), n_samples=200)
    assert exc.value.where == "subject A"
    assert "did not converge" in str(exc.value) and "max_iter" in str(exc.value)
    rec = recommend_dose(twin, Target.parse("auc24=400:600"), n_samples=200)
    with pytest.raises(ValidationError, match="did not converge"):
        plot_course(short, rec, tmp_path / "course.png", n_samples=50)
    assert not (tmp_path / "course.png").exists()
