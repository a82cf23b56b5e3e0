"""Population fits of model-language models: FOCE-I equal to the closed form on Theoph,
SAEM recovering a simulated parent + metabolite model (two observed quantities), the
mu-reference detection, and Dask = in-process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.core.estimate.saem import SAEM
from medtwin.core.yamlio import load_yaml
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.language.model import parse_language_model
from medtwin.models.pk.spec import load_model
from medtwin.twin.pk_language import prepare_language
from medtwin.twin.pk_population import fit_population, theoph_events
from medtwin.twin.pk_population_language import LanguageFit, with_estimates

# theophylline-nlme (library, closed form) written in the model language: one compartment,
# first-order absorption, V carrying the eta of CL (written as exp(log(TVV) + eta_CL))
THEO = """
name: theophylline-nlme-language
thetas: {TVCL: 0.0396686, TVV: 0.4618418, TVKA: 1.5931633}
omega: {etas: [eta_KA, eta_CL], sd: [0.6436, 0.1669]}
individual:
  CL: TVCL * exp(eta_CL)
  V: exp(log(TVV) + eta_CL)
  KA: TVKA * exp(eta_KA)
compartments: [depot, central]
odes:
  depot: -KA * depot
  central: KA * depot - CL / V * central
observations:
  conc: {cmt: 2, value: central / V, error: {additive_sd: 0.7093}}
"""

# parent (IV bolus) -> metabolite, each observed with its own residual error; the
# values are the truth the data are simulated from
PARENT_METABOLITE = """
name: parent-metabolite
covariates: {WT: {unit: kg}}
thetas: {TVCL: 5.0, TVV: 20.0, TVCLM: 3.0, TVVM: 30.0}
omega: {etas: [ECL, EV, ECLM, EVM], variance: [0.09, 0.04, 0.09, 0.04]}
individual:
  CL: TVCL * (WT / 70) ** 0.75 * exp(ECL)
  V: exp(log(TVV) + EV)
  CLM: TVCLM * exp(ECLM)
  VM: TVVM * exp(EVM)
compartments: [parent, metabolite]
odes:
  parent: -CL / V * parent
  metabolite: CL / V * parent - CLM / VM * metabolite
observations:
  cp: {cmt: 1, value: parent / V, error: {proportional_sd: 0.1}}
  cm: {cmt: 2, value: metabolite / VM, error: {additive_sd: 0.3, proportional_sd: 0.1}}
