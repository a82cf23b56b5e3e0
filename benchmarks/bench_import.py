"""FHIR import throughput (resources/s) into SQLite and PostgreSQL vs validate-only.

The cost to beat is validating with fhir.resources alone, measured here in the same run.
Goal: import on one core >= 0.7x validate-only (the store is never the bottleneck), and with
both cores (parallel parsing) beyond the single-core validate-only rate.

    python benchmarks/bench_import.py [--pg postgresql://postgres@127.0.0.1:5432/test]
                                      [--synthetic 48] [--repeat 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import uuid
from pathlib import Path

from medtwin.interop.fhir.synthetic import generate_patients, write_bundles
from medtwin.interop.fhir.validate import model_class
from medtwin.interop.importer import import_paths
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
    validate_only(files[:1])  # build the model classes, then freeze them out of the GC, as
    gc.collect()              # `medtwin import` does: both measurements run that way
    gc.freeze()
    best = min((validate_only(files) for _ in range(repeat)), key=lambda x: x[1])
    base = best[0] / best[1]
    print(f"\n== {label}: {len(files)} files, {best[0]} resources")
    print(f"validate-only (fhir.resources, 1 core): {base:8.0f} resources/s")
    targets = [("sqlite", None)] + ([("postgresql", pg)] if pg else [])
    for name, url in targets:
        for workers in (1, 2):
            rates = []
            for _ in range(repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    schema = f"bench_{uuid.uuid4().hex[:10]}" if url else None
                    db = url or str(Path(tmp) / "bench.sqlite")
                    try:
                        n, dt, stored = timed_import(db, files, workers, schema)
                    finally:
                        if url and schema:
                            drop_schema(url, schema)
                rates.append(n / dt)
            rate = max(rates)
            print(f"import -> {name:10s} workers={workers}: {rate:8.0f} resources/s "
                  f"({rate / base:4.2f}x validate-only; {stored} records stored)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL URL ('' to skip)")
    ap.add_argument("--synthetic", type=int, default=48, help="synthetic patients (0 to skip)")
    ap.add_argument("--repeat", type=int, default=2)
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
