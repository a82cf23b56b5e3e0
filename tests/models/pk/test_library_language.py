"""Library models written in the model language: typical values and simulations against their
papers and against independent analytic solutions.

For each model: (a) the typical individual parameters of a reference patient equal the
published equations evaluated here by hand; (b) a simulation matches an independent reference
(a textbook analytic solution or scipy's matrix exponential, written in this file, never
medtwin's own solvers); (c) :class:`~medtwin.twin.pk.PKTwin` personalises one simulated
subject (MAP converges and moves towards the simulating random effects). Every reference
number carries its source in a comment.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import expm

from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import library, load_model
from medtwin.twin.pk import PKTwin
from medtwin.twin.pk_language import language_predictor, prepare_language

MODELS = ("vancomycin-frymoyer2014", "warfarin-hamberg2007", "gentamicin-germovsek2016")


# --- helpers --------------------------------------------------------------------------------
def _typical(model, **covariates: float) -> dict[str, float]:
    """Typical individual parameters (all etas 0) of one patient; absent covariates take the
    model's defaults."""
    row = [covariates[k] if k in covariates else spec.default
           for k, spec in model.covariates.items()]
    values = model.individual_values(np.zeros((1, len(model.etas))), np.array([row], float))
    return dict(zip(model.individual, values[0], strict=True))


def _table(rows: list[dict], **covariates: float) -> EventTable:
    base = {"AMT": 0.0, "RATE": 0.0, "II": 0.0, "ADDL": 0, "SS": 0, "DV": 1.0, "MDV": 0,
            "EVID": 0}
    frame = pd.DataFrame([{**base, **r} for r in rows])
    frame = frame.sort_values(["TIME", "EVID"], ascending=[True, False], kind="stable")
    for k, v in covariates.items():
        frame[k] = float(v)
    return EventTable.from_frame(frame)


def _predict(model, table: EventTable, eta=None) -> np.ndarray:
    data = prepare_language(model, table)
    e = np.zeros((1, 1, len(model.etas))) if eta is None else np.asarray(eta, float)[None, None]
    return language_predictor(model, data)(e)[0, 0]


def _fit_simulated(model, rows: list[dict], eta_true, **covariates: float) -> PKTwin:
    """Simulate the records ``rows`` at ``eta_true`` (no residual noise), write them as the
    DV of a NONMEM table and personalise the model to it."""
    rows = sorted(rows, key=lambda r: (r["TIME"], r.get("EVID", 0) == 0))
    dv = _predict(model, _table(rows, **covariates), eta_true)
    obs = [r for r in rows if r.get("EVID", 0) == 0]
    for r, v in zip(obs, dv, strict=True):
        r["DV"] = float(v)
    return PKTwin(model).fit(_table(rows, **covariates))


def _dose_rows(times, amt, cmt, rate=0.0):
    return [{"ID": 1, "TIME": float(t), "EVID": 1, "AMT": amt, "CMT": cmt, "RATE": rate,
             "MDV": 1} for t in times]


def _obs_rows(times, cmt):
    return [{"ID": 1, "TIME": float(t), "CMT": cmt} for t in times]


def test_the_models_are_in_the_library_with_their_citation():
    assert set(MODELS) <= set(library())
    for name in MODELS:
        m = load_model(name)
        assert m.name == name and m.source


# --- vancomycin, neonates: Frymoyer 2014 ------------------------------------------------------
# Equations 1-2 of Stockmann C et al., Infect Dis Ther 2015;4:187-198 (the Frymoyer 2014 AAC
# final model reprinted):
#   CL = 0.345 (WT/2.9)^0.75 / (1 + (PMA/34.8)^-4.53) (1/SCr)^0.267;  V = 1.75 (WT/2.9)
def _frymoyer_cl(wt, pma, scr):
    return 0.345 * (wt / 2.9) ** 0.75 / (1 + (pma / 34.8) ** -4.53) * (1 / scr) ** 0.267


