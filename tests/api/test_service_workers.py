"""Two real service workers (uvicorn processes of the edge factory) over one PostgreSQL
schema give the same answers: login limits, sessions, health and metrics are shared."""

from __future__ import annotations

import re

import httpx
import pytest
from tests.api.service_procs import (
    Service,
    bearer,
    free_port,
    login,
    pg_schema_url,
    seed,
    service_env,
)
from typer.testing import CliRunner

from medtwin.security.crypto import create_key_file

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def workers(tmp_path_factory, pg_url):
    import uuid

    import psycopg

    tmp = tmp_path_factory.mktemp("workers")
    schema = f"mt_test_{uuid.uuid4().hex[:12]}"
    db = pg_schema_url(pg_url, schema)
    key_file = tmp / "keys.json"
    create_key_file(key_file)
    seed(db, key_file)
    metrics = tmp / "metrics"
    metrics.mkdir()
    env = service_env(db, key_file, MEDTWIN_LOGIN_ATTEMPTS="3",
                      MEDTWIN_TRUSTED_PROXIES="127.0.0.1",  # the tests pick client addresses
                      PROMETHEUS_MULTIPROC_DIR=str(metrics))
    a = Service.factory(env, tmp / "a.log")
    b = Service.factory(env, tmp / "b.log")
    try:
        yield a.wait_ready(), b.wait_ready()
    finally:
        a.stop()
        b.stop()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_login_limits_are_shared_by_the_workers(workers):
    a, b = workers
    # password spraying from one address over both workers: the address's window (3 x 4
    # attempts a minute) is counted once for both, not once per worker
    sprayer = {"X-Forwarded-For": "203.0.113.7"}
    codes = [login((a, b)[i % 2].base, f"nobody{i}", "a guess", sprayer).status_code
             for i in range(12)]
    assert codes == [401] * 12, codes
    for w in (a, b):
        held = login(w.base, "nobody_else", "a guess", sprayer)
        assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1
    assert login(a.base).status_code == 200  # another address is not held back


def test_a_session_started_on_one_worker_is_refreshed_and_ended_on_the_other(workers):
    a, b = workers
    first = login(a.base)
    assert first.status_code == 200, first.text
    tok = first.json()
    assert httpx.get(f"{b.base}/patients/p1", headers=bearer(tok["access_token"])
                     ).status_code == 200  # a's token opens on b
    refreshed = httpx.post(f"{b.base}/auth/refresh",
                           json={"refresh_token": tok["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    # the used refresh token presented again on a: reuse, the whole session ends
    reuse = httpx.post(f"{a.base}/auth/refresh", json={"refresh_token": tok["refresh_token"]})
    assert reuse.status_code == 401
    for w in (a, b):
        assert httpx.get(f"{w.base}/patients/p1", headers=bearer(new["access_token"])
                         ).status_code == 401

    second = login(b.base).json()
    assert httpx.post(f"{a.base}/auth/logout", headers=bearer(second["access_token"])
                      ).status_code in (200, 204)
    assert httpx.get(f"{b.base}/patients/p1", headers=bearer(second["access_token"])
                     ).status_code == 401  # logged out on a: refused on b at once


def test_health_and_metrics_agree_across_workers(workers):
    a, b = workers
    for w in workers:
        assert httpx.get(f"{w.base}/health/live").json()["status"] == "ok"
        ready = httpx.get(f"{w.base}/health/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["store"] == {"status": "ok"}
    tok = login(a.base).json()["access_token"]
    for w in workers:
        r = httpx.get(f"{w.base}/patients/p1/timeline", headers={
            **bearer(tok), "X-Request-ID": "req-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    texts = [httpx.get(f"{w.base}/metrics").text for w in workers]

    def sample(text: str, pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+]+)", text)
        assert m, pattern
        return float(m.group(1))

    timeline = (r'medtwin_http_request_duration_seconds_count\{method="GET",'
                r'route="/patients/\{patient_id\}/timeline",status="2xx"\}')
    # the histograms of both workers are added up: each worker's scrape shows both reads
    assert sample(texts[0], timeline) == sample(texts[1], timeline) == 2
    observations = r'medtwin_events_stored_total\{kind="observation"\}'
    assert sample(texts[0], observations) == sample(texts[1], observations) == 5
    for text in texts:
        assert "p1" not in text  # route templates, never raw paths with ids
    for w in workers:  # structured logs: the access line names the template and the id
        lines = [ln for ln in w.log.read_text().splitlines() if '"req-42"' in ln]
        assert lines and all("/patients/p1" not in ln for ln in lines)
        assert any('"route": "/patients/{patient_id}/timeline"' in ln for ln in lines)


def test_readiness_names_what_is_down(tmp_path, pg_url, pg_schema):
    key_file = tmp_path / "keys.json"
    create_key_file(key_file)
    db = pg_schema_url(pg_url, pg_schema)
    closed = free_port()
    svc = Service.factory(service_env(db, key_file, MEDTWIN_MQTT_URL=f"mqtt://127.0.0.1:{closed}"),
                          tmp_path / "s.log")
    try:
        svc.wait_ready()
        r = httpx.get(f"{svc.base}/health/ready")
        assert r.status_code == 503
        assert r.json()["down"] == ["broker"] and r.json()["checks"]["store"]["status"] == "ok"
        assert httpx.get(f"{svc.base}/health/live").status_code == 200
    finally:
        svc.stop()


def test_serve_runs_several_workers_through_the_factory(tmp_path, pg_url, pg_schema):
    import sys

    key_file = tmp_path / "keys.json"
    create_key_file(key_file)
    db = pg_schema_url(pg_url, pg_schema)
    seed(db, key_file)
    port = free_port()
    svc = Service([sys.executable, "-m", "medtwin.cli", "serve", "--workers", "2", "--port",
                   str(port), "--root-path", "/medtwin", "--no-dashboard"],
                  service_env(db, key_file), port, tmp_path / "serve.log")
    try:
        svc.wait_ready()
        pids = set()
        tok = login(svc.base).json()["access_token"]
        for _ in range(40):  # new connections land on both workers; all answer alike
            r = httpx.get(f"{svc.base}/patients/p1", headers=bearer(tok))
            assert r.status_code == 200
        assert httpx.get(f"{svc.base}/openapi.json").json()["servers"][0]["url"] == "/medtwin"
        log = svc.log.read_text()
        pids = set(re.findall(r"Started server process \[(\d+)\]", log))
        assert len(pids) == 2, log[-2000:]
    finally:
        svc.stop()


def test_several_workers_on_sqlite_are_refused(tmp_path, monkeypatch):
    from medtwin.cli import app

    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(tmp_path / "keys.json"))
    create_key_file(tmp_path / "keys.json")
    r = CliRunner().invoke(app, ["serve", "--workers", "2", "--db",
                                 str(tmp_path / "s.sqlite")])
    assert r.exit_code == 2
    assert "--workers 2 needs a PostgreSQL store" in r.output
