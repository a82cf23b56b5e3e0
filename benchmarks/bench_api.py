"""Throughput and latency of the service under 50 concurrent clients on loopback, with 1 and
2 worker processes, security (authentication + per-patient policy + audit chain) on and off.

Run: ``.venv/bin/python benchmarks/bench_api.py [--db postgres|sqlite]
[--pg-url postgresql://postgres@127.0.0.1:5432/test] [--workers 1,2] [--clients 50]
[--seconds 10] [--rounds 1] [--logs json|plain] [--load wrk|httpx]``.

Each configuration (workers x security) gets a store of its own: on PostgreSQL a schema made
and dropped here (the service gets it in the URL: ``?options=-csearch_path%3D<schema>``), on
SQLite a temp file (one worker only). Each holds one patient with 1,000 heart rates, a
clinician in its care team and a device key. Security on is the real ``medtwin serve
--workers N --no-dashboard``; security off (the benchmark-only settings flag, which
``medtwin serve`` never reads from the environment and production refuses) is the same
uvicorn launch of the same app factory made here with ``security_enabled=False``.

Measured per configuration, under ``--clients`` concurrent keep-alive connections for
``--seconds``: requests/s, p50/p99 latency and errors of a timeline read (``GET
/patients/{id}/timeline?code=HR``, 1,000 rows) and of an observation write (``POST
/patients/{id}/observations``, by the device key), the timeline p99 with one client, and the
CPU (in cores) of the service, of PostgreSQL, of the load generator and of anything else
on the machine while it ran (a shared machine understates the service: said). Goals:
2-worker / 1-worker throughput >= 1.6x; timeline p99 under 50 clients < 500 ms; security
costs <= 25% of throughput. The load comes from ``wrk`` (C, one thread) when installed, else
from an asyncio httpx client in this process (which then competes for the same cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil

from medtwin.core.codes import HEART_RATE

PASSWORD = "benchmark password"
N_OBS = 1000
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TIMELINE = f"/patients/bench/timeline?code={HEART_RATE}"
WRITE = "/patients/bench/observations"
WRITE_T0 = datetime(2025, 1, 1, tzinfo=UTC)  # writes are dated from here, one second apart

# wrk: writes with distinct times; a one-line summary for this script to read
WRK_SUMMARY = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""
WRK_WRITE = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local t = os.date("!%%Y-%%m-%%dT%%H:%%M:%%S+00:00", %d + n)
  return wrk.format(nil, nil, nil, string.format(
    '{"code": "%s", "value": 70, "unit": "/min", "time": "%%s"}', t))
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the store -------------------------------------------------------------------------------
def _pg_schema_url(pg_url: str, schema: str) -> str:
    """Make ``schema``; the URL whose connections use it (as tests/api/service_procs.py)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    sep = "&" if "?" in pg_url else "?"
    return f"{pg_url}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(pg_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _prepare(db: str, keyfile: Path) -> str:
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


# --- the service -----------------------------------------------------------------------------
def security_off_app():  # noqa: ANN201 - uvicorn's factory (one call per worker)
    """``medtwin.service:create_app`` with security off (settings from ``MEDTWIN_*``)."""
    from medtwin.api.settings import Settings
    from medtwin.service import build_app

    return build_app(Settings.from_env(security_enabled=False), dashboard=False)


def _serve_off(workers: int, port: int, json_logs: bool) -> None:
    """The security-off server: what ``medtwin serve`` does, with :func:`security_off_app`."""
    import uvicorn

    from medtwin.api.request_log import json_logging

    os.environ["MEDTWIN_DASHBOARD"] = "0"
    metrics_dir = None
    if workers > 1:
        metrics_dir = tempfile.mkdtemp(prefix="medtwin-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run("bench_api:security_off_app", factory=True, host="127.0.0.1", port=port,
                    workers=workers, server_header=False, access_log=False,
                    log_config=json_logging() if json_logs else uvicorn.config.LOGGING_CONFIG)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class Server:
    """One service (``medtwin serve`` or the security-off launch) in its own session."""

    def __init__(self, db: str, keyfile: Path, workers: int, secure: bool, json_logs: bool,
                 log: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log = log
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MEDTWIN_", "PROMETHEUS"))}
        env.update({"MEDTWIN_DB": db, "MEDTWIN_KEY_FILE": str(keyfile),
                    "MEDTWIN_SECRET": secrets.token_urlsafe(48),
                    "MEDTWIN_ARGON2_MEMORY_KIB": "1024", "MEDTWIN_ARGON2_TIME_COST": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                env.get("PYTHONPATH")]))})
        logs = "--json-logs" if json_logs else "--plain-logs"
        if secure:
            medtwin = shutil.which("medtwin", path=str(Path(sys.executable).parent)) or "medtwin"
            cmd = [medtwin, "serve", "--workers", str(workers), "--db", db,
                   "--port", str(self.port), "--no-dashboard", logs]
        else:
            cmd = [sys.executable, __file__, "--serve-off", str(workers), str(self.port), logs]
        self.cmd = cmd
        self._out = log.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every worker has said 'Application startup complete'."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log.read_text()[-3000:]}")
            if self.log.read_text().count("Application startup complete") >= self.workers:
                if httpx.get(f"{self.base}/health/live", timeout=5).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"service not up in {timeout} s: {self.log.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: workers included
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


