"""Benchmark of the precision-dosing twin: MAP fit, 1,000-subject simulation, Theoph FOCE-I,
MAP with the model language (parent + metabolite ODE models, against a scipy peer).

Run: .venv/bin/python benchmarks/bench_pk.py   (needs ../shared/reference/pk for the fits)
     .venv/bin/python benchmarks/bench_pk.py --only language   (one section)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp
from scipy.optimize import minimize

from medtwin.core.estimate.map import map_estimate
from medtwin.core.yamlio import load_yaml
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.closed_form import CENTRAL, DoseArrays
from medtwin.models.pk.language.model import LanguageModel, parse_language_model
from medtwin.models.pk.spec import load_model
from medtwin.twin.pk import PKTwin, predictor
from medtwin.twin.pk_data import prepare
from medtwin.twin.pk_language import language_predictor, prepare_language
from medtwin.twin.pk_population import fit_population, theoph_events

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "pk"


def _line(what: str, seconds: float, goal: float) -> None:
    ok = "ok" if seconds <= goal else "MISSED"
    unit, scale = ("ms", 1e3) if goal < 1 else ("s", 1.0)
    print(f"{what:<64} {seconds * scale:9.2f} {unit}   goal < {goal * scale:g} {unit}  [{ok}]")


def _mapbayr_001_table() -> EventTable:
    """mapbayr's model 001 data set (8 subjects), as its NONMEM run used it."""
    table = EventTable.read_csv(REF / "mapbayr_model001_data.csv")
    r = table.records
    return table.drop_lines(r[(r["EVID"] == 1) & (r["TIME"] == 72)
                              & r["s2_sampling"].isin([1, 2])]["LINE"])


def bench_map() -> None:
    table = _mapbayr_001_table()
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
    fit_population(start, table, standard_errors=False)  # warm-up (JIT)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fit_population(start, table, standard_errors=False)
        times.append(time.perf_counter() - t)
    _line("Theoph population fit (FOCE-I, 12 subjects; median of 3)", statistics.median(times),
          1.0)
    t = time.perf_counter()
    fit = fit_population(start, table)
    dt = time.perf_counter() - t
    fe = fit.fixed_effects().set_index("parameter")["estimate"]
    _line("  same, with standard errors (R matrix)", dt, 2.0)
    print(f"  KA {fe['KA']:.4f} /h  CL {fe['CL']:.5f} L/h/kg  V {fe['V']:.4f} L/kg  "
          f"-2LL {fit.estimator.ofv_:.3f}")


def reference_figures() -> None:
    """Agreement with the references: NONMEM etas/OFV (mapbayr 001), nlme Theoph estimates."""
    table = _mapbayr_001_table()
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


# --- MAP with the model language ------------------------------------------------------------
# Oral parent (first-order absorption) forming a metabolite with fraction FM; both observed,
# each with its own error. ``{elimination}`` is the parent's elimination rate (mg/h).
_PM = """
name: parent-metabolite-{kind}
thetas: {{TVCL: 5.0, TVVMAX: 40.0, KM: 4.0, TVV: 40.0, TVKA: 1.2, FM: 0.6, TVCLM: 3.0,
          VM: 25.0}}
omega: {{etas: [{e1}, EV, EKA, ECLM], variance: [0.09, 0.04, 0.16, 0.09]}}
individual:
  CL: TVCL * exp(ECL)
  VMAX: TVVMAX * exp(EVMAX)
  V: TVV * exp(EV)
  KA: TVKA * exp(EKA)
  CLM: TVCLM * exp(ECLM)
compartments: [depot, parent, metabolite]
odes:
  depot: -KA * depot
  parent: KA * depot - {elimination}
  metabolite: FM * {elimination} - CLM / VM * metabolite
observations:
  parent: {{cmt: 2, value: parent / V, error: {{proportional_sd: 0.15}}}}
  metabolite: {{cmt: 3, value: metabolite / VM, error: {{exponential_sd: 0.2}}}}
solver: {{force_ode: {force_ode}}}
"""
_LINEAR = {"kind": "linear", "e1": "ECL", "elimination": "CL / V * parent"}
_MM = {"kind": "michaelis-menten", "e1": "EVMAX",
       "elimination": "VMAX * (parent / V) / (KM + parent / V)"}
