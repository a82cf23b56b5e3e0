"""VPC and pcVPC: data simulated from the model itself sit inside the simulated bands; a
misspecified model does not; the PNG is written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.residual import ResidualError
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import parse_model
from medtwin.twin.pk_vpc import simulate_design, simulate_table, vpc

SPEC = {"name": "vpc-1cmt-oral", "structure": {"compartments": 1, "absorption": "first-order"},
        "units": {"time": "h", "amount": "mg", "concentration": "mg/L"},
        "parameters": {"CL": {"value": 2.0, "eta": "eta_cl"},
                       "V": {"value": 20.0, "eta": "eta_v"},
                       "KA": {"value": 1.2, "eta": "eta_ka"}},
        "omega": {"etas": ["eta_ka", "eta_cl", "eta_v"], "variance": [0.25, 0.09, 0.04]},
        "error": {"additive_sd": 0.1, "proportional_sd": 0.1}}


@pytest.fixture(scope="module")
def model():
    return parse_model(SPEC)


@pytest.fixture(scope="module")
def observed(model):
    rows = []
    for i in range(60):  # two dose levels: what pcVPC corrects for
        rows.append({"ID": i + 1, "TIME": 0.0, "EVID": 1, "AMT": (100, 300)[i % 2], "CMT": 1,
                     "DV": np.nan, "MDV": 1})
        rows += [{"ID": i + 1, "TIME": t, "EVID": 0, "AMT": 0, "CMT": 2, "DV": 1.0, "MDV": 0}
                 for t in (0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 24)]
    return simulate_table(model, EventTable.from_frame(pd.DataFrame(rows)), seed=3, lloq=0.05)


def _inside(result, key: str) -> float:
    return float(result.table[f"inside_{key}"].mean())


@pytest.mark.parametrize("pc", [False, True], ids=["VPC", "pcVPC"])
def test_data_from_the_model_lie_inside_the_bands(model, observed, pc, tmp_path):
    res = vpc(model, observed, n_replicates=150, bins=8, pred_corrected=pc,
              png=tmp_path / "vpc.png")
    t = res.table
    assert len(t) >= 6 and t["n"].sum() == int((observed.records["MDV"] == 0).sum()
                                               - observed.records["BLQ"].sum())
    assert _inside(res, "p50") >= 0.8  # achieved: 100% (VPC and pcVPC)
    assert _inside(res, "p5") >= 0.7 and _inside(res, "p95") >= 0.7  # achieved >= 0.75
    assert (t["sim_p5_lo"] <= t["sim_p50_med"]).all()
    assert (t["sim_p50_med"] <= t["sim_p95_hi"]).all()
    png = res.png
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000


def test_misspecified_model_falls_outside(model, observed):
    wrong = model.with_estimates({"CL": 4.0}, model.omega, model.error)  # twice the clearance
    res = vpc(wrong, observed, n_replicates=150, bins=8)
    assert _inside(res, "p50") < 0.8  # the criterion the right model passes; achieved 0.5
    late = res.table[res.table["time_mid"] >= 3]  # elimination: all above the band
    assert (late["obs_p50"] > late["sim_p50_hi"]).all()


def test_prediction_correction_narrows_the_dose_mixture(model, observed):
    plain = vpc(model, observed, n_replicates=100, bins=6, seed=1).table
    pc = vpc(model, observed, n_replicates=100, bins=6, seed=1, pred_corrected=True).table
    width = (plain["sim_p95_med"] - plain["sim_p5_med"]) / plain["sim_p50_med"]
    width_pc = (pc["sim_p95_med"] - pc["sim_p5_med"]) / pc["sim_p50_med"]
    assert (width_pc < width).mean() >= 0.8  # doses 100 and 300 mg no longer mixed


def test_simulation_shapes_and_checks(model, observed):
    data, sim, pred = simulate_design(model, observed, 4, seed=0)
    S, m = data.times.shape
    assert sim.shape == (4, S, m) and pred.shape == (S, m)
    assert np.all(np.isfinite(sim[:, data.observed.mask]))
    with pytest.raises(ValidationError, match="n_replicates"):
        simulate_design(model, observed, 0)
    with pytest.raises(ValidationError, match="interval"):
        vpc(model, observed, interval=1.5)
    noisy = model.with_estimates({}, model.omega, ResidualError(additive_sd=5.0))
    with pytest.raises(ValidationError, match="lloq"):
        simulate_table(noisy, observed, seed=3)  # a large additive error: negative values
