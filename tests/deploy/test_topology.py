"""compose.yaml's topology, started natively: a PostgreSQL schema, Mosquitto with TLS (run on
deploy/mosquitto.conf itself, accounts and ACL from `medtwin key broker-config` and `medtwin
key add`), a Dask scheduler and two workers, two `medtwin serve` replicas, and the ingester
(`medtwin live` with its client certificate); the test plays the proxy, sending requests to
the replicas in turn. A smoke scenario: device readings in over TLS, an alert out, a job on
Dask, FHIR reads, and a device held to its own patient's topics by the broker."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from tests.api.service_procs import (
    SECRET,
    Service,
    bearer,
    free_port,
    login,
    pg_schema_url,
    seed,
    service_env,
)
from tests.live.pki import Pki
from typer.testing import CliRunner

from medtwin.core import codes
from medtwin.core.records import Patient
from medtwin.live.acl import device_username
from medtwin.live.connection import broker_spec
from medtwin.live.publish import DevicePublisher
from medtwin.live.streams import Reading
from medtwin.security.crypto import create_key_file, load_key_file
from medtwin.store.event_store import EventStore

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PREFIX, INGESTER, DEVICE = "medtwin", "medtwin-ingester", "monitor-1"
PROXY = "127.0.0.1"  # MEDTWIN_TRUSTED_PROXIES: the test stands in for nginx


def _need_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        if os.environ.get("CI"):
            pytest.fail("the mosquitto broker is required in CI (.ci/run installs it)")
        pytest.skip("the mosquitto broker is not installed (apt-get install mosquitto)")


def _wait_port(port: int, proc: Service, timeout: float = 60.0) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"exited: {proc.log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing on port {port} after {timeout} s: {proc.log.read_text()[-3000:]}")


def _wait_log(proc: Service, pattern: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = proc.log.read_text(errors="replace")
        if re.search(pattern, text):
            return
        if proc.proc.poll() is not None:
            raise RuntimeError(f"exited before {pattern!r}: {text[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"no {pattern!r} after {timeout} s: {proc.log.read_text()[-3000:]}")


def broker_conf(tls: Path, auth: Path, data: Path, device_port: int, cert_port: int) -> str:
    """deploy/mosquitto.conf with this machine's folders and ports (bound to 127.0.0.1)."""
    text = (DEPLOY / "mosquitto.conf").read_text()
    for old, new in (("/mosquitto/tls/", tls), ("/mosquitto/auth/", auth),
                     ("/mosquitto/data/", data)):
        assert old in text, old
        text = text.replace(old, f"{new}/")
    for old, new in ((8883, device_port), (8884, cert_port)):
        assert f"\nlistener {old}\n" in text, old
        text = text.replace(f"\nlistener {old}\n", f"\nlistener {new} 127.0.0.1\n")
    assert not [ln for ln in text.splitlines() if "/mosquitto/" in ln and not ln.startswith("#")]
    if os.geteuid() == 0:  # as root Mosquitto would drop to a user that cannot read tmp files
        text += "user root\n"
    return text


@dataclass
class Proxy:
    """Round-robin over the service replicas, as nginx does; counts who answered what."""

    bases: list[str]
    token: str = ""
    served: dict[str, int] = field(default_factory=dict)
    _next: int = 0

    def request(self, method: str, path: str, **kw: Any) -> tuple[str, httpx.Response]:
        base = self.bases[self._next % len(self.bases)]
        self._next += 1
        headers = {"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https",
                   **(bearer(self.token) if self.token else {}), **kw.pop("headers", {})}
        r = httpx.request(method, f"{base}{path}", headers=headers, timeout=30, **kw)
        self.served[base] = self.served.get(base, 0) + 1
        return base, r

    def each(self, path: str) -> list[httpx.Response]:
        """The same read from every replica (one request each, in turn)."""
        out = []
        for _ in self.bases:
            _, r = self.request("GET", path)
            assert r.status_code == 200, (path, r.status_code, r.text)
            out.append(r)
        return out


