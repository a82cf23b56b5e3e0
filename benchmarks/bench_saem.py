"""Benchmark of SAEM population fits against published nlmixr2 values and FOCE-I in the same run.

1. Theoph (``../shared/reference/pk/theoph.csv``; dose in mg, etas on ka, cl, v, additive
   error): SAEM estimates vs nlmixr2's published SAEM fit (nlmixr2est README, commit
   042db2c), and the wall time vs FOCE-I on the same data.
2. Warfarin PK (nlmixr2data ``warfarin``, the concentration records, dvid == "cp"; the
   one-compartment first-order absorption model with combined error of nlmixr2est's
   tests/testthat/test-issue-503.R): SAEM vs FOCE-I estimates and wall times, and the %
   difference from published estimates when a JSON file of them is given (``--published``;
   keys KA, CL, V [, omega_ka, omega_cl, omega_v as variances, prop_sd, add_sd]).

The warfarin data set is not part of the repository: export it from R
(``write.csv(nlmixr2data::warfarin, "warfarin.csv", row.names = FALSE)``) and pass the path
with ``--warfarin PATH`` or ``MEDTWIN_WARFARIN_CSV``.

Run: .venv/bin/python benchmarks/bench_saem.py [--warfarin PATH] [--published FILE.json]
     [--dask-workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtwin.core.estimate.saem import SAEM
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import parse_model
from medtwin.twin.pk_population import PopulationFit, fit_population, theoph_events

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "pk"

# nlmixr2est README.md (github.com/nlmixr2/nlmixr2est, commit 042db2c): SAEM on theo_sd
NLMIXR2_THEO = {"KA": 1.59, "CL": 2.74, "V": 31.7, "cv eta_ka %": 71.1, "cv eta_cl %": 27.4,
                "cv eta_v %": 13.1, "additive sd": 0.696}


def _one_cmt(name: str, values: dict[str, float], omega: list[float],
             error: dict[str, float]) -> dict:
    return {"name": name, "structure": {"compartments": 1, "absorption": "first-order"},
            "parameters": {"CL": {"value": values["CL"], "eta": "eta_cl"},
                           "V": {"value": values["V"], "eta": "eta_v"},
                           "KA": {"value": values["KA"], "eta": "eta_ka"}},
            "omega": {"etas": ["eta_ka", "eta_cl", "eta_v"], "variance": omega},
            "error": error}


def _summary(fit: PopulationFit) -> dict[str, float]:
    fe = fit.fixed_effects().set_index("parameter")["estimate"]
    om = np.diag(fit.estimator.omega_)
    out = {n: float(fe[n]) for n in ("KA", "CL", "V")}
    out.update({f"cv {e} %": 100 * math.sqrt(math.exp(v) - 1)
                for e, v in zip(fit.model.etas, om, strict=True)})
    out.update({f"omega {e}": float(v) for e, v in zip(fit.model.etas, om, strict=True)})
    err = fit.estimator.error_
    if err.additive_sd:
        out["additive sd"] = err.additive_sd
    if err.proportional_sd:
        out["proportional sd"] = err.proportional_sd
    return out


def _timed(**kw) -> tuple[PopulationFit, float]:
    t = time.perf_counter()
    fit = fit_population(**kw)
    return fit, time.perf_counter() - t


def _table(rows: list[tuple[str, float, float | None, float | None]], peer: str) -> None:
    print(f"  {'parameter':<18}{'SAEM':>11}{'FOCE-I':>11}{peer:>11}{'SAEM vs ' + peer:>20}")
    for name, saem, focei, ref in rows:
        f = f"{focei:11.4g}" if focei is not None else f"{'':>11}"
        r = f"{ref:11.4g}" if ref is not None else f"{'':>11}"
        d = f"{100 * (saem / ref - 1):+19.2f}%" if ref else ""
        print(f"  {name:<18}{saem:11.4g}{f}{r}{d}")


def bench_theoph() -> None:
    frame = pd.read_csv(REF / "theoph.csv")
    spec = _one_cmt("theophylline-mg", {"CL": 3.0, "V": 35.0, "KA": 1.0}, [0.1, 0.1, 0.1],
                    {"additive_sd": 1.0})
    model, table = parse_model(spec), theoph_events(frame, dose="mg")
    fit_population(model, table, method="saem", standard_errors=False,
                   saem=SAEM(n_burn=5, n_em=5))  # warm-up (JIT)
    saem, ts = _timed(model=model, table=table, method="saem", saem=SAEM(seed=1))
    focei, tf = _timed(model=model, table=table)
    s, f = _summary(saem), _summary(focei)
    e = saem.estimator
    print(f"Theoph SAEM (12 subjects, 200+300 iterations, SEs by FOCE-I's Hessian at the "
          f"SAEM estimates): {ts:.2f} s (iterations {e.seconds_iterations_:.2f} s, -2LL/EBE/"
          f"SE {e.seconds_final_:.2f} s); FOCE-I with SEs {tf:.2f} s (ratio SAEM/FOCE-I "
          f"{ts / tf:.2f})")
    _table([(k, s[k], f[k], NLMIXR2_THEO[k]) for k in NLMIXR2_THEO], "nlmixr2")
    est = saem.estimator
    print(f"  -2LL: importance sampling {est.ofv_:.3f} (MC se {est.ofv_se_:.3f}); FOCE-I at "
          f"the SAEM estimates {est.ofv_focei_:.3f}; FOCE-I fit {focei.estimator.ofv_:.3f}")


def warfarin_table(path: Path) -> EventTable:
    """nlmixr2data's ``warfarin`` (id, time, amt, dv, dvid, evid, wt, ...): the doses and the
    concentration records as a NONMEM-style event table (doses into the depot)."""
    w = pd.read_csv(path)
    w = w[w["dvid"].astype(str) == "cp"]
    dose = w["evid"] == 1
    frame = pd.DataFrame({"ID": w["id"], "TIME": w["time"], "EVID": w["evid"].clip(0, 1),
                          "AMT": np.where(dose, w["amt"], 0.0), "CMT": np.where(dose, 1, 2),
                          "DV": np.where(dose, np.nan, w["dv"]),
                          "MDV": dose.astype(int), "WT": w["wt"]})
    return EventTable.from_frame(frame.reset_index(drop=True))


def bench_warfarin(path: Path, published: dict[str, float] | None, dask_workers: int) -> None:
    table = warfarin_table(path)
    # initial values of nlmixr2est tests/testthat/test-issue-503.R
    spec = _one_cmt("warfarin-pk", {"CL": 0.135, "V": 8.0, "KA": 1.15}, [0.5, 0.1, 0.1],
                    {"additive_sd": 0.6, "proportional_sd": 0.15})
    model = parse_model(spec)
    fit_population(model, table, method="saem", standard_errors=False,
                   saem=SAEM(n_burn=5, n_em=5))  # warm-up
    saem, ts = _timed(model=model, table=table, method="saem", saem=SAEM(seed=1))
    focei, tf = _timed(model=model, table=table)
    s, f = _summary(saem), _summary(focei)
    n = len(table.subjects)
    e = saem.estimator
    print(f"Warfarin PK SAEM ({n} subjects, combined error): {ts:.2f} s (iterations "
          f"{e.seconds_iterations_:.2f} s); FOCE-I with SEs {tf:.2f} s (ratio SAEM/FOCE-I "
          f"{ts / tf:.2f})")
    keys = [k for k in s if not k.startswith("omega")]
    ref = published or {}
    pub = {"KA": ref.get("KA"), "CL": ref.get("CL"), "V": ref.get("V"),
           "additive sd": ref.get("add_sd"), "proportional sd": ref.get("prop_sd")}
    for eta, k in (("eta_ka", "omega_ka"), ("eta_cl", "omega_cl"), ("eta_v", "omega_v")):
        if k in ref:
            pub[f"cv {eta} %"] = 100 * math.sqrt(math.exp(ref[k]) - 1)
    _table([(k, s[k], f.get(k), pub.get(k)) for k in keys],
           "published" if published else "(none)")
    if published is None:
        print("  no published estimates given (--published FILE.json): SAEM is compared "
              "with FOCE-I only")
    print(f"  -2LL: importance sampling {e.ofv_:.3f} (MC se {e.ofv_se_:.3f}); FOCE-I at the "
          f"SAEM estimates {e.ofv_focei_:.3f}; FOCE-I fit {focei.estimator.ofv_:.3f}")
    worst = max(abs(s[k] / f[k] - 1) for k in ("KA", "CL", "V"))
    print(f"  largest SAEM vs FOCE-I difference in KA, CL, V: {100 * worst:.2f}%")
    if dask_workers > 1:
        dask, td = _timed(model=model, table=table, method="saem", saem=SAEM(seed=1),
                          workers=dask_workers)
        same = np.array_equal(dask.estimator.theta_, saem.estimator.theta_)
        print(f"  SAEM with the E-step on a {dask_workers}-worker Dask LocalCluster: "
              f"{td:.2f} s (in-process {ts:.2f} s); estimates identical: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warfarin", type=Path,
                        default=os.environ.get("MEDTWIN_WARFARIN_CSV") or None,
                        help="nlmixr2data warfarin as CSV (or MEDTWIN_WARFARIN_CSV)")
    parser.add_argument("--published", type=Path, default=None,
                        help="JSON of published warfarin PK estimates to compare with")
    parser.add_argument("--dask-workers", type=int, default=0)
    args = parser.parse_args()
    if REF.is_dir():
        bench_theoph()
    else:
        print(f"reference data {REF} is absent: Theoph skipped")
    if args.warfarin is None:
        print("warfarin: no data set given (--warfarin PATH or MEDTWIN_WARFARIN_CSV): skipped")
        return
    published = json.loads(args.published.read_text()) if args.published else None
    bench_warfarin(args.warfarin, published, args.dask_workers)


if __name__ == "__main__":
    main()