# --- CPU accounting --------------------------------------------------------------------------
def _cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings (processes started in between count from zero)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def _postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


class CpuMeter:
    """CPU seconds of the service, PostgreSQL, the load generator and the whole machine."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.s0, self.p0 = _cpu_of(self.server.pids()), _cpu_of(_postgres_pids())
        c = psutil.cpu_times()
        self.busy0 = sum(c) - c.idle - getattr(c, "iowait", 0.0)
        self.me0 = _own_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        c = psutil.cpu_times()
        busy = sum(c) - c.idle - getattr(c, "iowait", 0.0)
        self.cores = {"server": _used(self.s0, _cpu_of(self.server.pids())) / wall,
                      "pg": _used(self.p0, _cpu_of(_postgres_pids())) / wall,
                      "load": (_own_cpu() - self.me0) / wall,
                      "machine": (busy - self.busy0) / wall}


def _own_cpu() -> float:
    """CPU seconds of this process and its finished children (wrk)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# --- load ------------------------------------------------------------------------------------
def _wrk(base: str, path: str, headers: dict[str, str], clients: int, seconds: float,
         write: bool, tmp: Path) -> dict[str, float]:
    script = tmp / f"wrk-{uuid.uuid4().hex[:8]}.lua"
    body = WRK_WRITE % (int(WRITE_T0.timestamp()), HEART_RATE) if write else ""
    script.write_text(body + WRK_SUMMARY)
    cmd = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
           "-s", str(script)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    done = subprocess.run([*cmd, base + path], capture_output=True, text=True)
    m = re.search(r"^BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", done.stdout, re.M)
    if m is None:
        raise RuntimeError(f"wrk failed: {done.stdout} {done.stderr}")
    n, dur_us, p50, p99, status, sock = map(int, m.groups())
    return {"n": n, "rps": n / (dur_us / 1e6), "p50": p50 / 1000, "p99": p99 / 1000,
            "errors": status + sock}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


async def _httpx(base: str, path: str, headers: dict[str, str], clients: int, seconds: float,
                 write: bool) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    seq = iter(range(10**9))
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=30) as client:
        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                body = None
                if write:
                    t = WRITE_T0 + timedelta(seconds=next(seq))
                    body = {"code": HEART_RATE, "value": 70, "unit": "/min",
                            "time": t.isoformat()}
                t0 = time.perf_counter()
                r = await client.request("POST" if write else "GET", path, json=body)
                lat.append(time.perf_counter() - t0)
                errors += r.status_code >= 300

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"n": len(lat), "rps": len(lat) / wall, "p50": _pct(lat, 0.5),
            "p99": _pct(lat, 0.99), "errors": errors}


def _load(args: argparse.Namespace, server: Server, path: str, headers: dict[str, str],
          clients: int, seconds: float, write: bool, tmp: Path) -> dict[str, float]:
    with CpuMeter(server) as cpu:
        if args.load == "wrk":
            res = _wrk(server.base, path, headers, clients, seconds, write, tmp)
        else:
            res = asyncio.run(_httpx(server.base, path, headers, clients, seconds, write))
    return {**res, **cpu.cores}


def _other(r: dict[str, float]) -> float:
    """Cores used by processes other than the service, PostgreSQL and the load."""
    return max(0.0, r["machine"] - r["server"] - r["pg"] - r["load"])


