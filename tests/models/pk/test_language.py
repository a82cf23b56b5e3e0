"""The PK model language: each feature against an analytic solution or the closed forms
(which reproduce NONMEM), and the strict file checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import ModelFileError, ValidationError
from medtwin.core.yamlio import load_yaml
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.language.model import parse_language_model
from medtwin.models.pk.language.schema import model_json_schema
from medtwin.models.pk.ode import michaelis_menten_bolus
from medtwin.models.pk.spec import load_model
from medtwin.twin.pk import PKTwin, predictor
from medtwin.twin.pk_data import prepare
from medtwin.twin.pk_language import language_predictor, prepare_language

ORAL = """
name: oral-2cmt
thetas: {TVCL: 4.0, TVV: 30.0, TVQ: 2.0, TVV2: 50.0, TVKA: 1.1, TVF: 0.8, TVLAG: 0.5}
omega: {etas: [ECL, EV], variance: [0.1, 0.1]}
individual:
  CL: TVCL * exp(ECL)
  V: TVV * exp(EV)
  Q: TVQ
  V2: TVV2
  KA: TVKA
compartments: [depot, central, peripheral]
odes:
  depot: -KA * depot
  central: KA * depot - CL / V * central - Q / V * central + Q / V2 * peripheral
  peripheral: Q / V * central - Q / V2 * peripheral
dosing:
  depot: {F: TVF, lag: TVLAG}
observations:
  conc: {cmt: 2, value: central / V, error: {proportional_sd: 0.1, additive_sd: 0.05}}
"""

CLOSED = {
    "name": "oral-2cmt-closed",
    "structure": {"compartments": 2, "absorption": "first-order"},
    "parameters": {"CL": {"value": 4.0, "eta": "ECL"}, "V": {"value": 30.0, "eta": "EV"},
                   "Q": 2.0, "V2": 50.0, "KA": 1.1, "F": 0.8, "ALAG": 0.5},
    "omega": {"etas": ["ECL", "EV"], "variance": [0.1, 0.1]},
    "error": {"proportional_sd": 0.1, "additive_sd": 0.05},
}


def _model(text: str, **solver: object):
    data = load_yaml(text, file="model.yaml")
    if solver:
        data["solver"] = dict(solver)
    return parse_language_model(data, file="model.yaml")


def _table(rows: list[dict], **covariates: list[float]) -> EventTable:
    base = {"AMT": 0.0, "CMT": 2, "RATE": 0.0, "II": 0.0, "ADDL": 0, "SS": 0, "DV": 1.0,
            "MDV": 0, "EVID": 0}
    frame = pd.DataFrame([{**base, **r} for r in rows])
    for k, v in covariates.items():
        frame[k] = v
    return EventTable.from_frame(frame)


def _predict(model, table: EventTable, eta: np.ndarray | None = None) -> np.ndarray:
    data = prepare_language(model, table)
    q = model.omega_all(data.n_occasions).shape[0]
    e = np.zeros((len(data.subjects), 1, q)) if eta is None else eta
    return language_predictor(model, data)(e)[:, 0]


def _closed(table: EventTable, eta: np.ndarray) -> np.ndarray:
    from medtwin.models.pk.spec import parse_model

    m = parse_model(CLOSED)
    data = prepare(m, table)
    return predictor(m, data)(eta)[:, 0]


REGIMEN = [
    {"ID": 1, "TIME": 0, "EVID": 1, "AMT": 500, "CMT": 1, "II": 12, "SS": 1, "MDV": 1},
    {"ID": 1, "TIME": 0.25, "DV": 1.0}, {"ID": 1, "TIME": 0.75, "DV": 1.0},
    {"ID": 1, "TIME": 3, "DV": 1.0},
    {"ID": 1, "TIME": 12, "EVID": 1, "AMT": 500, "CMT": 1, "II": 12, "ADDL": 2, "MDV": 1},
    {"ID": 1, "TIME": 20, "DV": 1.0},
    {"ID": 1, "TIME": 40, "EVID": 1, "AMT": 300, "CMT": 2, "RATE": 150, "MDV": 1},
    {"ID": 1, "TIME": 41, "DV": 1.0}, {"ID": 1, "TIME": 45, "DV": 1.0},
    {"ID": 1, "TIME": 60, "EVID": 3, "MDV": 1},
    {"ID": 1, "TIME": 61, "EVID": 1, "AMT": 100, "CMT": 2, "MDV": 1},
    {"ID": 1, "TIME": 62, "DV": 1.0},
]


@pytest.mark.parametrize("force_ode", [False, True], ids=["exact", "ode"])
def test_two_compartment_oral_with_lag_f_ss_addl_infusion_reset_matches_closed_form(force_ode):
    model = _model(ORAL, force_ode=force_ode)
    assert model.linear is not force_ode
    table = _table(REGIMEN)
    eta = np.array([[[0.2, -0.1]]])
    got = _predict(model, table, eta)
    want = _closed(table, eta)
    tol = 1e-9 if not force_ode else 2e-7
    np.testing.assert_allclose(got, want, rtol=tol)


PARENT_METABOLITE = """
name: parent-metabolite
thetas: {CL: 5.0, V: 40.0, FM: 0.6, CLM: 2.0, VM: 20.0}
individual: {K: CL / V, KM: CLM / VM}
compartments: [parent, metabolite]
odes:
  parent: -K * parent
  metabolite: FM * K * parent - KM * metabolite
