"""FHIR import throughput (resources/s) into SQLite and PostgreSQL vs validate-only.

The cost to beat is validating with fhir.resources alone, measured here in the same run: each
import run is paired with a validate-only run just before it, and the ratio of the two rates
is taken per pair, so that the load of other processes on a shared machine touches both
sides of a ratio alike. Printed: the median ratio over the repeats with its range, and the
rates of the best pair. Goal: import on one core >= 0.7x validate-only (the store is never
the bottleneck), and with both cores (parallel parsing) beyond the single-core validate-only
rate.

Both sides run warm: the fhir.resources classes and the UCUM registry are built before any
timing (a one-off per process: ``medtwin import`` builds the classes before it starts and the
registry at its first unit conversion), and the garbage collector is frozen after warming, as
``medtwin import`` does.

    python benchmarks/bench_import.py [--pg postgresql://postgres@127.0.0.1:5432/test]
                                      [--synthetic 48] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from medtwin.interop.fhir.synthetic import generate_patients, write_bundles
from medtwin.interop.fhir.validate import model_class
from medtwin.interop.importer import import_paths, warm_up
from medtwin.store.event_store import EventStore

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT.parent / "shared" / "reference" / "fhir" / "synthea"


def validate_only(files: list[Path]) -> tuple[int, float]:
    """Parse JSON and validate every resource with fhir.resources R4B; (resources, seconds)."""
    n, t0 = 0, time.perf_counter()
    for f in files:
        for e in json.loads(f.read_bytes())["entry"]:
            model_class(e["resource"]["resourceType"]).model_validate(e["resource"])
            n += 1
    return n, time.perf_counter() - t0


def timed_import(db: str, files: list[Path], workers: int, schema: str | None = None
                 ) -> tuple[int, float, int]:
    with EventStore.open(db, schema=schema) as store:
        t0 = time.perf_counter()
        s = import_paths(store, files, workers=workers)
        dt = time.perf_counter() - t0
    assert s.rejected == 0 and s.files_refused == 0, s.text()
    return s.resources_read, dt, s.stored


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def run(label: str, files: list[Path], pg: str | None, repeat: int) -> None:
    warm_up()                 # build the model classes and the unit registry, then freeze
    validate_only(files[:1])  # them out of the GC, as `medtwin import` does: both
    gc.collect()              # measurements run that way
    gc.freeze()
    n = validate_only(files)[0]
    print(f"\n== {label}: {len(files)} files, {n} resources")
    targets = [("sqlite", None)] + ([("postgresql", pg)] if pg else [])
    bases = []
    for name, url in targets:
        for workers in (1, 2):
            pairs = []
            for _ in range(repeat):
                vn, vt = validate_only(files)
                with tempfile.TemporaryDirectory() as tmp:
                    schema = f"bench_{uuid.uuid4().hex[:10]}" if url else None
                    db = url or str(Path(tmp) / "bench.sqlite")
                    try:
                        n, dt, stored = timed_import(db, files, workers, schema)
                    finally:
                        if url and schema:
                            drop_schema(url, schema)
                pairs.append((n / dt, vn / vt))
                bases.append(vn / vt)
            ratios = sorted(r / b for r, b in pairs)
            rate, base = max(pairs, key=lambda p: p[0] / p[1])
            print(f"import -> {name:10s} workers={workers}: {statistics.median(ratios):4.2f}x "
                  f"validate-only (median of {repeat}; range {ratios[0]:.2f}-{ratios[-1]:.2f}) "
                  f"best pair {rate:6.0f} vs {base:6.0f} resources/s; {stored} records stored")
    print(f"validate-only (fhir.resources, 1 core): median {statistics.median(bases):.0f} "
          f"resources/s (range {min(bases):.0f}-{max(bases):.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL URL ('' to skip)")
    ap.add_argument("--synthetic", type=int, default=48, help="synthetic patients (0 to skip)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pg = args.pg or None
    if SYNTHEA.is_dir():
        run("Synthea reference bundles", sorted(SYNTHEA.glob("*.json")), pg, args.repeat)
    else:
        print(f"reference bundles not found at {SYNTHEA}; skipping them")
    if args.synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_bundles(generate_patients(args.synthetic, seed=0, days=2), Path(tmp))
            run(f"medtwin synthetic patients x{args.synthetic}", files, pg, args.repeat)


if __name__ == "__main__":
    main()
