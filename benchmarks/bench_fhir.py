"""FHIR store benchmark on PostgreSQL (a schema of its own, dropped after).

Figures, each next to the same run's baseline:
- ``Observation?patient=&code=&date=ge`` p99 (single client, through FhirRepository.search)
  with N stored Observations (``--observations``, default 1,000,000; ``--quick`` 50,000);
  goal < 50 ms;
- Bulk Data NDJSON import rate (2 worker processes) next to the validate-only rate
  (fhir.resources on one core); goal ratio >= 1.0;
- export (every current resource as NDJSON text), resources/s; goal >= 20,000.

Stores are opened with a key ring (resources sealed at rest, identifying search values
blind), as in production; ``--unsealed`` measures without one.

    python benchmarks/bench_fhir.py [--pg postgresql://postgres@127.0.0.1:5432/test]
                                    [--observations 1000000 | --quick]
                                    [--ndjson 40000] [--only ndjson] [--unsealed]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medtwin.core import codes
from medtwin.interop.fhir.repository import FhirRepository
from medtwin.interop.fhir.search import resource_write
from medtwin.interop.fhir.validate import model_class
from medtwin.interop.importer import import_paths, warm_up
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore

CODES = [codes.HEART_RATE, codes.BODY_TEMPERATURE, codes.RESPIRATORY_RATE,
         codes.SPO2_PULSE_OXIMETRY, codes.SYSTOLIC_BP, codes.GLUCOSE_BLOOD, codes.BODY_WEIGHT,
         codes.BODY_HEIGHT, codes.BMI, codes.PAIN_SCORE]
UNITS = dict(zip(CODES, ["/min", "Cel", "/min", "%", "mm[Hg]", "mg/dL", "kg", "cm", "kg/m2",
                         "{score}"], strict=True))
VALUES = dict(zip(CODES, [72, 37, 16, 97, 120, 110, 70, 170, 24, 2], strict=True))
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def observation(i: int, pid: str, rng: random.Random) -> dict:
    code = CODES[i % len(CODES)]
    when = T0 + timedelta(minutes=rng.randrange(365 * 24 * 60))
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                      "observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
            "valueQuantity": {"value": VALUES[code] + (i % 5) / 10, "unit": UNITS[code],
                              "system": "http://unitsofmeasure.org", "code": UNITS[code]}}


def load(repo: FhirRepository, n: int, patients: int, chunk: int = 20_000) -> float:
    """Store ``patients`` Patients and ``n`` Observations straight as resource rows (the
    fixture for the query figure; rows/s printed for information)."""
    rng = random.Random(0)
    t0 = time.perf_counter()
    repo.store.write([resource_write({"resourceType": "Patient", "id": f"p{k}",
                                      "gender": "female"}) for k in range(patients)])
    for start in range(0, n, chunk):
        rows = [resource_write(observation(i, f"p{i % patients}", rng))
                for i in range(start, min(n, start + chunk))]
        repo.store.write(rows)
        print(f"  loaded {min(n, start + chunk):,} / {n:,}", flush=True)
    return n / (time.perf_counter() - t0)


def query_p99(repo: FhirRepository, patients: int, queries: int = 300) -> tuple[float, float]:
    rng = random.Random(1)
    times = []
    for _ in range(queries):
        pid = f"p{rng.randrange(patients)}"
        since = (T0 + timedelta(days=rng.randrange(300))).date().isoformat()
        params = [("patient", pid), ("code", f"http://loinc.org|{rng.choice(CODES)}"),
                  ("date", f"ge{since}")]
        t = time.perf_counter()
        repo.search("Observation", params)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return times[int(0.99 * len(times)) - 1], statistics.median(times)


def ndjson_rates(url: str, n: int, files: int = 8, *, sealed: bool = True
                 ) -> tuple[float, float]:
    """(import resources/s with 2 workers, validate-only resources/s on one core)."""
    rng = random.Random(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pats = max(1, n // 200)
        (folder / "Patient.ndjson").write_text("\n".join(json.dumps(
            {"resourceType": "Patient", "id": f"p{k}", "gender": "male"})
            for k in range(pats)) + "\n")
        per = n // files
        for f in range(files):
            (folder / f"Observation-{f}.ndjson").write_text("\n".join(json.dumps(
                observation(f * per + i, f"p{(f * per + i) % pats}", rng))
                for i in range(per)) + "\n")
        warm_up()
        t = time.perf_counter()
        count = 0
        for p in sorted(folder.glob("*.ndjson")):
            for line in p.read_text().splitlines():
                res = json.loads(line)
                model_class(res["resourceType"]).model_validate(res)
                count += 1
        validate = count / (time.perf_counter() - t)
        schema = f"bench_fhir_nd_{uuid.uuid4().hex[:8]}"
        try:
            with EventStore.open(url, schema=schema,
                                 keyring=KeyRing.generate() if sealed else None) as store:
                t = time.perf_counter()
                summary = import_paths(store, [folder], workers=2)
                rate = summary.resources_read / (time.perf_counter() - t)
                assert summary.rejected == 0, summary.text()
        finally:
            drop(url, schema)
    return rate, validate


def export_rate(repo: FhirRepository) -> float:
    t = time.perf_counter()
    n = 0
    for r in repo.iter_resources():
        r.text()  # the NDJSON line
        n += 1
    return n / (time.perf_counter() - t)


def drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--observations", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="50,000 observations")
    ap.add_argument("--ndjson", type=int, default=40_000, help="observations to import")
    ap.add_argument("--unsealed", action="store_true", help="store without a key ring (by "
                    "default resources are sealed at rest, as in production)")
    ap.add_argument("--only", choices=["ndjson"], help="run only this figure")
    args = ap.parse_args()
    if args.only == "ndjson":
        imp, validate = ndjson_rates(args.pg, args.ndjson, sealed=not args.unsealed)
        print(f"NDJSON import (2 workers):           {imp:,.0f} resources/s vs validate-only "
              f"{validate:,.0f}/s on one core = {imp / validate:.2f}x (goal >= 1.0x)")
        return
    n = 50_000 if args.quick else args.observations
    patients = max(1, n // 1000)
    schema = f"bench_fhir_{uuid.uuid4().hex[:8]}"
    try:
        with EventStore.open(args.pg, schema=schema,
                             keyring=None if args.unsealed else KeyRing.generate()) as store:
            repo = FhirRepository(store)
            print(f"loading {n:,} Observations for {patients:,} patients ...", flush=True)
            rows = load(repo, n, patients)
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
            p99, median = query_p99(repo, patients)
            export = export_rate(repo)
    finally:
        drop(args.pg, schema)
    imp, validate = ndjson_rates(args.pg, args.ndjson, sealed=not args.unsealed)
    print(f"stored Observations:                 {n:,} (loaded at {rows:,.0f} rows/s)")
    print(f"Observation?patient&code&date=ge:    p99 {p99:.1f} ms, median {median:.1f} ms "
          f"(goal < 50 ms)")
    print(f"NDJSON import (2 workers):           {imp:,.0f} resources/s vs validate-only "
          f"{validate:,.0f}/s on one core = {imp / validate:.2f}x (goal >= 1.0x)")
    print(f"export (NDJSON text):                {export:,.0f} resources/s (goal >= 20,000)")


if __name__ == "__main__":
    main()
