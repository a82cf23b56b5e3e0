"""Real service processes for tests: uvicorn running the edge factory
(``medtwin.service:create_app``) or ``medtwin serve``, over a store seeded here."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from medtwin.api.request_log import json_logging
from medtwin.core.records import Observation, Patient
from medtwin.security.crypto import load_key_file
from medtwin.security.directory import Directory
from medtwin.security.passwords import PasswordHasher
from medtwin.store.event_store import EventStore

PASSWORD = "correct horse battery"
SECRET = "test-secret-" + "x" * 40
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_schema_url(pg_url: str, schema: str) -> str:
    """A URL whose connections use ``schema`` (created here), for processes given only a URL."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    sep = "&" if "?" in pg_url else "?"
    return f"{pg_url}{sep}options=-csearch_path%3D{schema}"


def seed(db: str, key_file: Path) -> None:
    """Patient p1 (with an identity and 5 heart rates) and clinician dr_a in its team."""
    with EventStore.open(db, keyring=load_key_file(key_file)) as store:
        store.append([Patient(id="p1", source_id="Patient/p1", gender="female",
                              birth_year=1960,
                              identity={"name": [{"family": "Lovelace", "given": ["Ada"]}]})],
                     [Observation(subject="p1", code="8867-4", time=T0 + timedelta(minutes=i),
                                  value=60.0 + i, unit="/min", source_id=f"Observation/p1-{i}")
                      for i in range(5)])
        d = Directory(store.engine, PasswordHasher(time_cost=1, memory_kib=256))
        clin = d.add_user("dr_a", "clinician", PASSWORD)
        d.add_to_team("ward", user_id=clin.id, patient_id="p1")


def service_env(db: str, key_file: Path, **extra: str) -> dict[str, str]:
    """The environment of a service process (cheap argon2, no dashboard)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDTWIN_", "PROMETHEUS"))}
    env.update({"MEDTWIN_DB": db, "MEDTWIN_KEY_FILE": str(key_file), "MEDTWIN_SECRET": SECRET,
                "MEDTWIN_ARGON2_MEMORY_KIB": "256", "MEDTWIN_ARGON2_TIME_COST": "1",
                "MEDTWIN_DASHBOARD": "0"})
    env.update(extra)
    return env


class Service:
    """One service process (started by :meth:`start`, stopped by :meth:`stop`)."""

    def __init__(self, args: list[str], env: Mapping[str, str], port: int, log: Path) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(args, env=dict(env), stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @classmethod
    def factory(cls, env: Mapping[str, str], log: Path) -> Service:
        """``uvicorn --factory medtwin.service:create_app`` on a free port."""
        port = free_port()
        config = log.with_suffix(".logging.json")
        config.write_text(json.dumps(json_logging()))
        return cls([sys.executable, "-m", "uvicorn", "--factory", "medtwin.service:create_app",
                    "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                    "--log-config", str(config)], env, port, log)

    def wait_ready(self, timeout: float = 120.0) -> Service:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/health/live", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service not up in {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: workers included
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


def login(base: str, username: str = "dr_a", password: str = PASSWORD,
          headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{base}/auth/token", data={"username": username, "password": password},
                      headers=headers, timeout=30)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
