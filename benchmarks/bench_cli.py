"""CLI start-up: `medtwin --version` and `medtwin --help` (goal < 0.5 s), next to peers
measured in the same run: a bare interpreter (`python -c pass`) and importing every command
module eagerly (what `medtwin --version` cost before the command modules were loaded lazily).

    python benchmarks/bench_cli.py [--runs 7]

Each figure is the median wall time of fresh processes (the first, warming the disk cache
and numba's, is dropped)."""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

EAGER = ("import medtwin.cli as c, importlib; "
         "[importlib.import_module('medtwin.commands.' + m) for m in "
         "('records', 'monitor', 'live', 'glucose', 'cardio', 'pk', 'ops', 'security', "
         "'hl7', 'db')]")


def _median(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    runs = ap.parse_args().runs
    exe = shutil.which("medtwin") or sys.exit("medtwin is not installed (pip install -e .)")
    bare = _median([sys.executable, "-c", "pass"], runs)
    version = _median([exe, "--version"], runs)
    help_ = _median([exe, "--help"], runs)
    eager = _median([sys.executable, "-c", EAGER], max(3, runs // 2))
    print(f"python -c pass           {bare:7.3f} s")
    print(f"medtwin --version        {version:7.3f} s  (goal < 0.5 s: "
          f"{'met' if version < 0.5 else 'NOT met'}; {version / bare:.1f}x a bare interpreter)")
    print(f"medtwin --help           {help_:7.3f} s  (goal < 0.5 s: "
          f"{'met' if help_ < 0.5 else 'NOT met'})")
    print(f"every command imported   {eager:7.3f} s  (eager start-up; --version is "
          f"{eager / version:.1f}x faster)")


if __name__ == "__main__":
    main()