def test_frymoyer_typical_values():
    m = load_model("vancomycin-frymoyer2014")
    # the reference neonate of the equations: 2.9 kg, SCr 1 mg/dL, PMA = TM50 = 34.8 weeks:
    # the maturation function is exactly one half, so CL = 0.345 / 2
    p = _typical(m, WT=2.9, PMA=34.8, SCR=1.0)
    assert p["FMAT"] == pytest.approx(0.5, rel=1e-14)
    assert p["CL"] == pytest.approx(0.345 / 2, rel=1e-14)
    assert p["V"] == pytest.approx(1.75, rel=1e-14)
    # the development cohort's median neonate (Stockmann 2015 Table 1, development column:
    # 2.9 kg, PMA 39 weeks, SCr 0.4 mg/dL), and a preterm one, by hand
    for wt, pma, scr in ((2.9, 39.0, 0.4), (1.1, 28.0, 0.9)):
        p = _typical(m, WT=wt, PMA=pma, SCR=scr)
        assert p["CL"] == pytest.approx(_frymoyer_cl(wt, pma, scr), rel=1e-13)
        assert p["V"] == pytest.approx(1.75 * wt / 2.9, rel=1e-14)
    # maturation: 1 / (1 + x^-h) is the Hill form PMA^h / (TM50^h + PMA^h)
    p = _typical(m, WT=2.9, PMA=30.0, SCR=1.0)
    assert p["FMAT"] == pytest.approx(30.0**4.53 / (34.8**4.53 + 30.0**4.53), rel=1e-13)
    # Stockmann 2015 Methods: IIV CV 21.6% (CL), 10.9% (V); residual 20.5% and 1.3 mg/L
    np.testing.assert_allclose(np.diag(m.omega), [0.216**2, 0.109**2], rtol=1e-14)
    err = m.observations[0].error
    assert (err.proportional_sd, err.additive_sd) == (0.205, 1.3)


def test_frymoyer_multiple_infusions_match_the_one_compartment_solution():
    """15.5 mg/kg every 12 h as 1-h infusions to a 1.6-kg neonate of PMA 33 weeks and SCr
    0.6 mg/dL: the validation cohort's median dose, 1-h infusions and median covariates
    (Stockmann 2015 Table 1 and Table 2, as nlmixr2lib's Stockmann_2015_vancomycin notes
    them; its median interval, 11.5 h, is rounded to 12 h), against the superposed
    one-compartment infusion solution (Rowland & Tozer, Clinical Pharmacokinetics, ch. 11)."""
    m = load_model("vancomycin-frymoyer2014")
    cov = {"WT": 1.6, "PMA": 33.0, "SCR": 0.6}
    p = _typical(m, **cov)
    dose, dur, tau = 15.5 * 1.6, 1.0, 12.0
    times = np.array([0.5, 1.0, 6.0, 11.9, 12.5, 13.0, 23.9, 36.0, 47.9])
    rows = _dose_rows([0.0], dose, 1, rate=dose / dur) + _obs_rows(times, 1)
    rows[0].update(ADDL=3, II=tau)                           # four doses, as NONMEM writes it
    got = _predict(m, _table(rows, **cov))
    k, v = p["CL"] / p["V"], p["V"]

    def one(t):
        t = np.asarray(t, float)
        during = np.clip(t, 0.0, dur)
        return np.where(t > 0, dose / dur / (k * v) * (1 - np.exp(-k * during))
                        * np.exp(-k * np.maximum(t - dur, 0.0)), 0.0)

    want = sum(one(times - j * tau) for j in range(4))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_frymoyer_personalises_a_simulated_neonate():
    m = load_model("vancomycin-frymoyer2014")
    dose = 15.5 * 1.6                                        # as in the test above
    rows = _dose_rows([0.0, 12.0], dose, 1, rate=dose)
    rows += _obs_rows([2.0, 11.5, 14.0, 23.5], 1)
    twin = _fit_simulated(m, rows, [0.3, -0.1], WT=1.6, PMA=33.0, SCR=0.6)
    assert twin.converged_.all()
    assert 0.15 < twin.eta_[0, 0] < 0.35          # the faster clearance is found