observations:
  parent: {cmt: 1, value: parent / V, error: {proportional_sd: 0.1}}
  metabolite: {cmt: 2, value: metabolite / VM, error: {exponential_sd: 0.2}}
"""


def test_parent_and_metabolite_follow_the_bateman_solution_and_fit_with_two_errors():
    model = _model(PARENT_METABOLITE)
    times = [0.5, 2.0, 6.0, 12.0]
    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 1000, "CMT": 1, "MDV": 1}]
    rows += [{"ID": 1, "TIME": t, "CMT": c} for t in times for c in (1, 2)]
    got = _predict(model, _table(rows))[0]
    k, km = 5 / 40, 2 / 20
    t = np.repeat(times, 2)
    parent = 1000 / 40 * np.exp(-k * t)
    metab = 0.6 * k * 1000 / (km - k) * (np.exp(-k * t) - np.exp(-km * t)) / 20
    want = np.where(np.arange(t.size) % 2 == 0, parent, metab)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert [o.error.kind for o in model.observations] == ["proportional", "exponential"]


def test_michaelis_menten_bolus_matches_the_lambert_w_solution():
    model = _model("""
name: mm
thetas: {VMAX: 20.0, KM: 5.0, V: 10.0}
individual: {C0: 0}
compartments: [central]
odes: {central: -VMAX * (central / V) / (KM + central / V)}
observations: {conc: {cmt: 1, value: central / V, error: {additive_sd: 0.1}}}
""", rtol=1e-10, atol=1e-12)
    assert not model.linear
    times = [0.5, 1.0, 2.0, 4.0, 8.0]
    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 300, "CMT": 1, "MDV": 1}]
    rows += [{"ID": 1, "TIME": t, "CMT": 1} for t in times]
    got = _predict(model, _table(rows))[0]
    want = michaelis_menten_bolus(np.array(times), 30.0, 20.0, 5.0, 10.0)
    np.testing.assert_allclose(got, want, rtol=1e-8)


IV_COV = """
name: iv-crcl
covariate_interpolation: {interp}
thetas: {{TVCL: 6.0, V: 50.0}}
covariates: {{CRCL: {{unit: mL/min, max: 150}}}}
individual: {{CL: TVCL * CRCL / 100}}
compartments: [central]
odes: {{central: -CL / V * central}}
observations: {{conc: {{cmt: 1, value: central / V, error: {{proportional_sd: 0.1}}}}}}
"""


@pytest.mark.parametrize("interp", ["nocb", "locf"])
def test_time_varying_covariate_nocb_or_locf(interp):
    model = _model(IV_COV.format(interp=interp))
    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 1000, "CMT": 1, "MDV": 1},
            {"ID": 1, "TIME": 10, "CMT": 1}, {"ID": 1, "TIME": 20, "CMT": 1}]
    got = _predict(model, _table(rows, CRCL=[100.0, 50.0, 200.0]))[0]
    # CRCL capped at 150; NOCB: (0,10] uses 50, (10,20] uses 150; LOCF: 100 then 50
    k = {"nocb": (6 * 0.5 / 50, 6 * 1.5 / 50), "locf": (6 * 1.0 / 50, 6 * 0.5 / 50)}[interp]
    c10 = 20 * np.exp(-k[0] * 10)
    np.testing.assert_allclose(got, [c10, c10 * np.exp(-k[1] * 10)], rtol=1e-12)


def test_modelled_lag_and_bioavailability_on_a_central_infusion():
    model = _model("""