"""
TRUTH = {"TVCL": 5.0, "TVV": 20.0, "TVCLM": 3.0, "TVVM": 30.0}
OMEGA = np.diag([0.09, 0.04, 0.09, 0.04])
# sampling times of the parent (CMT 1) and the metabolite (CMT 2)
TIMES = {1: (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0), 2: (1.0, 2.0, 3.0, 4.0, 8.0, 12.0, 24.0)}


def _model(text: str):
    return parse_language_model(load_yaml(text, file="model.yaml"), file="model.yaml")


def _design(n: int, seed: int) -> EventTable:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        wt = float(rng.uniform(50, 100))
        rows.append({"ID": i + 1, "TIME": 0.0, "EVID": 1, "AMT": 500.0, "CMT": 1,
                     "DV": np.nan, "MDV": 1, "WT": wt})
        rows += [{"ID": i + 1, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": c, "DV": 1.0,
                  "MDV": 0, "WT": wt} for c, ts in TIMES.items() for t in ts]
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME", "CMT"], kind="stable")
    return EventTable.from_frame(frame.reset_index(drop=True))


def _simulate(model, table: EventTable, seed: int) -> tuple[EventTable, np.ndarray]:
    """DV of every observation record from the model's values, etas ~ N(0, Omega) and each
    quantity's residual error (the records are in the order prepare_language keeps); and
    the etas drawn."""
    rng = np.random.default_rng(seed)
    data = prepare_language(model, table)
    S = len(data.subjects)
    eta = rng.multivariate_normal(np.zeros(len(model.etas)), model.omega, size=S)
    f, status = model.solve(eta, np.arange(S), data.events, data.n_out)
    assert not status.any()
    kind = data.observed.kind
    add = np.array([o.error.additive_sd for o in model.observations])[kind]
    prop = np.array([o.error.proportional_sd for o in model.observations])[kind]
    y = f + np.sqrt(add**2 + (prop * f) ** 2) * rng.standard_normal(f.shape)
    recs = table.records.copy()
    obs = recs.index[(recs["EVID"] == 0) & (recs["MDV"] == 0)]
    mask = data.observed.mask
    assert len(obs) == mask.sum()
    assert np.all(y[mask] > 0)
    recs.loc[obs, "DV"] = y[mask]
    return EventTable(recs, table.covariate_names), eta


@pytest.fixture(scope="module")
def simulated() -> tuple[EventTable, np.ndarray]:
    return _simulate(_model(PARENT_METABOLITE), _design(40, seed=1), seed=2)


def _start(model):
    """The model with starting values away from the truth."""
    errs = model.error
    from medtwin.core.estimate.residual import ResidualError, ResidualErrors

    start = ResidualErrors((ResidualError(proportional_sd=0.3),
                            ResidualError(1.0, 0.3)), errs.names)
    return with_estimates(model, {"TVCL": 3.0, "TVV": 30.0, "TVCLM": 5.0, "TVVM": 20.0},
                          np.diag([0.2] * 4), start)


# --- (a) FOCE-I: the language model = the closed-form library model ------------------------
def test_theoph_focei_language_equals_closed_form(reference):
    frame = pd.read_csv(reference / "pk" / "theoph.csv")
    table = theoph_events(frame)
    closed = fit_population(load_model("theophylline-nlme"), table, standard_errors=False)
    lang = fit_population(_model(THEO), table, standard_errors=False)
    assert isinstance(lang, LanguageFit)
    # eta_CL is shared by CL and V: mu-referenced to neither (Newton steps in SAEM)
    assert lang.mu_index == (2, None)
    assert lang.log_scale == (True, True, True)
    assert lang.ofv == pytest.approx(closed.estimator.ofv_, rel=1e-6)  # achieved 1e-11
    fe_c = closed.fixed_effects().set_index("parameter")["estimate"]
    fe_l = lang.fixed_effects().set_index("parameter")["estimate"]
    for c, name in (("CL", "TVCL"), ("V", "TVV"), ("KA", "TVKA")):  # achieved ~1e-8
        assert fe_l[name] == pytest.approx(fe_c[c], rel=1e-4), name
        assert lang.model.thetas[name] == pytest.approx(fe_c[c], rel=1e-4)
    np.testing.assert_allclose(lang.estimator.omega_, closed.estimator.omega_, rtol=1e-4)
    assert lang.model.observations[0].error.additive_sd == pytest.approx(
        closed.estimator.error_.additive_sd, rel=1e-4)
    np.testing.assert_allclose(lang.etas().to_numpy(), closed.etas().to_numpy(), atol=1e-5)


# --- mu-referencing ------------------------------------------------------------------------
MU = """
name: mu-check
covariates: {WT: {unit: kg}}
thetas: {TVCL: 4.0, TVV: 30.0, LKA: 0.2, TLF: -1.0, TVQ: 2.0, TEMAX: 1.4}
omega: {etas: [ECL, EV, EKA, EF, EQ, EEMAX], variance: [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}
individual:
  TCL: TVCL * (WT / 70) ** 0.75
  CL: TCL * exp(ECL)
  V: TVV * exp(EV + EQ)
  KA: exp(LKA + EKA)
  F: expit(TLF + EF)
  Q: TVQ * exp(EQ)
  EMAX: expit(TEMAX + EEMAX)
compartments: [depot, central, peripheral, effect]
odes:
  depot: -KA * depot
  central: KA * depot - (CL + Q) / V * central + Q / V * peripheral
  peripheral: Q / V * central - Q / V * peripheral
  effect: 0.1 * (1 - EMAX * central / (central + V)) - 0.1 * effect
initial: {effect: 1}
dosing: {depot: {F: F}}
observations:
  cp: {cmt: 2, value: central / V, error: {proportional_sd: 0.1}}
  e: {cmt: 4, value: effect, error: {additive_sd: 0.05}}
"""


def test_mu_reference_detection():
    """CL: a covariate-scaled typical value times exp(eta) (mu-referenced on the log scale);
    V: exp(EV + EQ), EQ shared with Q (EV is V's location, EQ is not Q's alone); KA and
    EMAX in nlmixr2's style, exp(LKA + EKA) and expit(TEMAX + EEMAX): positive thetas used as
    locations on their own scale, so estimated as they are; F: a negative logit theta."""
    from medtwin.twin.pk_population_language import LanguagePredictor, mu_reference

    model = _model(MU)
    rows = [{"ID": 1, "TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 1, "DV": np.nan,
             "MDV": 1, "WT": 80.0}]
    rows += [{"ID": 1, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": c, "DV": 1.0, "MDV": 0,
              "WT": 80.0} for t in (0.5, 1, 2, 4, 8, 24) for c in (2, 4)]
    data = prepare_language(model, EventTable.from_frame(pd.DataFrame(rows)))
    names = tuple(model.thetas)
    values = model.theta_vector()
    log = values > 0
    pred = LanguagePredictor(model, data.events, data.n_out, values,
                             np.arange(len(names)), log)
    x0 = np.where(log, np.log(np.abs(values)), values)
    mu, scale = mu_reference(pred, x0, model.omega, names)
    #        ECL EV EKA EF  EQ    EEMAX
    assert mu == [0, 1, 2, 3, None, 5]
    assert scale.tolist() == [True, True, False, False, True, False]


# --- (b) SAEM: a parent + metabolite model with two observed quantities --------------------
@pytest.fixture(scope="module")
def saem_fit(simulated):
    return fit_population(_start(_model(PARENT_METABOLITE)), simulated[0], method="saem",
                          standard_errors=False,
                          saem=SAEM(n_burn=100, n_em=100, seed=1, n_importance=500,
                                    n_conditional=20))


def test_saem_recovers_parent_metabolite(saem_fit, simulated):
    """40 simulated subjects, 7 samples of each quantity, started 30-70% away from the
    truth. Tolerances: the sampling error of a typical value is about omega_sd / sqrt(40),
    5% for a variance of 0.09 (3% for 0.04), so thetas within 10% (2 sampling sds; achieved
    within 4%). A variance's relative sampling sd is sqrt(2 / 40) = 22%, so Omega is
    compared with the variances of the etas actually drawn (mean eta^2), within 25%
    (achieved within 20%: the EBE shrinkage of 7 samples per subject). Residual sds from 280
    samples each: proportional within 10% (achieved 6%), the additive part of the
    metabolite's combined error (small beside 10% of 2-15 mg/L) within 25% (achieved 4%).
    FOCE-I on the same data gives the same values within 1%."""
    fit = saem_fit
    assert fit.mu_index == (0, 1, 2, 3)  # every eta mu-referenced: closed-form M-step
    fe = fit.fixed_effects().set_index("parameter")["estimate"]
    for name, want in TRUTH.items():
        assert fe[name] == pytest.approx(want, rel=0.10), name
    drawn = (simulated[1] ** 2).mean(axis=0)
    np.testing.assert_allclose(np.diag(fit.estimator.omega_), drawn, rtol=0.25)
    cp, cm = fit.model.observations
    assert cp.error.proportional_sd == pytest.approx(0.1, rel=0.10)
    assert cm.error.proportional_sd == pytest.approx(0.1, rel=0.10)
    assert cm.error.additive_sd == pytest.approx(0.3, rel=0.25)
    # the fitted model is a model-language model with the estimates
    assert fit.model.thetas["TVCL"] == pytest.approx(fe["TVCL"])
    assert np.isfinite(fit.ofv)
    re = fit.random_effects().set_index("parameter")
    assert set(re.index) >= {"omega ECL", "cp proportional sd", "cm additive sd"}


# --- (c) Dask = in-process -----------------------------------------------------------------
def test_dask_local_cluster_identical(simulated):
    """SAEM through fit_population with a client (the E-step of each block of subjects on a
    worker) and FOCE-I's objective batches (a few BFGS iterations: a full FOCE-I fit of this
    8-parameter problem takes ~450 evaluations, too long for a unit test) are bit-identical
    to in-process."""
    from medtwin.core.cluster import dask_client, dask_mapper
    from medtwin.core.estimate.focei import FOCEI
    from medtwin.twin.pk_population_language import LanguagePredictor

    sim = simulated[0]
    table = EventTable(sim.records[sim.records["ID"].isin(sim.subjects[:8])],
                       sim.covariate_names)
    model = _start(_model(PARENT_METABOLITE))
    opts = SAEM(n_burn=5, n_em=5, seed=3, n_importance=100, n_conditional=5)
    local = fit_population(model, table, method="saem", standard_errors=False, saem=opts)
    data = prepare_language(model, table)
    predict = LanguagePredictor(model, data.events, data.n_out, model.theta_vector(),
                                np.arange(4), np.ones(4, bool))
    x0 = np.log(model.theta_vector())

    def focei(mapper=None) -> FOCEI:
        return FOCEI(max_iter=2, standard_errors=False, mapper=mapper).fit(
            predict, data.observed, x0, model.omega, model.error)

    local_f = focei()
    with dask_client(n_workers=2, processes=False) as client:
        dask = fit_population(model, table, method="saem", standard_errors=False, saem=opts,
                              client=client)
        dask_f = focei(dask_mapper(client))
    assert isinstance(dask, LanguageFit)
    np.testing.assert_array_equal(dask.estimator.theta_, local.estimator.theta_)
    np.testing.assert_array_equal(dask.estimator.omega_, local.estimator.omega_)
    np.testing.assert_array_equal(dask.estimator.eta_, local.estimator.eta_)
    assert dask.ofv == local.ofv
    np.testing.assert_array_equal(dask_f.x_, local_f.x_)
    assert dask_f.ofv_ == local_f.ofv_


def test_saem_standard_errors_with_two_observed_quantities(simulated):
    """SAEM's SEs are FOCE-I's covariance at the SAEM estimates, also with one residual
    error per observed quantity (computed here; SAEM itself takes one error model)."""
    sim = simulated[0]
    table = EventTable(sim.records[sim.records["ID"].isin(sim.subjects[:3])],
                       sim.covariate_names)
    fit = fit_population(_model(PARENT_METABOLITE), table, method="saem",
                         estimate=["TVCL"],
                         saem=SAEM(n_burn=5, n_em=5, seed=1, n_importance=100,
                                   n_conditional=5))
    est = fit.estimator
    n = 1 + 4 + 3  # the theta, Omega's diagonal, residual sds
    assert est.se_.shape == (n,) and est.cov_.shape == (n, n)
    assert est.parameter_names_[-3:] == ["log cp proportional sd", "log cm additive sd",
                                         "log cm proportional sd"]
    fe = fit.fixed_effects()
    assert np.all(np.isfinite(fe["se"])) and np.all(fe["se"] > 0)
    assert np.isfinite(est.ofv_focei_)