# --- warfarin, S-warfarin PK and INR: Hamberg 2007 --------------------------------------------
# Hamberg A-K et al. Clin Pharmacol Ther 2007;81:529-538, Table 2 (PK) and Table 4 (PD), as
# transcribed by nlmixr2lib (Hamberg_2007_warfarin_s): CL_S 0.314 L/h (*1/*1, 71 y) reduced by
# 31.5/45.3/72.2/69.0/85.2% (*1/*2, *1/*3, *2/*2, *2/*3, *3/*3) and 0.91%/year above 71 y;
# V1 13.8 L, Q 0.131 L/h, V2 6.59 L, KA 2 /h; EC50 4.61/3.02/2.20 mg/L (VKORC1 GG/GA/AA),
# GAMMA 0.424, EMAX 1, MTT1 11.6 h (6 compartments), MTT2 120 h (1), LAMBDA 3.61, INRMAX 20.
WARF_CL, WARF_V1, WARF_Q, WARF_V2, WARF_KA = 0.314, 13.8, 0.131, 6.59, 2.0
WARF_EC50 = {0: 4.61, 1: 3.02, 2: 2.20}              # by number of VKORC1 -1639A alleles
WARF_REDUCTION = {(1, 0): 0.315, (0, 1): 0.453, (2, 0): 0.722, (1, 1): 0.690, (0, 2): 0.852}
WARF_GAMMA, WARF_LAMBDA, WARF_INRMAX = 0.424, 3.61, 20.0


def _warfarin_covariates(age=71.0, n2=0, n3=0, na=1, inr0=1.0):
    """Age, numbers of CYP2C9 *2 and *3 alleles and of VKORC1 -1639A alleles, INR before
    warfarin."""
    return {"AGE": age, "CYP2C9_2": float(n2), "CYP2C9_3": float(n3), "VKORC1_A": float(na),
            "INR0": inr0}


def test_hamberg_typical_values():
    m = load_model("warfarin-hamberg2007")
    p = _typical(m, **_warfarin_covariates())
    assert p["CL"] == pytest.approx(WARF_CL, rel=1e-14)
    assert (p["V1"], p["Q"], p["V2"]) == pytest.approx((WARF_V1, WARF_Q, WARF_V2), rel=1e-14)
    assert p["KTR1"] == pytest.approx(1 / 11.6) and p["KTR2"] == pytest.approx(1 / 120)
    # every CYP2C9 diplotype and VKORC1 genotype, and the age effect (81 y: -9.1%), by hand
    for (n2, n3), red in WARF_REDUCTION.items():
        p = _typical(m, **_warfarin_covariates(n2=n2, n3=n3))
        assert p["CL"] == pytest.approx(WARF_CL * (1 - red), rel=1e-14)
    p = _typical(m, **_warfarin_covariates(age=81.0, n3=1))
    assert p["CL"] == pytest.approx(WARF_CL * (1 - 0.453) * (1 - 0.0091 * 10), rel=1e-14)
    for na, ec50 in WARF_EC50.items():
        assert _typical(m, **_warfarin_covariates(na=na))["EC50"] == pytest.approx(ec50)
    # Tables 2 and 4: IIV CV 31.0 (CL), 26.2 (V1), 99.1 (V2), 14.1 (MTT1), 102 (MTT2),
    # 40.9% (EC50), log-normal: omega^2 = log(1 + CV^2)
    cv = np.array([31.0, 26.2, 99.1, 14.1, 102.0, 40.9]) / 100
    np.testing.assert_allclose(np.diag(m.omega), np.log1p(cv**2), rtol=1e-14)


def _two_cmt_oral(dose, t):
    """Peer: central concentration of a two-compartment model with first-order absorption
    after one oral dose (Gibaldi & Perrier, Pharmacokinetics 2nd ed., eq. 2.150 form)."""
    k10, k12, k21 = WARF_CL / WARF_V1, WARF_Q / WARF_V1, WARF_Q / WARF_V2
    s, prod = k10 + k12 + k21, k10 * k21
    alpha = (s + math.sqrt(s * s - 4 * prod)) / 2
    beta = (s - math.sqrt(s * s - 4 * prod)) / 2
    ka = WARF_KA
    t = np.asarray(t, float)
    return ka * dose / WARF_V1 * (
        (k21 - alpha) / ((ka - alpha) * (beta - alpha)) * np.exp(-alpha * t)
        + (k21 - beta) / ((ka - beta) * (alpha - beta)) * np.exp(-beta * t)
        + (k21 - ka) / ((alpha - ka) * (beta - ka)) * np.exp(-ka * t))