name: lagged-infusion
thetas: {CL: 3.0, V: 30.0}
individual: {K: CL / V}
compartments: [central]
odes: {central: -K * central}
dosing: {central: {F: 0.5, lag: 2.0}}
observations: {conc: {cmt: 1, value: central / V, error: {proportional_sd: 0.1}}}
""")
    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 600, "CMT": 1, "RATE": 100, "MDV": 1},
            {"ID": 1, "TIME": 1.5, "CMT": 1}, {"ID": 1, "TIME": 4, "CMT": 1},
            {"ID": 1, "TIME": 8, "CMT": 1}]
    got = _predict(model, _table(rows))[0]
    k, v, rate, dur = 0.1, 30.0, 100.0, 3.0  # F x AMT = 300 at RATE 100: 3 h, from 2 h
    inf = lambda t: rate / (k * v) * (1 - np.exp(-k * t))  # noqa: E731
    want = [0.0, inf(2.0), inf(dur) * np.exp(-k * (8 - 2 - dur))]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_inter_occasion_variability_acts_on_its_occasion_only():
    model = _model("""
name: iov
thetas: {TVCL: 5.0, V: 50.0}
omega: {etas: [ECL], variance: [0.1]}
iov: {etas: [KCL], variance: [0.05], occasion: OCC}
individual: {CL: TVCL * exp(ECL + KCL)}
compartments: [central]
odes: {central: -CL / V * central}
observations: {conc: {cmt: 1, value: central / V, error: {proportional_sd: 0.1}}}
""")
    rows = []
    for occ, t0 in ((1, 0.0), (2, 100.0)):
        rows += [{"ID": 1, "TIME": t0, "EVID": 1, "AMT": 500, "CMT": 1, "MDV": 1, "OCC": occ},
                 {"ID": 1, "TIME": t0 + 4, "CMT": 1, "OCC": occ, "EVID": 0}]
    table = EventTable.from_frame(pd.DataFrame(
        [{"AMT": 0.0, "RATE": 0.0, "II": 0, "ADDL": 0, "SS": 0, "DV": 1.0, "MDV": 0, **r}
         for r in rows]))
    data = prepare_language(model, table)
    assert data.n_occasions == 2
    assert model.eta_names(2) == ["ECL", "KCL(OCC1)", "KCL(OCC2)"]
    got = language_predictor(model, data)(np.array([[[0.1, 0.2, -0.3]]]))[0, 0]
    k1, k2 = (5 * np.exp(0.1 + k) / 50 for k in (0.2, -0.3))
    # NOCB: (4, 100] h already runs with occasion 2's clearance (the record ending it)
    want = [10 * np.exp(-k1 * 4), 10 * np.exp(-k2 * 4) * (1 + np.exp(-k1 * 4 - k2 * 96))]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    omega = model.omega_all(2)
    np.testing.assert_allclose(np.diag(omega), [0.1, 0.05, 0.05])


def test_map_fit_of_two_observed_quantities_recovers_the_simulating_etas():
    text = PARENT_METABOLITE.replace("thetas: {CL: 5.0", "omega: {etas: [ECL, EVM], "
                                     "variance: [0.09, 0.09]}\nthetas: {CL: 5.0").replace(
        "individual: {K: CL / V, KM: CLM / VM}",
        "individual: {K: CL * exp(ECL) / V, KM: CLM / (VM * exp(EVM)), VMI: VM * exp(EVM)}"
    ).replace("value: metabolite / VM", "value: metabolite / VMI").replace(
        "proportional_sd: 0.1", "proportional_sd: 0.01").replace("exponential_sd: 0.2",
                                                                 "exponential_sd: 0.01")
    model = _model(text)
    times = [0.5, 1, 2, 4, 6, 8, 12, 24]
    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 1000, "CMT": 1, "MDV": 1}]
    rows += [{"ID": 1, "TIME": t, "CMT": c} for t in times for c in (1, 2)]
    truth = np.array([[[0.25, -0.2]]])
    dv = _predict(model, _table(rows), truth)[0]
    for r, v in zip(rows[1:], dv, strict=True):
        r["DV"] = float(v)
    twin = PKTwin(model).fit(_table(rows))
    assert twin.converged_.all()
    # noise-free data, 1% errors: the prior pulls the mode off the truth by ~1e-4 at most
    np.testing.assert_allclose(twin.eta_[0], truth[0, 0], atol=2e-4)
    assert list(twin.summary()[0]["eta"]) == ["ECL", "EVM"]


def test_mapbayr_model_001_as_odes_reproduces_nonmem(reference):
    table = EventTable.read_csv(reference / "pk" / "mapbayr_model001_data.csv")
    r = table.records
    table = table.drop_lines(r[(r["EVID"] == 1) & (r["TIME"] == 72)
                               & r["s2_sampling"].isin([1, 2])]["LINE"])
    phi = pd.read_csv(reference / "pk" / "mapbayr_model001_nonmem.phi", sep=r"\s+",
                      skiprows=1)
    model = _model("""
