"""The cardiovascular twin: what-if scenarios, personalisation, populations and trials."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.records import Component, Observation
from medtwin.models.cardio.beats import run_beats
from medtwin.models.cardio.parameters import cardio_cohort
from medtwin.twin.cardio import (
    CardioFit,
    observed_values,
    run_cardio_trial,
    run_scenario,
    virtual_population,
)

T = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def _change(name: str) -> dict[str, float]:
    s = run_scenario(name, duration=40.0, warmup=20.0).summary().set_index("run")
    base, new = s.loc["baseline"], s.loc[name]
    return {k: float(new[k] - base[k]) for k in ("MAP", "HR", "EF", "CO", "CVP", "SV")}


@pytest.mark.parametrize(("name", "check"), [
    ("hfref", lambda d: d["EF"] < -0.15 and d["CO"] < -0.5),
    ("haemorrhage", lambda d: d["MAP"] < -2 and d["CVP"] < -0.5 and d["HR"] > 0),
    ("fluid-bolus", lambda d: d["CVP"] > 0.5 and d["SV"] > 1),
    ("vasodilator", lambda d: d["MAP"] < -10 and d["HR"] > 3),
    ("inotrope", lambda d: d["EF"] > 0.05 and d["CO"] > 0.3),
    ("beta-blocker", lambda d: d["HR"] < -8 and d["CO"] < 0),
    ("diuretic", lambda d: d["CVP"] < -0.3 and d["MAP"] < 0),
])
def test_scenarios_move_the_circulation_the_way_physiology_says(name: str, check) -> None:  # noqa: ANN001
    d = _change(name)
    assert check(d), d


def test_unknown_scenario_is_named() -> None:
    with pytest.raises(NotFoundError, match="hfref"):
        run_scenario("levitation")


def test_map_fit_recovers_known_parameters_within_posterior_uncertainty() -> None:
    true = {"R_sys [mmHg*s/mL]": 1.0889 * 1.25, "E_ao [mmHg/mL]": 0.6913 * 0.9,
            "E_es_lvf [mmHg/mL]": 2.8798 * 0.8, "V_stressed [mL]": 1500 * 1.05,
            "T_ref [s]": 0.85}
    r = run_beats(cardio_cohort(1, changes={"baroreflex [1]": 0.0, **true}), 12.0).last(3)
    obs = [
        Observation("p1", "85354-9", T, None, None, "bp1", components=(
            Component("8480-6", float(r["SBP"][0]), "mm[Hg]"),
            Component("8462-4", float(r["DBP"][0]), "mm[Hg]"))),
        Observation("p1", "8867-4", T, float(r["HR"][0]), "/min", "hr1"),
        Observation("p1", "10230-1", T, 100 * float(r["EF"][0]), "%", "echo1"),
        Observation("p1", "8741-1", T, float(r["CO"][0]), "L/min", "co1"),
    ]
    fit = CardioFit().fit(obs)
    assert fit.converged_
    for label, value in true.items():
        z = np.log(value / fit.parameters_[label]) / fit.log_sd_[label]
        assert abs(z) < 2.0, (label, value, fit.parameters_[label], fit.log_sd_[label])
    # the data inform resistance and heart period well: posterior sd < prior sd
    assert fit.log_sd_["R_sys [mmHg*s/mL]"] < 0.3 and fit.log_sd_["T_ref [s]"] < 0.1
    assert abs(fit.predicted_["SBP"] - r["SBP"][0]) < 3


@pytest.mark.parametrize(("code", "value", "unit", "field"), [
    ("8480-6", -120.0, "mm[Hg]", "SBP (8480-6)"),
    ("8867-4", 0.0, "/min", "HR (8867-4)"),
    ("10230-1", 1.4, "1", "EF (10230-1)"),
    ("8741-1", 5.0, "mL/s", "CO (8741-1)"),
])
def test_non_physiological_observations_are_refused(code: str, value: float, unit: str,
                                                     field: str) -> None:
    with pytest.raises(ValidationError) as e:
        observed_values([Observation("p1", code, T, value, unit, "x")])
    assert e.value.where == field


def test_virtual_population_and_a_drug_trial_on_dask() -> None:
    cohort = virtual_population(6, seed=3)
    r = cohort.column("R_sys [mmHg*s/mL]")
    assert len(set(np.round(r, 6))) == 6 and 0.6 < r.mean() < 1.6
    serial = run_cardio_trial("beta-blocker", cohort, duration=20.0, warmup=10.0,
                              scheduler="serial")
    dask = run_cardio_trial("beta-blocker", cohort, duration=20.0, warmup=10.0,
                            n_workers=1, processes=False, chunk_size=3)
    key = ["subject", "run"]
    a, b = serial.sort_values(key).reset_index(drop=True), dask.sort_values(key).reset_index(
        drop=True)
    assert len(a) == 12
    np.testing.assert_allclose(a["MAP"], b["MAP"], rtol=1e-12)
    hr = a.pivot(index="subject", columns="run", values="HR")
    assert (hr["beta-blocker"] < hr["baseline"]).all()


def test_cli_simulate_cardio(tmp_path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from medtwin.cli import app

    out = tmp_path / "beats.csv"
    res = CliRunner().invoke(app, ["simulate", "cardio", "--scenario", "vasodilator",
                                   "--duration", "20", "--warmup", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "vasodilator" in res.output and out.exists()
    bad = CliRunner().invoke(app, ["simulate", "cardio", "--set", "R_sys [mmHg*s/mL]=-1"])
    assert bad.exit_code == 2 and "R_sys" in bad.output