def test_hamberg_pk_matches_the_two_compartment_oral_solution_and_inr_starts_at_baseline():
    """10 mg racemic warfarin once (the single dose of the paper's Study I, as nlmixr2lib
    describes it): S-warfarin is half of it. Before the dose, INR stays at the patient's
    baseline exactly (no drug, every chain compartment at 1)."""
    m = load_model("warfarin-hamberg2007")
    times = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 24.0, 48.0, 96.0, 168.0])
    t0 = 24.0                                            # the dose, a day after the start
    rows = _obs_rows([0.0, 23.9], 11) + _dose_rows([t0], 10.0, 1)
    rows += _obs_rows(t0 + times, 2) + _obs_rows([t0 + 24.0, t0 + 72.0], 11)
    table = _table(rows, **_warfarin_covariates(inr0=1.1))
    got = _predict(m, table)
    inr = prepare_language(m, table).observed.kind[0] == 1   # the INR records (CMT 11)
    np.testing.assert_allclose(got[~inr], _two_cmt_oral(0.5 * 10.0, times), rtol=1e-8)
    assert got[inr][:2].tolist() == [1.1, 1.1]
    assert 1.1 < got[inr][2] < got[inr][3]               # INR rises after the dose


def test_hamberg_inr_at_constant_concentration_reaches_its_analytic_steady_state():
    """A constant S-warfarin input R into the central compartment holds the concentration at
    R / CL; every chain compartment then settles at 1 - E(C), so (Appendix Eq 10)
    INR = BASE + INRMAX (1 - (1 - E)^2)^LAMBDA. Two concentrations: 0.279 mg/L (the median
    maintenance dose of Table 1, 29.4 mg racemate/week, as S-warfarin at CL 0.314 L/h) and
    the EC50 itself (E = 1/2)."""
    m = load_model("warfarin-hamberg2007")
    for c_ss in (29.375 / 2 / 168 / WARF_CL, WARF_EC50[1]):
        rate = c_ss * WARF_CL                              # mg/h of S-warfarin
        rows = _dose_rows([0.0], rate * 4000.0, 2, rate=rate) + _obs_rows([3000.0], 2)
        rows += _obs_rows([3000.0], 11)
        got = _predict(m, _table(rows, **_warfarin_covariates(inr0=1.0)))
        e = c_ss**WARF_GAMMA / (WARF_EC50[1] ** WARF_GAMMA + c_ss**WARF_GAMMA)
        inr = 1.0 + WARF_INRMAX * (1 - (1 - e) ** 2) ** WARF_LAMBDA
        np.testing.assert_allclose(got, [c_ss, inr], rtol=1e-7)
        if c_ss < WARF_EC50[1]:
            # plausibility against the paper's cohort (Table 1, per nlmixr2lib's population
            # notes: steady-state INR median 2.28, range 1.36-4.37, at a median 29.375
            # mg/week): the typical 71-year-old *1/*1, VKORC1 GA patient on the median dose
            # lands inside that range
            assert 1.36 < got[1] < 4.37


def test_hamberg_personalises_a_simulated_patient_from_concentrations_and_inr():
    m = load_model("warfarin-hamberg2007")
    # the cohort's median maintenance dose, 29.375 mg/week (Table 1, per nlmixr2lib), daily
    rows = _dose_rows(np.arange(10) * 24.0, 29.375 / 7, 1)
    rows += _obs_rows([12.0, 60.0, 204.0, 228.0], 2)
    rows += _obs_rows([72.0, 120.0, 168.0, 216.0, 240.0], 11)
    truth = [0.3, 0.0, 0.0, 0.0, 0.0, -0.4]                # faster CL, more sensitive (EC50)
    twin = _fit_simulated(m, rows, truth, **_warfarin_covariates())
    assert twin.converged_.all()
    assert twin.eta_[0, 0] > 0.1 and twin.eta_[0, 5] < -0.1


# --- gentamicin, neonates and infants: Germovsek 2016 -----------------------------------------
# DDMoRe DDMODEL00000238 final estimates (run35b), as transcribed by nlmixr2lib:
#   CL = 6.21 FMAT (WT/70)^0.632 PNA/(1.70 + PNA) (CREAT/TCREA)^-0.130,
#   FMAT = PMA^3.33 / (PMA^3.33 + 55.4^3.33), TCREA = -2.8488 PMA + 166.48;
#   V1 = 26.5 (WT/70), Q = 2.15 (WT/70)^0.75, V2 = 21.2 (WT/70), Q2 = 0.271 (WT/70)^0.75,
#   V3 = 148 (WT/70).
def _germovsek(wt, pma, pna, creat=None):
    tcrea = -2.8488 * pma + 166.48
    cr = tcrea if creat is None else creat
    fmat = pma**3.33 / (pma**3.33 + 55.4**3.33)
    s = wt / 70
    return {"CL": 6.21 * fmat * s**0.632 * pna / (1.70 + pna) * (cr / tcrea) ** -0.130,
            "V1": 26.5 * s, "Q": 2.15 * s**0.75, "V2": 21.2 * s, "Q2": 0.271 * s**0.75,
            "V3": 148.0 * s}