name: mapbayr-001-ode
thetas: {TVCL: 4.0, TVV: 70.0, TVKA: 1.0}
omega: {etas: [ETA1, ETA2, ETA3], variance: [0.2, 0.2, 0.2]}
individual: {CL: TVCL * exp(ETA1), V: TVV * exp(ETA2), KA: TVKA * exp(ETA3)}
compartments: [depot, central]
odes: {depot: -KA * depot, central: KA * depot - CL / V * central}
observations: {conc: {cmt: 2, value: central / V, error: {proportional_var: 0.05}}}
""")
    twin = PKTwin(model).fit(table)
    assert twin.converged_.all()
    assert np.abs(twin.eta_ - phi[["ETA(1)", "ETA(2)", "ETA(3)"]].to_numpy()).max() < 1e-4
    assert twin.ofv_[0] == pytest.approx(22.29351, abs=1e-4)


# --- strict files ---------------------------------------------------------------------------
def _error(text: str) -> ModelFileError:
    with pytest.raises(ModelFileError) as exc:
        _model(text)
    return exc.value


def test_unknown_key_names_the_line_and_the_nearest_key():
    err = _error(ORAL.replace("dosing:", "dossing:"))
    assert err.line == ORAL.splitlines().index("dosing:") + 1
    assert "unknown key 'dossing'" in str(err) and "did you mean 'dosing'" in str(err)


def test_unknown_name_in_an_expression_names_it_and_its_line():
    err = _error(ORAL.replace("CL: TVCL * exp(ECL)", "CL: TVCL * exp(ETA_CL)"))
    assert "unknown name 'ETA_CL'" in str(err)
    assert err.line == next(i for i, s in enumerate(ORAL.splitlines(), 1) if "CL: TVCL" in s)
    assert err.key == "individual.CL"


@pytest.mark.parametrize("bad, words", [
    ("__import__('os').system('true')", "unknown function"),
    ("TVCL.real", "not allowed"),
    ("open(TVCL)", "unknown function 'open'"),
    ("TVCL *", "cannot read the expression"),
])
def test_expressions_are_arithmetic_only(bad, words):
    err = _error(ORAL.replace("CL: TVCL * exp(ECL)", f'CL: "{bad}"'))
    assert words in str(err)


def test_every_compartment_needs_an_ode_and_names_are_unique():
    assert "missing ['peripheral']" in str(_error(ORAL.replace(
        "  peripheral: Q / V * central - Q / V2 * peripheral\n", "")))
    assert "is both" in str(_error(ORAL.replace("individual:\n", "individual:\n  TVV: 3\n")))


def test_wrong_type_is_an_error_with_its_line():
    err = _error(ORAL.replace("cmt: 2", "cmt: two"))
    assert err.key.startswith("observations.conc.cmt") and err.line


def test_json_schema_is_published_and_strict():
    schema = model_json_schema()
    assert schema["additionalProperties"] is False
    assert {"thetas", "individual", "odes", "observations", "iov"} <= set(schema["properties"])
    json.dumps(schema)


def test_a_model_file_on_disk_loads_by_path(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(ORAL)
    assert load_model(path).compartments == ("depot", "central", "peripheral")
    path.write_text(ORAL.replace("lag: TVLAG}", "lag: TVLAG, extra: 1}"))
    with pytest.raises(ValidationError, match=str(path)):
        load_model(path)


def test_fitted_language_twin_predicts_any_time_and_quantity_with_an_interval():
    model = _model(PARENT_METABOLITE.replace("thetas: {CL: 5.0", "omega: {etas: [ECL], "
                                             "variance: [0.09]}\nthetas: {CL: 5.0").replace(
        "individual: {K: CL / V,", "individual: {K: CL * exp(ECL) / V,"))
    rows = [{"ID": 7, "TIME": 0, "EVID": 1, "AMT": 1000, "CMT": 1, "MDV": 1},
            {"ID": 7, "TIME": 2, "CMT": 1, "DV": 20.0}, {"ID": 7, "TIME": 6, "CMT": 2,
                                                         "DV": 3.0}]
    twin = PKTwin(model).fit(_table(rows))
    k = 5 * np.exp(twin.eta_[0, 0]) / 40
    t = np.array([9.0, 1.0, 30.0])
    np.testing.assert_allclose(twin.predict(t)[0], 25 * np.exp(-k * t), rtol=1e-10)
    km = 0.1
    metab = 0.6 * k * 1000 / (km - k) * (np.exp(-k * t) - np.exp(-km * t)) / 20
    np.testing.assert_allclose(twin.predict(t, quantity="metabolite")[0], metab, rtol=1e-10)
    band = twin.prediction_interval(t, n=200)
    assert (band["lower"] <= band["mode"]).all() and (band["mode"] <= band["upper"]).all()
    assert twin.individual_parameters()["K"][0] == pytest.approx(k, rel=1e-12)


def test_local_variables_serve_the_odes_and_the_observations():
    model = _model("""