class Watcher:
    """An MQTT client with the ingester's certificate: sees every reading and alert that the
    broker lets through (the ACL lets that account read ``<prefix>/#``)."""

    def __init__(self, url: str, ca: Path, cert: Path, key: Path) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        spec = broker_spec(url, ca_file=ca, cert_file=cert, key_file=key)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"watch-{uuid.uuid4().hex[:8]}")
        spec.apply(self.client)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.connect(spec.host, spec.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the watcher could not subscribe"

    def topics(self, pattern: str) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in list(self.messages) if re.fullmatch(pattern, t)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Topology:
    db: str
    key_file: Path
    pki: Pki
    device_url: str
    cert_url: str
    scheduler: str
    api: list[Service]
    ingester: Service
    device_key: str
    watcher: Watcher

    def proxy(self) -> Proxy:
        p = Proxy([s.base for s in self.api])
        r = login(p.bases[0], headers={"X-Forwarded-For": "198.51.100.20"})
        assert r.status_code == 200, r.text
        p.token = r.json()["access_token"]
        return p


def _cli(args: list[str], env: dict[str, str]) -> str:
    from medtwin.cli import app

    out = CliRunner().invoke(app, args, env=env)
    assert out.exit_code == 0, out.output
    return out.output


@pytest.fixture(scope="module")
def topology(tmp_path_factory, pg_url):
    import psycopg

    _need_mosquitto()
    tmp = tmp_path_factory.mktemp("topology")
    schema = f"mt_test_{uuid.uuid4().hex[:12]}"
    procs: list[Service] = []
    watcher = None
    try:
        # PostgreSQL (a schema of its own) and the key ring; then compose's broker-auth step:
        # the schema, and the broker's password file and ACL before the broker starts
        db = pg_schema_url(pg_url, schema)
        key_file = tmp / "medtwin.key"
        create_key_file(key_file)
        auth = tmp / "auth"
        env = service_env(db, key_file, MEDTWIN_MODE="production",
                          MEDTWIN_AUDIT_ANCHOR_FILE=str(tmp / "audit-anchors.jsonl"),
                          MEDTWIN_MQTT_BROKER_DIR=str(auth))
        _cli(["db", "upgrade"], env)
        _cli(["key", "broker-config"], env)
        assert f"user {INGESTER}\ntopic read {PREFIX}/#\n" in (auth / "acl").read_text()
        # patients p1 and p2, clinician dr_a in p1's care team
        seed(db, key_file)
        with EventStore.open(db, keyring=load_key_file(key_file)) as store:
            store.append([Patient(id="p2", source_id="Patient/p2")])

        # Mosquitto on deploy/mosquitto.conf: TLS for devices, client certificates for us
        pki = Pki(tmp / "tls")
        pki.issue("mosquitto", "127.0.0.1", server=True)
        pki.issue("ingester", INGESTER)  # the CN is the ingester's broker username
        device_port, cert_port = free_port(), free_port()
        (tmp / "data").mkdir()
        conf = tmp / "mosquitto.conf"
        conf.write_text(broker_conf(pki.folder, auth, tmp / "data", device_port, cert_port))
        broker = Service(["mosquitto", "-c", str(conf)], env, device_port, tmp / "mosquitto.log")
        procs.append(broker)
        _wait_port(device_port, broker)
        _wait_port(cert_port, broker)

        # Dask: a scheduler and two workers (compose's dask-scheduler and dask-worker x2)
        sport = free_port()
        scheduler = f"tcp://127.0.0.1:{sport}"
        sched = Service(_dask_args("scheduler", "--host", "127.0.0.1", "--port", str(sport),
                                   "--no-dashboard"), env, sport, tmp / "scheduler.log")
        procs.append(sched)
        for i in range(2):
            procs.append(Service(_dask_args("worker", scheduler, "--nthreads", "1",
                                            "--no-dashboard", "--no-nanny", "--name", f"w{i}"),
                                 env, 0, tmp / f"worker{i}.log"))

        # two service replicas (compose's api-1, api-2) on the same store, key and secret
        api_env = {**env, "MEDTWIN_SCHEDULER": scheduler, "MEDTWIN_TRUSTED_PROXIES": PROXY,
                   "MEDTWIN_MQTT_URL": f"mqtts://127.0.0.1:{cert_port}"}
        assert api_env["MEDTWIN_SECRET"] == SECRET
        for name in ("api-1", "api-2"):
            port = free_port()
            procs.append(Service([sys.executable, "-m", "medtwin.cli", "serve", "--host",
                                  "127.0.0.1", "--port", str(port), "--workers", "1",
                                  "--proxy-headers", "--no-dashboard"],
                                 api_env, port, tmp / f"{name}.log"))
        api = procs[-2:]

        # a device key for p1's monitor, written into the broker files; the broker reloads
        out = _cli(["key", "add", "--device", DEVICE, "--patient", "p1"], env)
        device_key = re.search(r"mtk_[0-9a-f]+_[A-Za-z0-9_-]+", out).group(0)
        assert f"user {device_username(device_key)}" in (auth / "acl").read_text()
        broker.proc.send_signal(signal.SIGHUP)

        # the ingester (compose's ingester): its broker identity is its client certificate
        ing_env = {**env, "MEDTWIN_MQTT_URL": f"mqtts://127.0.0.1:{cert_port}",
                   "MEDTWIN_MQTT_CA_FILE": str(pki.ca),
                   "MEDTWIN_MQTT_CERT_FILE": str(pki.folder / "ingester.crt"),
                   "MEDTWIN_MQTT_KEY_FILE": str(pki.folder / "ingester.key")}
        ingester = Service([sys.executable, "-m", "medtwin.cli", "live", "--require-device-keys"],
                           ing_env, 0, tmp / "ingester.log")
        procs.append(ingester)

        for s in api:
            s.wait_ready()
        _wait_log(ingester, r"ingesting .* from mqtts://127\.0\.0\.1")
        watcher = Watcher(f"mqtts://127.0.0.1:{cert_port}", pki.ca,
                          pki.folder / "ingester.crt", pki.folder / "ingester.key")
        yield Topology(db, key_file, pki, f"mqtts://127.0.0.1:{device_port}",
                       f"mqtts://127.0.0.1:{cert_port}", scheduler, api, ingester, device_key,
                       watcher)
    finally:
        if watcher is not None:
            watcher.close()
        for p in procs:  # all at once, then wait for each
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGTERM)
        for p in reversed(procs):
            p.stop()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _dask_args(*args: str) -> list[str]:
    """``dask scheduler|worker ...``, or the module when there is no ``dask`` script."""
    script = shutil.which("dask") or (Path(sys.executable).parent / "dask")
    if Path(script).exists():
        return [str(script), *args]
    return [sys.executable, "-m", f"distributed.cli.dask_{args[0]}", *args[1:]]


