"""Benchmark: 1,000+ patient-days of the UVA/Padova model with basal-bolus in the loop.

    .venv/bin/python benchmarks/bench_glucose.py [--days 34] [--subjects 30] [--workers 2]
        [--loop compiled|python] [--peer-python /tmp/simg-venv/bin/python] [--peer-seconds 16]

Default: the 30 virtual subjects x 34 days (1,020 patient-days), three meals a day (50 g at
07:00, 70 g at 12:00, 80 g at 19:00), basal-bolus controller every minute on a noise-free
1-min sensor, Insulet pump, Dormand-Prince rtol 1e-6 / atol 1e-12 (the peer's settings).
The closed loop (sensor, controller, pump, solver) runs compiled, vectorised over the
subjects (``--loop python`` runs the same controller through the Python loop instead, one call
per controller period). Worker processes are started and their kernels loaded before the clock
starts (the peer's import time is not counted either). Prints compile/load time separately from
run time, wall time, patient-days per second, peak memory (the process's peak RSS) and the
speed-up over simglucose 0.2.11, timed in the same run when ``--peer-python`` points at a Python
with simglucose installed (one subject-day), else taken as the figure measured on this machine
class (16 s per patient-day). Goal: >= 3,000x (stretch 10,000x) with 2 workers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

PEER_SCRIPT = r"""
import time, logging, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
from datetime import datetime, timedelta
from simglucose.simulation.env import T1DSimEnv
from simglucose.controller.basal_bolus_ctrller import BBController
from simglucose.sensor.cgm import CGMSensor
from simglucose.actuator.pump import InsulinPump
from simglucose.patient.t1dpatient import T1DPatient
from simglucose.simulation.scenario import CustomScenario
from simglucose.simulation.sim_engine import SimObj
start = datetime(2018, 1, 1)
scen = CustomScenario(start_time=start, scenario=[(7, 50), (12, 70), (19, 80)])
env = T1DSimEnv(T1DPatient.withName("adult#001"), CGMSensor.withName("Dexcom", seed=1),
                InsulinPump.withName("Insulet"), scen)
