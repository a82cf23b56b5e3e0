"""Throughput and latency of the service under 50 concurrent clients on loopback, with
security (authentication + per-patient policy + audit chain) on and off in the same run.

Run: ``.venv/bin/python benchmarks/bench_api.py [--requests 1500] [--clients 50]``.
The script starts its own uvicorn server (a subprocess on 127.0.0.1) per mode over an
identical store: one patient with 1,000 observations. Security off is the benchmark-only
settings flag (refused in production mode).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from medtwin.core.codes import HEART_RATE

PASSWORD = "benchmark password"
N_OBS = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(db: Path, keyfile: Path) -> str:
    """Fill a store: one patient, 1,000 heart rates, a clinician in its care team, a device."""
    from medtwin.core.records import Observation, Patient
    from medtwin.security.crypto import KeyRing, load_key_file
    from medtwin.security.directory import Directory
    from medtwin.security.passwords import PasswordHasher
    from medtwin.store.event_store import EventStore

    KeyRing.generate().save(keyfile)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with EventStore.open(db, keyring=load_key_file(keyfile)) as store:
        store.append([Patient(id="bench", source_id="Patient/bench",
                              identity={"name": [{"family": "Bench"}]})],
                     [Observation(subject="bench", code=HEART_RATE, value=60 + i % 40,
                                  unit="/min", time=t0 + timedelta(minutes=i),
                                  source_id=f"Observation/b{i}") for i in range(N_OBS)])
        d = Directory(store.engine, PasswordHasher(time_cost=1, memory_kib=1024))
        clin = d.add_user("bench_clin", "clinician", PASSWORD)
        d.add_to_team("bench", user_id=clin.id, patient_id="bench")
        return d.add_device_key("bench-cgm", "bench")


def _serve(db: str, keyfile: str, port: int, secure: bool) -> None:
    """The server process."""
    import logging

    import uvicorn

    from medtwin.api.app import create_app
    from medtwin.api.settings import Settings
    from medtwin.security.crypto import load_key_file
    from medtwin.store.event_store import EventStore

    logging.basicConfig(level=logging.ERROR)
    ring = load_key_file(Path(keyfile))
    store = EventStore.open(db, keyring=ring)
    settings = Settings(argon2_memory_kib=1024, argon2_time_cost=1, security_enabled=secure)
    uvicorn.run(create_app(settings, store, ring), host="127.0.0.1", port=port,
                log_level="error", access_log=False)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def _load(base: str, method: str, path: str, headers: dict[str, str], n: int,
                clients: int, body_of: object = None, budget: float = 30.0
                ) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    counter = iter(range(n))
    stop = time.perf_counter() + budget
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=30) as client:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.perf_counter() > stop:
                    return
                t = time.perf_counter()
                r = await client.request(method, path, json=body_of(i) if body_of else None)
                lat.append(time.perf_counter() - t)
                if r.status_code >= 300:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"n": len(lat), "rps": len(lat) / wall, "p50": _pct(lat, 0.5),
            "p99": _pct(lat, 0.99), "errors": errors}


async def _sequential(base: str, path: str, headers: dict[str, str], n: int) -> float:
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            r = await client.get(path)
            lat.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
    return _pct(lat, 0.99)


def _run_mode(secure: bool, args: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    db, keyfile = tmp / f"{'on' if secure else 'off'}.sqlite", tmp / f"keys-{secure}.json"
    device_key = _prepare(db, keyfile)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(db), str(keyfile),
                             str(port), "1" if secure else "0"])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        headers: dict[str, str] = {}
        dev: dict[str, str] = {}
        if secure:
            tok = httpx.post(f"{base}/auth/token", data={"username": "bench_clin",
                                                         "password": PASSWORD}).json()
            headers = {"Authorization": f"Bearer {tok['access_token']}"}
            dev = {"Authorization": f"Bearer {device_key}"}
        t0 = datetime(2025, 1, 1, tzinfo=UTC)

        def body(i: int) -> dict:
            return {"code": HEART_RATE, "value": 70, "unit": "/min",
                    "time": (t0 + timedelta(seconds=i + (0 if secure else 10**6))).isoformat()}

        out = {
            "timeline read": asyncio.run(_load(base, "GET",
                                               f"/patients/bench/timeline?code={HEART_RATE}",
                                               headers, args.requests, args.clients)),
            "observation write": asyncio.run(_load(base, "POST", "/patients/bench/observations",
                                                   dev, args.requests, args.clients, body)),
        }
        out["timeline read"]["p99_single"] = asyncio.run(_sequential(
            base, f"/patients/bench/timeline?code={HEART_RATE}", headers, 100))
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    """Run both modes and print the figures and the cost of security."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=1500, help="Requests per endpoint.")
    ap.add_argument("--clients", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medtwin-bench-") as tmp:
        on = _run_mode(True, args, Path(tmp))
        off = _run_mode(False, args, Path(tmp))
    print(f"medtwin API benchmark: {args.clients} concurrent clients, loopback, SQLite, "
          f"timeline of {N_OBS} observations, cpu count {os.cpu_count()}")
    print(f"{'endpoint':<18} {'security':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'n':>6}")
    for name in on:
        for label, res in (("on", on[name]), ("off", off[name])):
            print(f"{name:<18} {label:<8} {res['rps']:8.1f} {res['p50']:8.1f} {res['p99']:8.1f} "
                  f"{res['errors']:6d} {res['n']:6d}")
    for name in on:
        ratio = on[name]["rps"] / off[name]["rps"]
        print(f"{name}: throughput with security = {ratio:.2f} x without "
              f"(cost {100 * (1 - ratio):.0f}%; goal <= 25%)")
    print(f"timeline read, one client at a time: p99 {on['timeline read']['p99_single']:.1f} ms "
          f"with security, {off['timeline read']['p99_single']:.1f} ms without (goal < 50 ms)")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
    else:
        main()
