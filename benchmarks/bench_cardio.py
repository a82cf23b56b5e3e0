"""Heartbeat-resolved cardiovascular simulation: subject-minutes per wall second.

A virtual population of ``--subjects`` (default 1,000) adults runs ``--minutes`` of the Smith
2004 / Ursino 1998 model beat by beat (:func:`medtwin.models.cardio.beats.run_beats`, RK4 at
8 ms, compiled and threaded over subjects). In the same run, the same equations (the same
compiled right-hand side) are integrated one subject at a time with
``scipy.integrate.solve_ivp`` at rtol 1e-6 / atol 1e-6; only ``--lsoda-subjects`` subjects are
timed for ``--lsoda-seconds`` of simulated time each and the time is extrapolated per
subject-minute (stated in the output). LSODA, the baseline the issue names, is tried first: it
stalls at the first valve closure (repeated right-hand-side calls at one time, memory growing
without bound), so it is capped and reported, and the ratio is taken against RK45.
Peak memory: the process's maximum resident set.

    python benchmarks/bench_cardio.py [--subjects 1000] [--minutes 1]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import time

import numpy as np

from medtwin.models.cardio.beats import run_beats
from medtwin.models.cardio.smith_ursino import SmithUrsino, cardio_rhs
from medtwin.twin.cardio import virtual_population

log = logging.getLogger("bench_cardio")


class _StalledError(Exception):
    pass


def one_at_a_time(cohort, seconds: float, method: str, cap: int = 200_000  # noqa: ANN001
                  ) -> tuple[float, dict]:
    """Wall seconds per subject-minute of ``solve_ivp(method)``, one subject at a time, the
    same compiled right-hand side called from Python. A run that calls the right-hand side
    more than ``cap`` times is stopped and reported as stalled (with the time it reached)."""
    from scipy.integrate import solve_ivp

    model = SmithUrsino()
    p_all = np.array(cohort.parameters(model), dtype=float)
    total = 0.0
    info: dict = {}
    for i in range(p_all.shape[0]):
        p = np.ascontiguousarray(p_all[i])
        x0 = model.initial_state(p[None])[0]
        m = np.ascontiguousarray(model.initial_memory(p[None])[0])
        u = np.zeros(1)
        calls = [0, 0.0]

        def f(t: float, x: np.ndarray, p: np.ndarray = p, m: np.ndarray = m,
              calls: list = calls, u: np.ndarray = u) -> np.ndarray:
            calls[0] += 1
            calls[1] = max(calls[1], t)
            if calls[0] > cap:
                raise _StalledError
            dx = np.empty_like(x)
            cardio_rhs(t, np.ascontiguousarray(x), u, m, p, dx)
            return dx

        t0 = time.perf_counter()
        try:
            sol = solve_ivp(f, (0.0, seconds), x0, method=method, rtol=1e-6, atol=1e-6)
        except _StalledError:
            return math.inf, {"stalled_at": calls[1], "nfev": calls[0]}
        total += time.perf_counter() - t0
        info = {"nfev": sol.nfev, "V_blood": float(sol.y[:6, -1].sum())}
    return total / p_all.shape[0] * (60.0 / seconds), info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--lsoda-subjects", type=int, default=2)
    ap.add_argument("--lsoda-seconds", type=float, default=5.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cohort = virtual_population(args.subjects, seed=1)
    run_beats(cohort.select(list(cohort.ids[:2])), 1.0)  # compile outside the timing
    t0 = time.perf_counter()
    r = run_beats(cohort, 60.0 * args.minutes)
    wall = time.perf_counter() - t0
    medtwin_rate = args.subjects * args.minutes / wall
    drift = float(np.max(np.abs(r.blood_volume[:, 1] - r.blood_volume[:, 0])))

    small = cohort.select(list(cohort.ids[: args.lsoda_subjects]))
    _, lsoda = one_at_a_time(small, args.lsoda_seconds, "LSODA")
    sec_per_subj_min, info = one_at_a_time(small, args.lsoda_seconds, "RK45")
    base_rate = 1.0 / sec_per_subj_min
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    last = r.last(5)
    log.info("cores: %d", os.cpu_count() or 1)
    log.info("medtwin  run_beats (RK4 8 ms, %d subjects x %g min): %.2f s wall -> %.1f "
             "subject-minutes/s; %d beats per subject; blood-volume drift %.1e mL",
             args.subjects, args.minutes, wall, medtwin_rate, int(np.median(r.n_beats)), drift)
    log.info("         cohort median MAP %.1f mmHg, HR %.1f /min, CO %.2f L/min",
             np.median(last["MAP"]), np.median(last["HR"]), np.median(last["CO"]))
    if "stalled_at" in lsoda:
        log.info("baseline solve_ivp LSODA: STALLED at t = %.3f s after %d right-hand-side calls "
                 "(it cannot pass a valve closing under Smith's open-on-pressure/close-on-flow "
                 "law); no LSODA rate exists", lsoda["stalled_at"], lsoda["nfev"])
    else:
        log.info("baseline solve_ivp LSODA finished (%s)", lsoda)
    log.info("baseline solve_ivp RK45, one subject at a time: %d subjects x %g s timed, "
             "EXTRAPOLATED to %.2f s per subject-minute -> %.3f subject-minutes/s "
             "(last: %d rhs calls, V_blood %.6f mL)", args.lsoda_subjects, args.lsoda_seconds,
             sec_per_subj_min, base_rate, info["nfev"], info["V_blood"])
    log.info("ratio medtwin / RK45 baseline: %.0fx (goal >= 100x); medtwin %.1f subject-min/s "
             "(goal >= 100 on 2 cores)", medtwin_rate / base_rate, medtwin_rate)
    log.info("peak memory (max RSS): %.0f MiB", peak)


if __name__ == "__main__":
    main()
