"""Benchmark of SAEM population fits against published nlmixr2 values and FOCE-I in the same run.

1. Theoph (``../shared/reference/pk/theoph.csv``; dose in mg, etas on ka, cl, v, additive
   error): SAEM estimates vs nlmixr2's published SAEM fit (nlmixr2est README, commit
   042db2c), and the wall time vs FOCE-I on the same data.
2. Warfarin PK (nlmixr2data ``warfarin``, the concentration records, dvid == "cp"; the
   one-compartment first-order absorption model with combined error of nlmixr2est's
   tests/testthat/test-issue-503.R): SAEM vs FOCE-I estimates and wall times, and the %
   difference from published estimates when a JSON file of them is given (``--published``;
   keys KA, CL, V [, omega_ka, omega_cl, omega_v as variances, prop_sd, add_sd]).

3. Warfarin PK/PD (``--warfarin-pkpd PATH``: nlmixr2data ``warfarin`` with both endpoints,
   dvid "cp" and "pca"): nlmixr2's turnover model with Emax inhibition of PCA production
   (``benchmarks/warfarin-pkpd-nlmixr2.yaml``, the model language) fitted by SAEM and FOCE-I
   from nlmixr2's starting values: estimates, -2LL, times, and the % difference from the
   published population estimates found (posologyr's "Multiple endpoints" vignette, which
   gives them as the estimates of the nlmixr documentation's warfarin model; the estimation
   method is not stated there).

The warfarin data set is not part of the repository: export it from R
(``write.csv(nlmixr2data::warfarin, "warfarin.csv", row.names = FALSE)``) and pass the path
with ``--warfarin PATH`` or ``MEDTWIN_WARFARIN_CSV``.

Run: .venv/bin/python benchmarks/bench_saem.py [--warfarin PATH] [--published FILE.json]
     [--dask-workers 2] [--warfarin-pkpd PATH [--pkpd-focei ini|saem|skip]]
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
from medtwin.core.yamlio import load_yaml
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.language.model import parse_language_model
from medtwin.models.pk.spec import parse_model
from medtwin.twin.pk_population import PopulationFit, fit_population, theoph_events
from medtwin.twin.pk_population_language import LanguageFit

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "pk"
PKPD_MODEL = Path(__file__).resolve().parent / "warfarin-pkpd-nlmixr2.yaml"

# Population estimates of nlmixr2's warfarin PK/PD model (pk.turnover.emax3 on
# nlmixr2data::warfarin) as posologyr's "Multiple endpoints" vignette gives them
# (github.com/levenc/posologyr, vignettes/articles/multiple_endpoints.Rmd: "Fixed effects:
# population estimates" of "the warfarin data and model ... from the nlmixr documentation",
# https://nlmixr2.org/articles/multiple-endpoints.html). The estimation method is not stated;
# the ETA values it lists (1.02, 0.95, 0.53, 0.48, 0.71, 0.72, 0.36, 0.27 as lotri
# "variances") are not compared: their scale is not documented and they are far above the
# usual warfarin BSV, so they may be sds or a different fit.
PKPD_PUBLISHED = {"tktr": 0.106, "tka": -0.087, "tcl": -2.03, "tv": 2.07, "temax": 3.4,
                  "tec50": 0.00724, "tkout": -2.9, "te0": 4.57, "cp additive sd": 0.144,
                  "cp proportional sd": 0.15, "pca additive sd": 3.91}
# natural-scale parameter of each theta (for the % differences): exp, or expit for temax
PKPD_NATURAL = {"tktr": "ktr", "tka": "ka", "tcl": "cl", "tv": "v", "temax": "emax",
                "tec50": "ec50", "tkout": "kout", "te0": "e0"}

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


def warfarin_pkpd_table(path: Path) -> EventTable:
    """nlmixr2data's ``warfarin`` with both endpoints: doses into the depot (CMT 1),
    concentrations (dvid "cp") CMT 3 and PCA (dvid "pca") CMT 4, as the model file says."""
    w = pd.read_csv(path)
    dose = w["evid"] == 1
    cmt = np.where(dose, 1, np.where(w["dvid"].astype(str) == "cp", 3, 4))
    frame = pd.DataFrame({"ID": w["id"], "TIME": w["time"], "EVID": w["evid"].clip(0, 1),
                          "AMT": np.where(dose, w["amt"], 0.0), "CMT": cmt,
                          "DV": np.where(dose, np.nan, w["dv"]), "MDV": dose.astype(int)})
    return EventTable.from_frame(frame.reset_index(drop=True))


def _natural(name: str, x: float) -> float:
    return 1 / (1 + math.exp(-x)) if name == "temax" else math.exp(x)


def _pkpd_summary(fit: LanguageFit) -> dict[str, float]:
    out = dict(fit.fixed_effects().set_index("parameter")["estimate"])
    re = fit.random_effects().set_index("parameter")
    out.update({k: float(v) for k, v in re["sd"].items() if not k.startswith("omega")})
    out.update({k: float(v) for k, v in re["variance"].items() if k.startswith("omega")})
    return out


def _pkpd_table(s: dict[str, float], f: dict[str, float]) -> None:
    """SAEM (and FOCE-I) estimates beside the published ones, % differences on the natural
    scale (exp(theta), expit for temax)."""
    print(f"  {'parameter':<22}{'SAEM':>11}{'FOCE-I':>11}{'published':>11}"
          f"{'SAEM vs pub.':>14}{'FOCE-I vs pub.':>16}")
    worst: dict[str, float] = {}
    for k, v in s.items():
        fv = f.get(k)
        pub = PKPD_PUBLISHED.get(k)
        cells = [f"{v:11.4g}", f"{fv:11.4g}" if fv is not None else f"{'':>11}",
                 f"{pub:11.4g}" if pub is not None else f"{'':>11}"]
        diffs = ["", ""]
        if pub is not None:
            nat = k in PKPD_NATURAL
            ref = _natural(k, pub) if nat else pub
            for i, val in enumerate((v, fv)):
                if val is not None:
                    d = (_natural(k, val) if nat else val) / ref - 1
                    diffs[i] = f"{100 * d:+.1f}%"
                    name = ("SAEM", "FOCE-I")[i]
                    worst[name] = max(worst.get(name, 0.0), abs(d))
        label = f"{k} ({PKPD_NATURAL[k]})" if k in PKPD_NATURAL else k
        print(f"  {label:<22}{''.join(cells)}{diffs[0]:>14}{diffs[1]:>16}")
    print("  " + "; ".join(f"largest {k} difference from the published values {100 * v:.1f}%"
                           for k, v in worst.items()) + " (goal: within 5%)")


def bench_warfarin_pkpd(path: Path, focei_start: str, saem_opts: SAEM) -> None:
    table = warfarin_pkpd_table(path)
    model = parse_language_model(load_yaml(PKPD_MODEL.read_text(), file=str(PKPD_MODEL)),
                                 file=str(PKPD_MODEL))
    fit_population(model, table, method="saem", standard_errors=False,
                   saem=SAEM(n_burn=2, n_em=2, n_importance=10, n_conditional=2))  # JIT
    saem, ts = _timed(model=model, table=table, method="saem", saem=saem_opts,
                      standard_errors=False)  # SEs: FOCE-I's Hessian, 19 parameters
    e = saem.estimator
    n_obs = int((table.records["EVID"] == 0).sum())
    print(f"Warfarin PK/PD SAEM ({len(table.subjects)} subjects, {n_obs} observations of cp "
          f"and pca, 8 etas, {e.n_burn}+{e.n_em} iterations, the model language as ODEs): "
          f"{ts:.1f} s (iterations {e.seconds_iterations_:.1f} s, -2LL/EBE "
          f"{e.seconds_final_:.1f} s); -2LL by importance sampling {e.ofv_:.2f} (MC se "
          f"{e.ofv_se_:.2f})")
    scales = dict(zip(saem.estimated, saem.log_scale, strict=True))
    print("  scales: " + ", ".join(f"{n} {'log' if v else 'linear'}" for n, v in scales.items())
          + f"; mu-referenced etas: {sum(i is not None for i in saem.mu_index)} of "
          f"{len(saem.mu_index)}")
    print("  published: posologyr's vignette (thetas and residual sds; method not stated). "
          "ktr and ka enter the\n  concentrations symmetrically (two first-order steps in "
          "series), so either may take the other's value.")
    s = _pkpd_summary(saem)
    _pkpd_table(s, {})
    if focei_start == "skip":
        return
    start = model if focei_start == "ini" else saem.model
    focei, tf = _timed(model=start, table=table, standard_errors=False)
    origin = "nlmixr2's starting values" if focei_start == "ini" else "the SAEM estimates"
    print(f"  FOCE-I (from {origin}, no SEs): {tf:.1f} s, {focei.estimator.n_iter_} BFGS "
          f"iterations, {focei.estimator.n_evaluations_} -2LL evaluations, converged "
          f"{focei.estimator.converged_}; -2LL {focei.estimator.ofv_:.2f}; time ratio "
          f"SAEM/FOCE-I {ts / tf:.2f}")
    _pkpd_table(s, _pkpd_summary(focei))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warfarin", type=Path,
                        default=os.environ.get("MEDTWIN_WARFARIN_CSV") or None,
                        help="nlmixr2data warfarin as CSV (or MEDTWIN_WARFARIN_CSV)")
    parser.add_argument("--published", type=Path, default=None,
                        help="JSON of published warfarin PK estimates to compare with")
    parser.add_argument("--dask-workers", type=int, default=0)
    parser.add_argument("--warfarin-pkpd", type=Path, default=None,
                        help="nlmixr2data warfarin as CSV (both endpoints): the PK/PD fit")
    parser.add_argument("--pkpd-focei", choices=("ini", "saem", "skip"), default="ini",
                        help="FOCE-I of the PK/PD model from nlmixr2's starting values "
                        "(ini, default), from the SAEM estimates, or not at all")
    parser.add_argument("--pkpd-saem", type=int, nargs=2, default=(200, 300),
                        metavar=("N_BURN", "N_EM"))
    args = parser.parse_args()
    if args.warfarin_pkpd is not None:
        bench_warfarin_pkpd(args.warfarin_pkpd, args.pkpd_focei,
                            SAEM(n_burn=args.pkpd_saem[0], n_em=args.pkpd_saem[1], seed=1))
        if args.warfarin is None:
            return
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
