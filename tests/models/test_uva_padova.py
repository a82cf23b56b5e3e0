"""UVA/Padova model: reproduce simglucose 0.2.11, conserve carbohydrate, hold steady state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numba import njit

from medtwin.core.controller import IdealSensor
from medtwin.core.errors import NotFoundError
from medtwin.core.model import RHS_SIGNATURE, Variable
from medtwin.core.schedule import Schedule
from medtwin.core.simulate import simulate
from medtwin.devices.controllers import BasalBolus
from medtwin.models.glucose.subjects import BW, GB, U2SS, subject_names, uva_padova_cohort
from medtwin.models.glucose.uva_padova import KABS, STATES, UVAPadova, uva_rhs


def _insulet_pump():  # noqa: ANN202
    """The peer's Insulet pump arithmetic (prefer the devices implementation)."""
    from medtwin.devices.pump import InsulinPump

    return InsulinPump.from_name("Insulet", convention="simglucose")


@pytest.fixture(scope="module")
def reference_run(reference) -> tuple[pd.DataFrame, object]:
    ref = pd.read_csv(reference / "glucose" / "adult_001_noiseless_1min.csv")
    schedule = Schedule().with_meal(7 * 60, 50).with_meal(12 * 60, 70).with_meal(19 * 60, 80)
    result = simulate(
        UVAPadova(),
        uva_padova_cohort(["adult#001"]),
        schedule,
        np.arange(0.0, 24 * 60 + 1),
        controller=BasalBolus(),
        sensor=IdealSensor(sample_time=1.0),
        pump=_insulet_pump(),
    )
    return ref, result


def test_reproduces_simglucose_adult001_noiseless_day(reference_run) -> None:
    """adult#001, 24 h from 00:00, meals 50 g 07:00, 70 g 12:00, 80 g 19:00.

    Peer conventions matched (simglucose 0.2.11): each 1-min step is integrated with meal and
    insulin held constant (Dormand-Prince, rtol 1e-6, atol 1e-12); the subject eats at most
    5 g/min, so a 50 g meal lasts 10 steps, and the gastric-emptying memory (``_last_Qsto``,
    ``_last_foodtaken``) is updated at the start of each step; the controller runs every minute
    on a noise-free sensor returning the subcutaneous glucose x12/Vg (the peer's "BG"); the
    basal-bolus controller reads CR/CF from Quest.csv and boluses ``meal/CR`` (+ correction
    above 150 mg/dL towards 140) at the first sample after the meal was announced (07:01); the
    Insulet pump rounds to its increments in the peer's units (x 6000 "pmol"); a bolus is
    delivered over one controller period. The reference's first row is the state at t = 0 and
    its ``insulin`` column is the rate delivered over the following minute.
    """
    ref, result = reference_run
    bg = result["G_sc"][0]
    assert bg.shape == (1441,)
    assert np.max(np.abs(bg - ref["BG"].to_numpy())) < 0.5
    states = result.values[0, :, : len(STATES)]
    ref_states = ref[[f"x{i}" for i in range(13)]].to_numpy()
    span = ref_states.max(axis=0) - ref_states.min(axis=0)
    err = np.abs(states - ref_states).max(axis=0)
    for i, s in enumerate(STATES):
        assert err[i] <= 1e-3 * span[i] + 1e-9, f"{s.name}: {err[i]} > 0.1% of {span[i]}"


