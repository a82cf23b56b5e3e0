"""Reference comparisons: the Nelson model against treat-sim 3.0.0 (run as a module to print).

``python -m medtwin.ops.compare [reps] [seed]`` prints each KPI, our mean with its 95% CI,
the reference, and whether the reference lies inside (a) our CI and (b) the two-sample
interval that also allows for the reference being a 20-replication mean itself.
"""

from __future__ import annotations

import math
import sys

import pandas as pd
from scipy import stats

from medtwin.ops.loader import load_model
from medtwin.ops.runner import run_replications

# treat-sim 3.0.0, 20 replications (seeds 0-19), base scenario (shared/reference/ops/README.md)
NELSON_REFERENCE: dict[str, float] = {
    "wait:triage": 32.56, "util:triage_bays": 0.61,
    "wait:registration": 104.69, "util:registration_clerks": 0.85,
    "wait:examination": 23.36, "util:exam_rooms": 0.86,
    "wait:non_trauma_treatment": 130.73, "util:non_trauma_cubicles": 0.88,
    "wait:stabilisation": 166.98, "util:trauma_bays": 0.84,
    "wait:trauma_treatment": 14.39, "util:trauma_cubicles": 0.52,
    "time_in_system:non_trauma": 229.04, "time_in_system:trauma": 306.46,
    "arrivals": 227.25, "throughput": 165.85,
}
REFERENCE_REPS = 20
ROUNDING = {"util": 0.005}  # the README gives utilisations to 2 decimals


def compare_nelson(reps: int = 20, seed: int = 0, workers: int = 1) -> pd.DataFrame:
    """Run the shipped Nelson model and set each KPI beside the treat-sim reference."""
    res = run_replications(load_model("nelson"), reps, seed, workers=workers, progress=False,
                           hourly=False)
    s = res.summary()
    rows = []
    for kpi, ref in NELSON_REFERENCE.items():
        m, sd, n = s.loc[kpi, "mean"], s.loc[kpi, "sd"], int(s.loc[kpi, "n"])
        tol = ROUNDING["util"] if kpi.startswith("util:") else 0.0
        t = stats.t.ppf(0.975, n - 1)
        half = t * sd / math.sqrt(n)
        half2 = t * sd * math.sqrt(1 / n + 1 / REFERENCE_REPS)
        rows.append({"kpi": kpi, "mean": m, "ci_low": m - half, "ci_high": m + half,
                     "reference": ref, "in_ci": abs(ref - m) <= half + tol,
                     "half_width_2sample": half2,
                     "half_width_2sample_20": t * sd * math.sqrt(2 / REFERENCE_REPS),
                     "agrees": abs(ref - m) <= half2 + tol})
    return pd.DataFrame(rows).set_index("kpi")


def main(argv: list[str]) -> int:
    """Print the comparison table (for people, not for the library)."""
    reps = int(argv[0]) if argv else 20
    seed = int(argv[1]) if len(argv) > 1 else 0
    t = compare_nelson(reps, seed)
    sys.stdout.write(t.drop(columns=["half_width_2sample_20"]).round(3).to_string() + "\n")
    sys.stdout.write(f"reference inside our 95% CI: {int(t['in_ci'].sum())}/{len(t)}; "
                     f"inside the two-sample 95% interval: {int(t['agrees'].sum())}/{len(t)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
