"""Schemathesis against the service's own OpenAPI schema, for every role: no 5xx, no response
that breaks the schema, over thousands of generated requests (not derandomised).

Run: ``.venv/bin/python benchmarks/bench_fuzz.py [--cases 5000] [--seed N]``.

The service runs in-process (ASGI) over a fresh SQLite store with one user per role, two care
teams, two patients (one consented to research), a device key, stored readings and an alert.
Every operation is called as every role (admin, clinician, patient, researcher, device) and
anonymously, with about ``--cases / (operations x callers)`` generated cases each. Every case
runs to the end (a failure does not stop the run); the script prints the cases per caller,
the status classes seen, and each failing operation with one example, and exits 1 if any
server error or schema violation was found. The seed is printed so that a run can be repeated.
"""

from __future__ import annotations

import argparse
import logging
import math
import secrets
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CALLERS = ("admin", "clinician", "patient", "researcher", "device", "anonymous")
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _world(db: Path, stack: ExitStack) -> tuple[Any, dict[str, dict[str, str]]]:
    """The app (started: its lifespan runs until ``stack`` closes) and each caller's
    headers."""
    from fastapi.testclient import TestClient

    from medtwin.api.app import create_app
    from medtwin.api.settings import Settings
    from medtwin.core.codes import HEART_RATE
    from medtwin.core.records import Consent, Observation, Patient
    from medtwin.security.crypto import KeyRing
    from medtwin.store.alerts import AlertStore
    from medtwin.store.event_store import EventStore

    keyring = KeyRing.generate()
    store = EventStore.open(db, keyring=keyring)
    pts = [Patient(id=pid, source_id=f"Patient/{pid}", gender="female", birth_year=1960,
                   identity={"name": [{"family": fam, "given": ["Ada"]}]})
           for pid, fam in (("p1", "Lovelace"), ("p2", "Byron"))]
    recs = [Observation(subject=pid, code=HEART_RATE, time=T0 + timedelta(minutes=i),
                        value=60.0 + i, unit="/min", source_id=f"Observation/{pid}-{i}")
            for pid in ("p1", "p2") for i in range(20)]
    recs.append(Consent(subject="p1", source_id="Consent/c1", status="active",
                        scope="research", provision="permit", time=T0))
    store.append(pts, recs)
    AlertStore(store).raise_alert("p1", "news2", 2, "NEWS2 7 (high)", {"score": 7}, T0)
    settings = Settings(argon2_memory_kib=256, argon2_time_cost=1, ws_poll_seconds=0.05,
                        login_attempts=1000)
    app = create_app(settings, store, keyring)
    d = app.state.services.directory
    password = secrets.token_urlsafe(24)
    d.add_user("root", "admin", password)
    clin = d.add_user("dr_a", "clinician", password)
    d.add_user("pat1", "patient", password, patient_id="p1")
    d.add_user("res", "researcher", password)
    d.add_to_team("ward-a", user_id=clin.id, patient_id="p1")
    key = d.add_device_key("cgm-1", "p1")
    headers: dict[str, dict[str, str]] = {"anonymous": {}, "device": {
        "Authorization": f"Bearer {key}"}}
    stack.callback(store.close)
    client = stack.enter_context(TestClient(app))
    for role, name in (("admin", "root"), ("clinician", "dr_a"), ("patient", "pat1"),
                       ("researcher", "res")):
        r = client.post("/auth/token", data={"username": name, "password": password})
        r.raise_for_status()
        headers[role] = {"Authorization": f"Bearer {r.json()['access_token']}"}
    return app, headers


@dataclass
class Tally:
    """What the session saw: cases per caller, status classes, failures per operation."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)


def _fuzz(op: Any, caller: str, auth: dict[str, str], examples: int, run_seed: int,
          checks: list[Any], tally: Tally) -> None:
    """``examples`` generated cases of one operation as one caller, each run to the end."""
    from hypothesis import HealthCheck, given, seed, settings

    name = f"{op.method.upper()} {op.path} as {caller}"

    @seed(run_seed)
    @given(case=op.as_strategy())
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        tally.cases[caller] += 1
        try:
            response = case.call(headers={**(case.headers or {}), **auth})
            tally.statuses[f"{response.status_code // 100}xx"] += 1
            if response.status_code >= 500:
                tally.server_errors[name] += 1
            case.validate_response(response, checks=checks)
        except Exception as exc:  # noqa: BLE001 - every case runs; failures are listed
            tally.failures.setdefault(name, f"{type(exc).__name__}: {str(exc)[:600]}")

    run()


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzing session and print its figures; exit 1 on any failure."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5000, help="total generated cases (>= 1)")
    ap.add_argument("--seed", type=int, default=None, help="repeat a run (printed each run)")
    args = ap.parse_args(argv)
    if args.cases < 1:
        ap.error("--cases must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    run_seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance,
              content_type_conformance]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        app, headers = _world(Path(tmp) / "fuzz.sqlite", stack)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [r.ok() for r in schema.get_all_operations()]
        per = max(1, math.ceil(args.cases / (len(operations) * len(CALLERS))))
        tally = Tally()
        started = time.perf_counter()
        for caller in CALLERS:
            for op in operations:
                _fuzz(op, caller, headers[caller], per, run_seed, checks, tally)
        elapsed = time.perf_counter() - started
    counts, statuses, failures, server_errors = (tally.cases, tally.statuses, tally.failures,
                                                 tally.server_errors)
    total = sum(counts.values())
    print(f"seed {run_seed}: {total} cases over {len(operations)} operations x "
          f"{len(CALLERS)} callers in {elapsed:.0f} s ({total / elapsed:.0f} cases/s)")
    print("cases by caller: " + ", ".join(f"{c} {counts[c]}" for c in CALLERS))
    print("responses: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    print(f"server errors (5xx): {sum(server_errors.values())}; operations with a failed "
          f"check: {len(failures)}")
    by_op: dict[str, list[str]] = defaultdict(list)
    for name, text in sorted(failures.items()):
        by_op[text].append(name)
    for text, names in by_op.items():
        print(f"\n{', '.join(names)}:\n  {text}")
    return 1 if failures or server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