def test_reference_insulin_and_meals_match(reference_run) -> None:
    ref, result = reference_run
    insulin = result["insulin"][0][:-1]
    np.testing.assert_allclose(insulin, ref["insulin"].to_numpy()[:-1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result["meal"][0][:-1], ref["CHO"].to_numpy()[:-1])
    assert result["insulin [U/min]"][0][7 * 60 + 1] == pytest.approx(5.0 + 0.021125)  # 50 g / CR 10


@njit(RHS_SIGNATURE)
def _rhs_with_absorbed(t, x, u, m, p, dx):
    uva_rhs(t, x[:13], u, m, p, dx[:13])
    dx[13] = p[KABS] * x[2]  # mg/min leaving the gut


class _UVAWithAbsorbed(UVAPadova):
    """UVA/Padova plus a 14th state: the integral of kabs * Qgut (mg absorbed so far)."""

    states = (*STATES, Variable("absorbed", "mg"))
    rhs_kernel = staticmethod(_rhs_with_absorbed)

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        x = super().initial_state(p)
        return np.ascontiguousarray(np.hstack([x, np.zeros((x.shape[0], 1))]))


def test_carbohydrate_mass_balance() -> None:
    """Eaten = absorbed from the gut (kabs * integral of Qgut) + what is still in the gut."""
    cohort = uva_padova_cohort(["adult#001", "child#003", "adolescent#007"])
    schedule = Schedule().with_meal(30, 45).with_meal(200, 62, duration=20)
    times = np.arange(0.0, 8 * 60 + 1)
    result = simulate(_UVAWithAbsorbed(), cohort, schedule, times)
    eaten_mg = 1000 * np.nancumsum(result["CHO"], axis=1)  # eaten over each minute
    eaten_by_t = np.hstack([np.zeros((3, 1)), eaten_mg[:, :-1]])
    assert eaten_by_t[0, -1] == pytest.approx(107_000.0)
    in_gut = result["Qsto1"] + result["Qsto2"] + result["Qgut"]
    np.testing.assert_allclose(result["absorbed"] + in_gut, eaten_by_t, rtol=1e-7, atol=1e-6)
    assert result["absorbed"][:, -1].min() > 0.5 * 107_000  # the balance is not all "in gut"
    # what appears in plasma (Ra, per kg) is the fraction f of what leaves the gut
    ra = result["Ra"]
    f, bw, kabs = (cohort.column(c) for c in ("f [1]", BW, "kabs [1/min]"))
    np.testing.assert_allclose(ra * bw[:, None], (f * kabs)[:, None] * result["Qgut"], rtol=1e-12)


def test_every_subject_stays_at_basal_glucose_for_a_day() -> None:
    cohort = uva_padova_cohort()
    assert len(cohort) == 30
    schedule = Schedule()
    basal = cohort.column(U2SS) * cohort.column(BW) / 6000.0
    for sid, rate in zip(cohort.ids, basal, strict=True):
        schedule = schedule.with_basal(0.0, rate, subject=sid)
    result = simulate(UVAPadova(), cohort, schedule, np.arange(0.0, 24 * 60 + 1, 5))
    gb = cohort.column(GB)[:, None]
    assert np.max(np.abs(result["G_plasma"] - gb)) < 1e-6
    assert np.max(np.abs(result["G_sc"] - gb)) < 1e-6
    # without insulin, glucose rises: the steady state is not trivially constant
    drift = simulate(UVAPadova(), cohort, None, np.arange(0.0, 6 * 60 + 1, 60))
    assert np.all(drift["G_plasma"][:, -1] > cohort.column(GB) + 5)


def test_subjects_load_by_name_with_units() -> None:
    names = subject_names()
    assert len(names) == 30 and names[0] == "adolescent#001" and "adult#010" in names
    adults = uva_padova_cohort("adult#*")
    assert len(adults) == 10
    row = adults.table.loc["adult#001"]
    assert row["BW [kg]"] == pytest.approx(102.32)
    assert row["CR [g/U]"] == 10 and row["Vg [dL/kg]"] == pytest.approx(1.9152)
    with pytest.raises(NotFoundError, match="adult#042.*known subjects"):
        uva_padova_cohort(["adult#042"])


def test_outputs_carry_loinc_and_units() -> None:
    model = UVAPadova()
    out = {v.name: v for v in model.outputs}
    assert out["G_plasma"].loinc == "2345-7" and out["G_plasma"].unit == "mg/dL"
    assert out["G_sc"].loinc == "99504-3"
    assert "kabs [1/min]" in model.parameter_labels
    assert len(model.states) == 13


def test_reproduces_simglucose_stock_dexcom_pipeline(reference) -> None:
    """The peer's stock run: Dexcom (3 min, seed 1), basal-bolus every 3 min, Insulet.

    Peer conventions matched besides those above: the sensor is read after every 1-min step
    and holds its reading between samples; the controller sees the mean of the three readings
    and the meal grams announced during the last period, and its bolus is spread over the
    3-min period. Rows are the peer's 3-min means. Row 0's CGM is left out: simglucose reads
    its sensor twice at t = 0 and records the first reading, while the second drives the run.
    """
    path = reference / "glucose" / "adult_001_dexcom_seed1.csv"
    from medtwin.devices.cgm import CGMSensor

    ref = pd.read_csv(path)
    schedule = Schedule().with_meal(7 * 60, 50).with_meal(12 * 60, 70).with_meal(19 * 60, 80)
    res = simulate(UVAPadova(), uva_padova_cohort(["adult#001"]), schedule,
                   np.arange(0.0, 24 * 60 + 1), controller=BasalBolus(),
                   sensor=CGMSensor.from_name("Dexcom", rng="simglucose"),
                   pump=_insulet_pump(), seed=1)

    def per_3min(v: np.ndarray) -> np.ndarray:
        return np.r_[v[0], v[1:].reshape(-1, 3).mean(axis=1)]

    assert np.max(np.abs(per_3min(res["G_sc"][0]) - ref["BG"].to_numpy())) < 0.5
    cgm = per_3min(res["CGM"][0])
    assert np.max(np.abs(cgm[1:] - ref["CGM"].to_numpy()[1:])) < 0.01
    insulin = res["insulin"][0][:-1].reshape(-1, 3).mean(axis=1)
    np.testing.assert_allclose(insulin, ref["insulin"].to_numpy()[:-1], atol=1e-12)