# --- one configuration -----------------------------------------------------------------------
def _run(workers: int, secure: bool, args: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    tag = f"w{workers}-{'on' if secure else 'off'}"
    keyfile = tmp / f"keys-{tag}.json"
    schema = None
    if args.db == "postgres":
        schema = f"mt_bench_{uuid.uuid4().hex[:10]}"
        db = _pg_schema_url(args.pg_url, schema)
    else:
        db = str(tmp / f"{tag}.sqlite")
    server = None
    try:
        device_key = _prepare(db, keyfile)
        server = Server(db, keyfile, workers, secure, args.logs == "json", tmp / f"{tag}.log")
        server.wait_ready()
        headers: dict[str, str] = {}
        dev: dict[str, str] = {}
        if secure:
            tok = httpx.post(f"{server.base}/auth/token", timeout=30, data={
                "username": "bench_clin", "password": PASSWORD}).json()
            headers = {"Authorization": f"Bearer {tok['access_token']}"}
            dev = {"Authorization": f"Bearer {device_key}"}
        # warm-up (every worker: imports, caches, pools), not measured
        _load(args, server, TIMELINE, headers, args.clients, 3, False, tmp)
        out = {"timeline read": _load(args, server, TIMELINE, headers, args.clients,
                                      args.seconds, False, tmp),
               "observation write": _load(args, server, WRITE, dev, args.clients,
                                          args.seconds, True, tmp)}
        out["timeline read"]["p99_single"] = _load(args, server, TIMELINE, headers, 1,
                                                   min(args.seconds, 5), False, tmp)["p99"]
        out["cmd"] = " ".join(server.cmd)  # type: ignore[assignment]
        return out
    finally:
        if server is not None:
            server.stop()
        if schema is not None:
            _drop_schema(args.pg_url, schema)


def _median_round(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Per endpoint, the round of median throughput."""
    out: dict[str, dict] = {"cmd": runs[0]["cmd"]}
    for name in ("timeline read", "observation write"):
        out[name] = sorted((r[name] for r in runs), key=lambda x: x["rps"])[len(runs) // 2]
    return out


def main() -> None:
    """Run every configuration and print the figures and the goals."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--pg-url", default=PG_URL, help="A PostgreSQL database (a schema of its "
                    "own is made and dropped per configuration).")
    ap.add_argument("--workers", default="1,2", help="Worker counts, comma-separated.")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0, help="Load time per endpoint.")
    ap.add_argument("--logs", choices=["json", "plain"], default="json",
                    help="The service's logs: json (the default of `medtwin serve`, an access "
                    "line per request) or plain (uvicorn's; no access lines).")
    ap.add_argument("--rounds", type=int, default=1, help="Repeat every configuration, "
                    "interleaved; the round of median throughput is reported.")
    ap.add_argument("--load", choices=["wrk", "httpx"],
                    default="wrk" if shutil.which("wrk") else "httpx")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    if args.db == "sqlite" and any(w > 1 for w in workers):
        print("note: SQLite is a single-process store; only 1 worker is run")
        workers = [1]
    load_avg = os.getloadavg()
    rounds: dict[tuple[int, bool], list[dict[str, dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="medtwin-bench-") as tmp:
        for _ in range(args.rounds):  # interleaved: a burst of other work hits every config
            for w in workers:
                for secure in (True, False):
                    rounds.setdefault((w, secure), []).append(_run(w, secure, args, Path(tmp)))
    results = {key: _median_round(runs) for key, runs in rounds.items()}
    loadgen = ("wrk -t1 (one C thread, keep-alive)" if args.load == "wrk"
               else "httpx asyncio in the benchmark process")
    print(f"medtwin API benchmark: {args.clients} concurrent clients for {args.seconds:g} s "
          f"per endpoint, loopback, {args.db}, timeline of {N_OBS} observations, "
          f"{args.logs} logs, cpu count {os.cpu_count()}, load average before "
          f"{load_avg[0]:.2f} after {os.getloadavg()[0]:.2f}")
    print(f"load generated by: {loadgen}")
    for (w, secure), res in results.items():
        print(f"  w={w} security {'on' if secure else 'off'}: {res['cmd']}")
    print("CPU columns: cores busy during the run: the service's processes, PostgreSQL, the "
          "load generator (+ this script), other processes on the machine")
    print(f"{'endpoint':<18} {'workers':>7} {'security':>8} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6} {'n':>7} {'svc':>5} {'pg':>5} {'load':>5} "
          f"{'other':>5}")
    for name in ("timeline read", "observation write"):
        for (w, secure), res in results.items():
            r = res[name]
            print(f"{name:<18} {w:>7} {'on' if secure else 'off':>8} {r['rps']:8.1f} "
                  f"{r['p50']:8.1f} {r['p99']:8.1f} {r['errors']:6d} {r['n']:7d} "
                  f"{r['server']:5.2f} {r['pg']:5.2f} {r['load']:5.2f} {_other(r):5.2f}")

    busy = max(_other(res[name]) for res in results.values()
               for name in ("timeline read", "observation write"))
    if busy > 0.25:
        print(f"warning: other processes used up to {busy:.2f} of the {os.cpu_count()} cores "
              "during the runs: the figures (the worker ratio most) understate the service")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print("goals:")
    if 1 in workers and 2 in workers:
        for name in ("timeline read", "observation write"):
            for secure in (True, False):
                ratio = results[2, secure][name]["rps"] / results[1, secure][name]["rps"]
                print(f"  {name}, security {'on' if secure else 'off'}: 2 workers = "
                      f"{ratio:.2f} x 1 worker (goal >= 1.6x: {verdict(ratio >= 1.6)})")
    for (w, secure), res in results.items():
        p99 = res["timeline read"]["p99"]
        print(f"  timeline read p99, {args.clients} clients, {w} worker(s), security "
              f"{'on' if secure else 'off'}: {p99:.1f} ms (goal < 500 ms: "
              f"{verdict(p99 < 500)}); one client: {res['timeline read']['p99_single']:.1f} ms "
              f"(goal < 50 ms: {verdict(res['timeline read']['p99_single'] < 50)})")
    for w in workers:
        for name in ("timeline read", "observation write"):
            ratio = results[w, True][name]["rps"] / results[w, False][name]["rps"]
            print(f"  {name}, {w} worker(s): throughput with security = {ratio:.2f} x without "
                  f"(cost {100 * (1 - ratio):.0f}%; goal <= 25%: {verdict(ratio >= 0.75)})")
    print(json.dumps({f"w{w}-{'on' if s else 'off'}": {k: v for k, v in r.items() if k != "cmd"}
                      for (w, s), r in results.items()}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-off":
        _serve_off(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "--json-logs")
    else:
        main()