sim = SimObj(env, BBController(), timedelta(days=1), animate=False, path="/tmp/simg-out")
t = time.perf_counter()
sim.simulate()
print(time.perf_counter() - t)
"""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far [MB] (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_peer(python: str) -> float | None:
    """Wall seconds simglucose needs for one subject-day (Dexcom, basal-bolus), or None."""
    try:
        out = subprocess.run([python, "-c", PEER_SCRIPT], capture_output=True, text=True,
                             timeout=900, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        print(f"peer run failed ({e}); using the recorded figure instead")
        return None


def run_chunk(subjects: list[str], days: int, sensor: str = "ideal",
              loop: str = "compiled") -> dict:
    """Simulate ``subjects`` for ``days`` (in a worker process); return timings and a summary."""
    import numpy as np

    from medtwin.core.controller import IdealSensor
    from medtwin.core.schedule import Meal, Schedule
    from medtwin.core.simulate import simulate
    from medtwin.devices.controllers import BasalBolus
    from medtwin.devices.pump import InsulinPump
    from medtwin.models.glucose.subjects import uva_padova_cohort
    from medtwin.models.glucose.uva_padova import UVAPadova

    model = UVAPadova()
    pump = InsulinPump.from_name("Insulet", convention="simglucose")
    cohort = uva_padova_cohort(subjects)
    meals = [(7 * 60, 50.0), (12 * 60, 70.0), (19 * 60, 80.0)]
    schedule = Schedule([Meal(d * 1440.0 + tm, g) for d in range(days) for tm, g in meals])
    times = np.arange(0.0, days * 1440 + 1.0)
    t = time.perf_counter()
    cpu = time.process_time()
    if sensor == "ideal":
        dev = IdealSensor(1.0)
    else:
        from medtwin.devices.cgm import CGMSensor

        dev = CGMSensor.from_name(sensor, rng="simglucose")
    result = simulate(model, cohort, schedule, times, controller=BasalBolus(),
                      sensor=dev, pump=pump, seed=1, compiled=loop == "compiled")
    bg = result["G_sc"]
    return {
        "wall": time.perf_counter() - t,
        "cpu": time.process_time() - cpu,
        "nfev": result.meta["rhs_evaluations"],
        "bg_sum": float(bg.sum()), "bg_n": bg.size, "bg_min": float(bg.min()),
        "bg_max": float(bg.max()), "rss_mb": peak_rss_mb(),
    }


def warm_up() -> float:
    """Load (or, the first time ever, compile) every kernel; return the seconds it took."""
    t = time.perf_counter()
    import numpy as np

    from medtwin.core.controller import IdealSensor
    from medtwin.core.schedule import Schedule
    from medtwin.core.simulate import simulate
    from medtwin.devices.controllers import BasalBolus
    from medtwin.models.glucose.subjects import uva_padova_cohort
    from medtwin.models.glucose.uva_padova import UVAPadova

    simulate(UVAPadova(), uva_padova_cohort(["adult#001"]), Schedule().with_meal(1, 10),
             np.arange(0.0, 31.0), controller=BasalBolus(), sensor=IdealSensor())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=34)
    ap.add_argument("--subjects", type=int, default=30, help="first N of the 30 subjects")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes, each simulating a chunk of the subjects (default 1)")
    ap.add_argument("--sensor", default="ideal",
                    help="ideal (noise-free, controller every 1 min) or a CGM name such as "
                    "dexcom (controller every 3 min, like the timed peer run)")
    ap.add_argument("--loop", choices=("compiled", "python"), default="compiled",
                    help="run the closed loop compiled (default) or in Python")
    ap.add_argument("--peer-python", default=None, help="a Python with simglucose 0.2.11")
    ap.add_argument("--peer-seconds", type=float, default=16.0,
                    help="peer s/patient-day if it is not timed here (default 16)")
    args = ap.parse_args()

    t_warm = warm_up()
    from medtwin.models.glucose.subjects import subject_names

    subjects = subject_names()[: args.subjects]
    n_chunks = max(1, min(args.workers, len(subjects)))
    chunks = [list(c) for c in np.array_split(np.array(subjects, dtype=object), n_chunks)]
    if n_chunks == 1:
        t = time.perf_counter()
        parts = [run_chunk(chunks[0], args.days, args.sensor, args.loop)]
        wall = time.perf_counter() - t
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_chunks, mp_context=ctx, initializer=warm_up) as pool:
            # start every worker (each loads the kernels in its initializer) before timing
            list(pool.map(time.sleep, [1.0] * n_chunks))
            t = time.perf_counter()
            parts = list(pool.map(run_chunk, chunks, [args.days] * n_chunks,
                                  [args.sensor] * n_chunks, [args.loop] * n_chunks))
            wall = time.perf_counter() - t
    cpu = sum(p["cpu"] for p in parts)
    inner = max(p["wall"] for p in parts)
    nfev = sum(p["nfev"] for p in parts)
    patient_days = len(subjects) * args.days
    rate = patient_days / wall
    peer = time_peer(args.peer_python) if args.peer_python else None
    peer_s = peer if peer is not None else args.peer_seconds
    print(f"scenario        : {len(subjects)} subjects x {args.days} days = {patient_days} "
          f"patient-days, 3 meals/day, basal-bolus, sensor {args.sensor}, Insulet, "
          f"{args.loop} loop")
    print(f"compile/load    : {t_warm:.2f} s (imports + numba kernels: loaded from the cache, "
          "compiled on the first run ever)")
    print(f"run wall time   : {wall:.2f} s with {n_chunks} worker process(es) of subjects "
          f"(slowest worker {inner:.2f} s; CPU {cpu:.2f} s in all)")
    print(f"throughput      : {rate:.1f} patient-days/s "
          f"({1e3 * wall / patient_days:.2f} ms per patient-day)")
    print(f"rhs evaluations : {nfev:,} ({nfev / (patient_days * 1440):.1f} per subject-minute)")
    rss = [p["rss_mb"] for p in parts]
    print(f"peak memory     : {sum(rss) + (peak_rss_mb() if n_chunks > 1 else 0):.0f} MB in all "
          f"(peak RSS per worker {', '.join(f'{r:.0f}' for r in rss)} MB"
          + (f" + parent {peak_rss_mb():.0f} MB)" if n_chunks > 1 else ")"))
    mean = sum(p["bg_sum"] for p in parts) / sum(p["bg_n"] for p in parts)
    print(f"glucose check   : mean {mean:.1f} mg/dL, min {min(p['bg_min'] for p in parts):.1f}, "
          f"max {max(p['bg_max'] for p in parts):.1f}")
    src = "measured now, 1 subject-day, Dexcom" if peer is not None else \
        "recorded figure for this machine class; simglucose not timed in this run"
    print(f"peer simglucose : {peer_s:.2f} s per patient-day ({src})")
    print(f"speed-up        : {peer_s * rate:,.0f}x the peer's throughput "
          f"(goal >= 3,000x, stretch 10,000x; {patient_days} patient-days in {wall:.1f} s vs "
          f"{peer_s * patient_days / 3600:.1f} h)")


if __name__ == "__main__":
    sys.exit(main())
