"""Benchmark of the precision-dosing twin: MAP fit, 1,000-subject simulation, Theoph FOCE-I.

Run: .venv/bin/python benchmarks/bench_pk.py   (needs ../shared/reference/pk for the fits)
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtwin.core.estimate.map import map_estimate
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.closed_form import CENTRAL, DoseArrays
from medtwin.models.pk.spec import load_model
from medtwin.twin.pk import PKTwin, predictor
from medtwin.twin.pk_data import prepare
from medtwin.twin.pk_population import fit_population, theoph_events

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "pk"


def _line(what: str, seconds: float, goal: float) -> None:
    ok = "ok" if seconds <= goal else "MISSED"
    unit, scale = ("ms", 1e3) if goal < 1 else ("s", 1.0)
    print(f"{what:<64} {seconds * scale:9.2f} {unit}   goal < {goal * scale:g} {unit}  [{ok}]")


def bench_map() -> None:
    table = EventTable.read_csv(REF / "mapbayr_model001_data.csv")
    r = table.records
    table = table.drop_lines(r[(r["EVID"] == 1) & (r["TIME"] == 72)
                               & r["s2_sampling"].isin([1, 2])]["LINE"])
    model = load_model("mapbayr-001")
    times, full = [], []
    for sid in ("1", "3", "5", "7"):  # 4 observations each, 3 etas
        sub = table.select([sid])
        data = prepare(model, sub)
        predict = predictor(model, data)
        map_estimate(predict, data.observed, model.omega, model.error)  # warm-up (JIT)
        for _ in range(15):
            t = time.perf_counter()
            map_estimate(predictor(model, data), data.observed, model.omega, model.error)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            PKTwin(model).fit(sub)
            full.append(time.perf_counter() - t)
    _line("MAP fit, 3 etas, 4 observations (median, estimation only)",
          statistics.median(times), 0.020)
    _line("  same, with event-table checks and arrays (PKTwin.fit)", statistics.median(full),
          0.020)


def bench_simulation() -> None:
    model = load_model("vancomycin-goti2018")
    n, rng = 1000, np.random.default_rng(0)
    cov = {"CRCL": rng.uniform(30, 150, n), "WT": rng.uniform(50, 110, n),
           "DIAL": (rng.uniform(size=n) < 0.1).astype(float)}
    eta = rng.multivariate_normal(np.zeros(model.n_eta), model.omega, size=(n, 1))
    doses = DoseArrays.empty(n, 14)
    doses.time[:] = np.arange(14) * 12.0
    doses.amt[:] = 1000.0
    doses.dur[:] = 1.0
    doses.route[:] = CENTRAL
    grid = np.tile(np.arange(0.0, 169.0), (n, 1))  # 7 days, hourly

    def run() -> np.ndarray:
        tv = model.typical_values(cov, n)
        return model.predict(model.individual(tv, eta), doses, grid)

    run()  # warm-up (JIT)
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        out = run()
        ts.append(time.perf_counter() - t)
    assert out.shape == (n, 1, 169) and np.all(np.isfinite(out))
    _line("simulate 1,000 subjects x 7 days, q12h 2-cmt infusion, hourly",
          statistics.median(ts), 0.100)


def bench_population() -> None:
    table = theoph_events(pd.read_csv(REF / "theoph.csv"))
    model = load_model("theophylline-nlme")
    start = model.with_estimates({"CL": 0.05, "V": 0.5, "KA": 1.0}, np.diag([0.1, 0.1]),
                                 type(model.error)(additive_sd=1.0))
    t = time.perf_counter()
    fit = fit_population(start, table)
    dt = time.perf_counter() - t
    fe = fit.fixed_effects().set_index("parameter")["estimate"]
    _line("Theoph population fit (FOCE-I, 12 subjects, with standard errors)", dt, 30.0)
    print(f"  KA {fe['KA']:.4f} /h  CL {fe['CL']:.5f} L/h/kg  V {fe['V']:.4f} L/kg  "
          f"-2LL {fit.estimator.ofv_:.3f}")


def reference_figures() -> None:
    """Agreement with the references: NONMEM etas/OFV (mapbayr 001), nlme Theoph estimates."""
    table = EventTable.read_csv(REF / "mapbayr_model001_data.csv")
    r = table.records
    table = table.drop_lines(r[(r["EVID"] == 1) & (r["TIME"] == 72)
                               & r["s2_sampling"].isin([1, 2])]["LINE"])
    twin = PKTwin("mapbayr-001").fit(table)
    phi = pd.read_csv(REF / "mapbayr_model001_nonmem.phi", sep=r"\s+", skiprows=1)
    err = np.abs(twin.eta_ - phi[["ETA(1)", "ETA(2)", "ETA(3)"]].to_numpy()).max()
    print(f"mapbayr 001: max |eta - NONMEM eta| over 8 subjects = {err:.2e} (goal < 1e-4); "
          f"OFV subject 1 = {twin.ofv_[0]:.5f} (NONMEM 22.29351)")
    fit = fit_population(load_model("theophylline-nlme").with_estimates(
        {"CL": 0.05, "V": 0.5, "KA": 1.0}, np.diag([0.1, 0.1]),
        type(twin.model_.error)(additive_sd=1.0)), theoph_events(pd.read_csv(REF / "theoph.csv")),
        standard_errors=False)
    fe = fit.fixed_effects().set_index("parameter")["estimate"]
    re_ = fit.random_effects().set_index("parameter")["sd"]
    ref = {"KA [1/h]": (fe["KA"], 1.593), "CL [L/h/kg]": (fe["CL"], 0.0397),
           "V [L/kg]": (fe["V"], 0.462), "sd eta KA": (re_["omega eta_KA"], 0.6436),
           "sd eta CL": (re_["omega eta_CL"], 0.1669), "residual sd": (re_["additive sd"], 0.7093)}
    print("Theoph FOCE-I (dose mg/kg) vs nlme fm3:")
    for name, (got, want) in ref.items():
        print(f"  {name:<12} {got:9.4f}  nlme {want:9.4f}  {100 * (got / want - 1):+6.2f}%")


if __name__ == "__main__":
    if not REF.is_dir():
        raise SystemExit(f"reference data {REF} is absent")
    bench_map()
    bench_simulation()
    bench_population()
    reference_figures()