def test_replicas_are_live_ready_and_measured(topology):
    proxy = topology.proxy()
    for r in proxy.each("/health/ready"):
        checks = r.json()["checks"]  # the broker and the scheduler are configured, and answer
        assert {"store", "broker", "dask"} <= set(checks), checks
        assert {v["status"] for v in checks.values()} == {"ok"}, checks
    assert [r.json()["status"] for r in proxy.each("/health/live")] == ["ok", "ok"]
    for r in proxy.each("/metrics"):
        assert "medtwin_http_request_duration_seconds" in r.text
    assert set(proxy.served) == {s.base for s in topology.api}


def _device(topology: Topology, **kw: Any) -> DevicePublisher:
    key = topology.device_key
    spec = broker_spec(topology.device_url, username=device_username(key), password=key,
                       ca_file=topology.pki.ca)
    return DevicePublisher(broker=spec, prefix=PREFIX, site="ward1", device=DEVICE,
                           client_id=f"{DEVICE}-{uuid.uuid4().hex[:6]}", **kw)


@pytest.fixture(scope="module")
def sent(topology):
    """p1's monitor publishes a normal heart rate and a low SpO2 over TLS with its key, and
    one reading on p2's topic, which the broker's ACL refuses."""
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    readings = [Reading("p1", "hr", t, codes.HEART_RATE, 88.0, "/min", "hr-1"),
                Reading("p1", "spo2", t, codes.SPO2_PULSE_OXIMETRY, 85.0, "%", "spo2-1")]
    other = [Reading("p2", "spo2", t, codes.SPO2_PULSE_OXIMETRY, 80.0, "%", "p2-spo2-1")]
    with _device(topology) as dev:
        dev.publish(readings)
        dev.publish(other)
        dev.flush(30)
    return readings