def test_germovsek_typical_values():
    m = load_model("gentamicin-germovsek2016")
    # the DDMoRe bundle's median neonate (2.12 kg, PMA 33 weeks, PNA 5.4 days, creatinine
    # 78 umol/L, per nlmixr2lib's population notes), a term infant, and a missing creatinine
    cases = [((2.12, 33.0, 5.4), 78.0), ((3.5, 44.0, 30.0), 35.0), ((1.0, 27.0, 2.0), None)]
    for (wt, pma, pna), creat in cases:
        p = _typical(m, WT=wt, PMA=pma, PNA=pna, **({} if creat is None else {"CREAT": creat}))
        want = _germovsek(wt, pma, pna, creat)
        for k, v in want.items():
            assert p[k] == pytest.approx(v, rel=1e-13), k
    # at PMA = TM50 the maturation is one half; a missing creatinine takes the PMA-typical one
    p = _typical(m, WT=70.0, PMA=55.4, PNA=1.0e9)
    assert p["FMAT"] == pytest.approx(0.5) and p["CR"] == p["TCREA"]
    assert p["CL"] == pytest.approx(6.21 / 2, rel=1e-8)
    # run35b OMEGA: CL 0.175, V1 0.112, covariance 0.116, V2 0.132, V3 0.177
    om = m.omega
    assert (om[0, 0], om[0, 1], om[1, 1], om[2, 2], om[3, 3]) == (0.175, 0.116, 0.112, 0.132,
                                                                   0.177)


def test_germovsek_infusions_match_the_matrix_exponential_of_the_three_compartment_model():
    """5 mg as 5-min infusions every 36 h (doses of 4-7 mg as 5-min infusions are those of
    the DDMoRe bundle's simulated data set for this neonate, per nlmixr2lib; 36 h is one of
    the usual neonatal intervals it names) to the bundle's median neonate, against scipy's
    matrix exponential of the three-compartment system written here from the equations
    (the infusion as a constant input of an augmented system)."""
    m = load_model("gentamicin-germovsek2016")
    cov = {"WT": 2.12, "PMA": 33.0, "PNA": 5.4, "CREAT": 78.0}
    p = _germovsek(2.12, 33.0, 5.4, 78.0)
    dose, dur, tau = 5.0, 5 / 60, 36.0
    times = np.array([0.05, 0.5, 2.0, 12.0, 35.9, 36.5, 48.0, 71.9])
    rows = _dose_rows([0.0, tau], dose, 1, rate=dose / dur) + _obs_rows(times, 1)
    got = _predict(m, _table(rows, **cov))
    k = np.array([
        [-(p["CL"] + p["Q"] + p["Q2"]) / p["V1"], p["Q"] / p["V2"], p["Q2"] / p["V3"], 0.0],
        [p["Q"] / p["V1"], -p["Q"] / p["V2"], 0.0, 0.0],
        [p["Q2"] / p["V1"], 0.0, -p["Q2"] / p["V3"], 0.0],
        [0.0, 0.0, 0.0, 0.0]])
    on = k.copy()
    on[0, 3] = dose / dur                                    # input = rate x (state 4 = 1)

    def amounts(t):
        x, now = np.array([0.0, 0.0, 0.0, 1.0]), 0.0
        for start in (0.0, tau):
            if t <= start:
                break
            x = expm(k * (start - now)) @ x
            end = min(t, start + dur)
            x = expm(on * (end - start)) @ x
            now = end
        return expm(k * (t - now)) @ x

    want = np.array([amounts(t)[0] / p["V1"] for t in times])
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_germovsek_personalises_a_simulated_neonate():
    m = load_model("gentamicin-germovsek2016")
    dose = 5.0                                               # as in the test above
    rows = _dose_rows([0.0, 36.0], dose, 1, rate=dose * 12) + _obs_rows([1.0, 22.0, 35.5],
                                                                         1)
    twin = _fit_simulated(m, rows, [-0.3, 0.1, 0.0, 0.0], WT=2.12, PMA=33.0, PNA=5.4,
                          CREAT=78.0)
    assert twin.converged_.all()
    assert twin.eta_[0, 0] < -0.15                           # the slower clearance is found