_PM_THETA = {"TVCL": 5.0, "TVVMAX": 40.0, "KM": 4.0, "TVV": 40.0, "TVKA": 1.2, "FM": 0.6,
             "TVCLM": 3.0, "VM": 25.0}
_PM_DOSES = ((0.0, 500.0), (12.0, 500.0), (24.0, 500.0))  # mg into the depot, q12h x 3
_PM_TIMES = (2.0, 6.0, 25.0, 27.0, 30.0, 36.0)  # h: parent and metabolite at each
_PM_ERR = {2: ("proportional", 0.15), 3: ("exponential", 0.2)}  # CMT: error, sd


def _pm_model(variant: dict, force_ode: bool = False) -> LanguageModel:
    text = _PM.format(force_ode=str(force_ode).lower(), **variant)
    if variant is _LINEAR:  # each variant's etas only (ECL or EVMAX)
        text = text.replace("  VMAX: TVVMAX * exp(EVMAX)\n", "")
    else:
        text = text.replace("  CL: TVCL * exp(ECL)\n", "")
    return parse_language_model(load_yaml(text, file="bench.yaml"), file="bench.yaml")


def _pm_table(model: LanguageModel, n: int, seed: int) -> EventTable:
    """``n`` subjects simulated from ``model`` (etas from its Omega, noise from its errors)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        rows += [{"ID": i, "TIME": t, "EVID": 1, "AMT": a, "CMT": 1, "DV": 0.0, "MDV": 1}
                 for t, a in _PM_DOSES]
        rows += [{"ID": i, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": c, "DV": 1.0, "MDV": 0}
                 for t in _PM_TIMES for c in (2, 3)]
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable", ignore_index=True)
    data = prepare_language(model, EventTable.from_frame(frame))
    eta = rng.multivariate_normal(np.zeros(len(model.etas)), model.omega, size=(n, 1))
    f = language_predictor(model, data)(eta)[:, 0]  # (n, 12), in record order
    obs = frame["EVID"] == 0
    cmt = frame.loc[obs, "CMT"].to_numpy().reshape(n, -1)
    eps = rng.standard_normal(f.shape)
    prop = f * (1.0 + _PM_ERR[2][1] * eps)
    expo = f * np.exp(_PM_ERR[3][1] * eps)
    frame.loc[obs, "DV"] = np.where(cmt == 2, prop, expo).ravel()
    return EventTable.from_frame(frame)


def _pm_peer(table: EventTable, mm: bool, omega: np.ndarray) -> Callable[[np.ndarray], float]:
    """The same MAP objective for one subject, written without medtwin: scipy's LSODA
    between doses, mapbayr's OFV (log var + residual^2 / var, + eta' Omega^-1 eta)."""
    r = table.records
    doses = r[r["EVID"] == 1][["TIME", "AMT"]].to_numpy(float)
    obs = r[r["EVID"] == 0]
    t_obs = obs["TIME"].to_numpy(float)
    y = obs["DV"].to_numpy(float)
    cmt = obs["CMT"].to_numpy(int)
    oi = np.linalg.inv(omega)
    th = _PM_THETA
    ends = np.append(doses[1:, 0], np.inf)

    def ofv(eta: np.ndarray) -> float:
        e1, ev, eka, eclm = eta
        v, ka, k_m = th["TVV"] * np.exp(ev), th["TVKA"] * np.exp(eka), \
            th["TVCLM"] * np.exp(eclm) / th["VM"]
        vmax, cl = th["TVVMAX"] * np.exp(e1), th["TVCL"] * np.exp(e1)

        def rhs(_t: float, x: np.ndarray) -> list[float]:
            c = x[1] / v
            elim = vmax * c / (th["KM"] + c) if mm else cl * c
            return [-ka * x[0], ka * x[0] - elim, th["FM"] * elim - k_m * x[2]]

        x = np.zeros(3)
        f = np.empty(t_obs.size)
        for (t0, amt), t1 in zip(doses, ends, strict=True):
            x[0] += amt
            inside = (t_obs > t0) & (t_obs <= t1)
            t_end = t1 if np.isfinite(t1) else t_obs[inside].max()
            sol = solve_ivp(rhs, (t0, t_end), x, method="LSODA", rtol=1e-8, atol=1e-10,
                            t_eval=np.union1d(t_obs[inside], [t_end]))
            amounts = sol.y[:, np.searchsorted(sol.t, t_obs[inside])]
            f[inside] = np.where(cmt[inside] == 2, amounts[1] / v, amounts[2] / th["VM"])
            x = sol.y[:, -1].copy()
        var = np.where(cmt == 2, (_PM_ERR[2][1] * f) ** 2, _PM_ERR[3][1] ** 2)
        res = np.where(cmt == 2, y - f, np.log(y) - np.log(np.maximum(f, 1e-300)))
        return float(np.sum(np.log(var) + res**2 / var) + eta @ oi @ eta)

    return ofv


def _pm_times(model: LanguageModel, table: EventTable) -> tuple[list, list, dict]:
    """Per subject: MAP time (estimation only), PKTwin.fit time; and its MAP results."""
    est, full, res = [], [], {}
    sub = table.select([table.subjects[0]])
    PKTwin(model).fit(sub)  # warm-up (JIT of the event loop)
    for sid in table.subjects:
        sub = table.select([sid])
        data = prepare_language(model, sub)
        omega = model.omega_all(data.n_occasions)
        t = time.perf_counter()
        r = map_estimate(language_predictor(model, data), data.observed, omega, model.error)
        est.append(time.perf_counter() - t)
        t = time.perf_counter()
        twin = PKTwin(model).fit(sub)
        full.append(time.perf_counter() - t)
        res[sid] = (r.ofv[0], bool(r.converged[0]), bool(twin.converged_[0]))
    return est, full, res


def bench_language(n_subjects: int = 20, n_peer: int = 4) -> None:
    print("MAP with the model language: parent + metabolite (CMT 2, 3), 4 etas, 6 + 6 "
          f"samples after 3 doses, {n_subjects} simulated subjects")
    linear_model = _pm_model(_LINEAR)
    mm_model = _pm_model(_MM)
    assert linear_model.linear and not mm_model.linear
    tables = {"linear": _pm_table(linear_model, n_subjects, seed=1),
              "mm": _pm_table(mm_model, n_subjects, seed=2)}
    cases = (("linear, exact (expm)", linear_model, "linear"),
             ("linear, force_ode (DOPRI5)", _pm_model(_LINEAR, force_ode=True), "linear"),
             ("Michaelis-Menten (ODE)", mm_model, "mm"))
    medtwin = {}
    for label, model, data_key in cases:
        est, full, res = _pm_times(model, tables[data_key])
        medtwin[label] = (est, res)
        bad = [s for s, (_, c1, c2) in res.items() if not (c1 and c2)]
        _line(f"  {label}: median MAP/subject, estimation only", statistics.median(est),
              0.100)
        _line("    same, PKTwin.fit", statistics.median(full), 0.100)
        print(f"    slowest subject {1e3 * max(est):.1f} ms estimation, {1e3 * max(full):.1f} ms "
              f"fit; not converged: {bad or 'none'}")
    # the peer: scipy BFGS on the same objective, LSODA predictions, on a few subjects
    for data_key, labels in (("linear", [c[0] for c in cases[:2]]), ("mm", [cases[2][0]])):
        table = tables[data_key]
        subjects = table.subjects[:n_peer]
        omega = (linear_model if data_key == "linear" else mm_model).omega
        p_times, p_ofv, p_ok = [], {}, 0
        for sid in subjects:
            ofv = _pm_peer(table.select([sid]), data_key == "mm", omega)
            t = time.perf_counter()
            opt = minimize(ofv, np.zeros(len(omega)), method="BFGS")
            p_times.append(time.perf_counter() - t)
            p_ok += bool(opt.success)
            p_ofv[sid] = opt.fun
        p_t = statistics.median(p_times)
        print(f"  peer: scipy BFGS + solve_ivp(LSODA, rtol 1e-8), {data_key} data, subjects "
              f"{' '.join(subjects)} (BFGS success {p_ok}/{n_peer}):")
        for label in labels:
            est, res = medtwin[label]
            m_t = statistics.median(est[:n_peer])
            gap = max(abs(p_ofv[s] - res[s][0]) for s in subjects)
            ok = "ok" if gap < 1e-4 else "MISSED"
            print(f"    {label:<26} medtwin {1e3 * m_t:7.2f} ms  peer {1e3 * p_t:8.1f} ms  "
                  f"peer / medtwin {p_t / m_t:6.1f}x;  max |OFV peer - medtwin| {gap:.1e} "
                  f"(goal < 1e-4) [{ok}]")
        s0 = subjects[0]
        print(f"    OFV subject {s0}: peer {p_ofv[s0]:.6f}, "
              f"medtwin {medtwin[labels[0]][1][s0][0]:.6f}")
    # mapbayr 001 written in the language vs the closed-form library model
    table = _mapbayr_001_table()
    ode = parse_language_model(load_yaml("""