name: locals
thetas: {CL: 3.0, V: 30.0, EMAX: 1.0, EC50: 2.0, KOUT: 0.1}
individual: {K: CL / V}
compartments: [central, response]
variables: {CP: central / V, INH: EMAX * CP / (EC50 + CP)}
odes:
  central: -K * central
  response: KOUT * (1 - INH) - KOUT * response
initial: {response: 1.0}
observations:
  conc: {cmt: 1, value: CP, error: {proportional_sd: 0.1}}
  inhibition: {cmt: 2, value: INH, error: {additive_sd: 0.05}}
""", rtol=1e-10, atol=1e-12)
    assert not model.linear
    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 300, "CMT": 1, "MDV": 1},
            {"ID": 1, "TIME": 5, "CMT": 1}, {"ID": 1, "TIME": 5, "CMT": 2}]
    got = _predict(model, _table(rows))[0]
    cp = 10 * np.exp(-0.1 * 5)
    np.testing.assert_allclose(got, [cp, cp / (2 + cp)], rtol=1e-9)


MODELLED = """
name: modelled-infusion
thetas: {CL: 3.0, V: 30.0, R1: 200.0, D1: 1.5}
individual: {K: CL / V}
compartments: [central]
odes: {central: -K * central}
dosing: {central: {rate: R1, duration: D1}}
observations: {conc: {cmt: 1, value: central / V, error: {proportional_sd: 0.1}}}
"""


@pytest.mark.parametrize("rate, r, dur", [(-1, 200.0, 3.0), (-2, 400.0, 1.5)])
def test_modelled_rate_and_duration(rate, r, dur):
    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 600, "CMT": 1, "RATE": rate, "MDV": 1},
            {"ID": 1, "TIME": 1, "CMT": 1}, {"ID": 1, "TIME": 6, "CMT": 1}]
    got = _predict(_model(MODELLED), _table(rows))[0]
    k, v = 0.1, 30.0
    inf = lambda t: r / (k * v) * (1 - np.exp(-k * t))  # noqa: E731
    np.testing.assert_allclose(got, [inf(1.0), inf(dur) * np.exp(-k * (6 - dur))], rtol=1e-12)


def test_closed_form_model_refuses_a_modelled_rate():
    from medtwin.models.pk.spec import load_model as lm

    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 600, "CMT": 1, "RATE": -2, "MDV": 1,
             "WT": 3.0, "SCR": 40.0}, {"ID": 1, "TIME": 6, "CMT": 1, "WT": 3.0, "SCR": 40.0}]
    with pytest.raises(ValidationError, match="modelled infusion duration") as exc:
        PKTwin(lm("vancomycin-grimsley1999")).fit(_table(rows))
    assert exc.value.where == "line 2, column RATE"


def test_steady_state_infusion_longer_than_the_interval_equals_the_sum_of_past_doses():
    model = _model(MODELLED.replace("CL: 3.0", "CL: 0.9"))  # half-life 23 h, II 8 h
    rows = [{"ID": 1, "TIME": 0, "EVID": 1, "AMT": 600, "CMT": 1, "RATE": 50, "II": 8,
             "SS": 1, "MDV": 1}] + [{"ID": 1, "TIME": t, "CMT": 1} for t in (0.5, 4.0, 7.9)]
    got = _predict(model, _table(rows))[0]
    k, v, rate, dur = 0.03, 30.0, 50.0, 12.0  # each infusion runs 12 h, longer than II

    def one(t: np.ndarray) -> np.ndarray:  # a single infusion started at 0
        on = rate / (k * v) * (1 - np.exp(-k * np.minimum(t, dur)))
        return np.where(t > dur, on * np.exp(-k * (t - dur)), np.where(t >= 0, on, 0.0))

    past = np.arange(0, 3000) * 8.0  # the dose at 0 and 2,999 before it
    want = [one(t + past).sum() for t in (0.5, 4.0, 7.9)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_an_unknown_nested_key_lists_the_keys_of_its_own_level():
    err = _error(ORAL.replace("error: {proportional_sd: 0.1,", "error: {proportionl_sd: 0.1,"))
    assert "did you mean 'proportional_sd'" in str(err)
    assert "exponential_sd" in err.fix and "individual" not in err.fix