def test_readings_in_over_tls_an_alert_out_and_the_acl_holds(topology, sent):
    # the alert comes out on <prefix>/alerts/<site>/<patient> (as the ingester publishes it)
    end = time.monotonic() + 30
    while not topology.watcher.topics(f"{PREFIX}/alerts/ward1/p1") and time.monotonic() < end:
        time.sleep(0.1)
    alerts = [json.loads(p) for _, p in topology.watcher.topics(f"{PREFIX}/alerts/ward1/p1")]
    assert any(a.get("rule") == "spo2-low" for a in alerts), (
        alerts, topology.ingester.log.read_text()[-3000:])
    # ... and both replicas list it, the same
    proxy = topology.proxy()
    listed = [r.json() for r in proxy.each("/alerts?patient=p1")]
    assert listed[0] == listed[1]
    assert "spo2-low" in {a["rule"] for a in listed[0]}
    # the readings are stored once, and read the same from both replicas
    spo2 = f"/patients/p1/timeline?code={codes.SPO2_PULSE_OXIMETRY}"
    lines = [r.json() for r in proxy.each(spo2)]
    assert lines[0] == lines[1]
    assert 85.0 in [e.get("value") for e in lines[0]["items"]], lines[0]

    # the other patient's reading never went through the broker: not seen, not stored, and
    # not dead-lettered by the ingester (it never reached it)
    seen = [t for t, _ in topology.watcher.topics(f"{PREFIX}/ward1/.*")]
    assert f"{PREFIX}/ward1/p1/{DEVICE}/spo2" in seen
    assert not [x for x in seen if "/p2/" in x], seen
    with EventStore.open(topology.db, keyring=load_key_file(topology.key_file)) as store:
        assert store.timeline("p2") == []
        from sqlalchemy import func, select

        from medtwin.store import schema as t_

        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(t_.dead_letters)).scalar() == 0
    assert set(proxy.served) == {s.base for s in topology.api}


def test_a_job_runs_on_dask_and_either_replica_answers_for_it(topology):
    from distributed import Client

    proxy = topology.proxy()
    first, r = proxy.request("POST", "/jobs/ops", json={"model": "mm1", "reps": 3, "seed": 1})
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    end, status = time.monotonic() + 60, None
    while time.monotonic() < end:
        _, r = proxy.request("GET", f"/jobs/{job}")
        status = r.json()["status"]
        if status in {"done", "failed", "cancelled"}:
            break
        time.sleep(0.3)
    assert status == "done", r.text
    results = [r.json() for r in proxy.each(f"/jobs/{job}/result")]
    assert results[0] == results[1]
    assert [row["rep"] for row in results[0]["result"]["per_rep"]] == [0, 1, 2]
    # it ran on the cluster's workers (the replicas start no cluster of their own)
    with Client(topology.scheduler, timeout=20) as c:
        executed = c.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and sum(executed.values()) >= 1, executed
    assert set(proxy.served) == {s.base for s in topology.api}


def test_fhir_reads_are_the_same_from_both_replicas(topology, sent):
    proxy = topology.proxy()
    patients = [r.json() for r in proxy.each("/fhir/Patient/p1")]
    assert patients[0] == patients[1]  # meta.lastUpdated included
    assert patients[0]["resourceType"] == "Patient" and patients[0]["id"] == "p1"
    assert patients[0]["name"][0]["family"] == "Lovelace"  # unsealed with the shared key
    # the readings that came in over MQTT are FHIR Observations (the seeded records are not)
    end = time.monotonic() + 30
    while len(proxy.each("/fhir/Observation?patient=p1")[0].json().get("entry", [])) < len(
            sent) and time.monotonic() < end:
        time.sleep(0.2)
    bundles = [r.json() for r in proxy.each("/fhir/Observation?patient=p1")]
    entries = [sorted((e["resource"]["id"], json.dumps(e["resource"], sort_keys=True))
                      for e in b.get("entry", [])) for b in bundles]
    assert entries[0] == entries[1] and entries[0]
    values = {e["resource"].get("valueQuantity", {}).get("value") for e in bundles[0]["entry"]}
    assert {r.value for r in sent} <= values, values
    assert set(proxy.served) == {s.base for s in topology.api}