name: mapbayr-001-ode
thetas: {TVCL: 4.0, TVV: 70.0, TVKA: 1.0}
omega: {etas: [ETA1, ETA2, ETA3], variance: [0.2, 0.2, 0.2]}
individual: {CL: TVCL * exp(ETA1), V: TVV * exp(ETA2), KA: TVKA * exp(ETA3)}
compartments: [depot, central]
odes: {depot: -KA * depot, central: KA * depot - CL / V * central}
observations: {conc: {cmt: 2, value: central / V, error: {proportional_var: 0.05}}}
""", file="mapbayr-001-ode.yaml"), file="mapbayr-001-ode.yaml")
    closed = load_model("mapbayr-001")
    runs: dict[str, tuple[list, list]] = {"language": ([], []), "closed": ([], [])}
    ofv = {}
    for key, model in (("language", ode), ("closed", closed)):
        PKTwin(model).fit(table.select(["1"]))  # warm-up (JIT)
        for sid in ("1", "3", "5", "7"):
            sub = table.select([sid])
            if key == "language":
                data = prepare_language(ode, sub)
                predict = language_predictor(ode, data)
            else:
                data = prepare(closed, sub)
                predict = predictor(closed, data)
            for _ in range(5):
                t = time.perf_counter()
                r = map_estimate(predict, data.observed, model.omega, model.error)
                runs[key][0].append(time.perf_counter() - t)
                t = time.perf_counter()
                PKTwin(model).fit(sub)
                runs[key][1].append(time.perf_counter() - t)
            ofv[key, sid] = r.ofv[0]
    print("mapbayr 001 (3 etas, 4 observations; subjects 1 3 5 7, 5 fits each):")
    for key, label in (("language", "as ODEs (exact path)"), ("closed", "closed form")):
        _line(f"  {label}: median MAP/subject, estimation only",
              statistics.median(runs[key][0]), 0.020)
        _line("    same, PKTwin.fit", statistics.median(runs[key][1]), 0.020)
    gap = max(abs(ofv["language", s] - ofv["closed", s]) for s in ("1", "3", "5", "7"))
    print(f"  OFV language - closed form, subjects 1 3 5 7: max |diff| {gap:.1e}; "
          f"subject 1 {ofv['language', '1']:.5f} (NONMEM 22.29351)")


SECTIONS = {"map": bench_map, "simulation": bench_simulation, "population": bench_population,
            "reference": reference_figures, "language": bench_language}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(SECTIONS), action="append",
                        help="run only this section (repeatable)")
    args = parser.parse_args()
    if not REF.is_dir():
        raise SystemExit(f"reference data {REF} is absent")
    for name in args.only or SECTIONS:
        SECTIONS[name]()
