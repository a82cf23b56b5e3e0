"""Secured devices against a real Mosquitto with TLS, a password file and an ACL written by
`medtwin key broker-config`: TLS ingestion, refused passwords, per-device topics, client
certificates, plain clients refused; and the ingester's own device-to-patient check."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medtwin.core.errors import MedtwinError, ValidationError
from medtwin.core.records import Patient
from medtwin.live.acl import (
    check_password,
    device_accounts,
    device_username,
    hash_password,
    read_passwd,
    write_broker_files,
)
from medtwin.live.connection import broker_spec
from medtwin.live.ingest import Ingester
from medtwin.live.publish import DevicePublisher
from medtwin.live.streams import Reading
from medtwin.security.directory import Directory
from medtwin.security.passwords import PasswordHasher

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
INGESTER, INGESTER_PW = "medtwin-ingester", "ingester-password-for-tests-only"


def _readings(patient: str, n: int, tag: str) -> list[Reading]:
    return [Reading(patient, "hr", NOW + timedelta(seconds=i), "8867-4", 70.0 + i, "/min",
                    f"{tag}-{i}") for i in range(n)]


def _world(store, folder: Path, prefix: str) -> dict[str, str]:
    """Two patients, a device key for each, and the broker files for them."""
    store.append([Patient(id=p, source_id=f"Patient/{p}") for p in ("p1", "p2")])
    d = Directory(store.engine, PasswordHasher(time_cost=1, memory_kib=256))
    keys = {"pump-1": d.add_device_key("pump-1", "p1"), "pump-2": d.add_device_key("pump-2", "p2")}
    files = write_broker_files(folder, device_accounts(store.engine), prefix=prefix,
                               ingester=INGESTER, ingester_password=INGESTER_PW,
                               new_keys={device_username(k): k for k in keys.values()})
    assert (files.devices, files.missing, files.ingester_password) == (2, 0, None)
    return keys


def _ingester(store, broker, prefix, pki, **kw) -> Ingester:
    spec = broker_spec(broker.url, username=INGESTER, password=INGESTER_PW, ca_file=pki.ca)
    return Ingester(store, broker=spec, prefix=prefix, client_id=f"ing-{uuid.uuid4().hex[:6]}",
                    **kw)


def _device(broker, pki, key: str, device: str, prefix: str, **kw) -> DevicePublisher:
    spec = broker_spec(broker.url, username=device_username(key), password=key,
                       ca_file=pki.ca, **kw)
    return DevicePublisher(broker=spec, prefix=prefix, device=device, site="ward1",
                           client_id=f"{device}-{uuid.uuid4().hex[:6]}")


def test_password_file_is_mosquittos_format(tmp_path):
    hashed = hash_password("s3cret")
    assert hashed.startswith("$7$101$") and check_password("s3cret", hashed)
    assert not check_password("s3cret!", hashed)
    # a line written by mosquitto_passwd 2.0 (password "secret1") verifies
    ref = ("$7$101$TuiQFjb0X4FkPWhC$rrwGzQPftYiuUsXRfeg9HV8HxSBjg2WQP6eX1fy9+BQu0+mrpXwGqFryyG"
           "CDdQNLKolWiAc9P6n+nf/VXEczVA==")
    assert check_password("secret1", ref) and not check_password("secret2", ref)


def test_tls_ingest_acl_and_refusals(store, pki, secure_broker_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    prefix = f"mt{uuid.uuid4().hex[:8]}"
    keys = _world(store, tmp_path / "auth", prefix)
    broker = secure_broker_factory(tmp_path / "auth")
    ing = _ingester(store, broker, prefix, pki).start()
    try:
        # over TLS, with its key as password, a device publishes its own patient's readings
        with _device(broker, pki, keys["pump-1"], "pump-1", prefix) as dev:
            dev.publish(_readings("p1", 5, "own"))
            # ... and the broker refuses the other patient's topic (and another device's name)
            dev.publish(_readings("p2", 3, "other-patient"))
            dev.device = "pump-2"
            dev.publish(_readings("p2", 2, "other-device"))
        assert ing.wait_idle(quiet=1.0, timeout=30)
    finally:
        ing.stop()
    assert [o.source_id for o in store.timeline("p1", codes=["8867-4"])] == [
        f"pump-1/own-{i}" for i in range(5)]
    assert store.timeline("p2", codes=["8867-4"]) == []
    assert ing.stats.received == 5 and ing.stats.dead_lettered == 0  # never got through

    # a wrong password, or none, is refused at CONNECT
    bad = broker_spec(broker.url, username=device_username(keys["pump-1"]),
                      password=keys["pump-1"] + "x", ca_file=pki.ca)
    with pytest.raises(MedtwinError, match="refused.*(not authori|password)"):
        DevicePublisher(broker=bad, prefix=prefix).open(wait=5)
    with pytest.raises(MedtwinError, match="refused"):
        DevicePublisher(broker=broker_spec(broker.url, ca_file=pki.ca), prefix=prefix).open(wait=5)
    # a plain-text client on the TLS port gets no session
    plain = broker.url.replace("mqtts://", "mqtt://")
    with pytest.raises(MedtwinError, match="no answer to CONNECT|cannot reach"):
        DevicePublisher(broker=broker_spec(plain, username=INGESTER, password=INGESTER_PW),
                        prefix=prefix).open(wait=3)
    # a TLS client that does not trust the broker's CA refuses the server
    with pytest.raises(MedtwinError, match="cannot reach.*(CERTIFICATE_VERIFY_FAILED|certif)"):
        DevicePublisher(broker=broker_spec(broker.url, username=INGESTER,
                                           password=INGESTER_PW), prefix=prefix).open(wait=5)
    # no password or key ever reaches the logs
    assert INGESTER_PW not in caplog.text and "mtk_" not in caplog.text
    assert all(k.split("_")[2] not in caplog.text for k in keys.values())


def test_client_certificate_auth_and_revocation(store, pki, secure_broker_factory, tmp_path):
    prefix = f"mt{uuid.uuid4().hex[:8]}"
    keys = _world(store, tmp_path / "auth", prefix)
    broker = secure_broker_factory(tmp_path / "auth")
    ing = _ingester(store, broker, prefix, pki, group="g1").start()  # the ACL lets $share in
    cert_url = f"mqtts://127.0.0.1:{broker.cert_port}"
    user = device_username(keys["pump-2"])
    crt, key = pki.issue("pump-2", user)  # the certificate's CN is the broker username
    try:
        dev = DevicePublisher(broker=broker_spec(cert_url, ca_file=pki.ca, cert_file=crt,
                                                 key_file=key), prefix=prefix, device="pump-2")
        with dev:
            dev.publish(_readings("p2", 4, "cert"))
            dev.publish(_readings("p1", 2, "cert-other"))  # refused by the ACL
        # without a client certificate the certificate listener refuses the handshake
        with pytest.raises(MedtwinError):
            DevicePublisher(broker=broker_spec(cert_url, ca_file=pki.ca),
                            prefix=prefix).open(wait=3)
        # revoke pump-1's key, rewrite the files, reload: the broker refuses its password
        Directory(store.engine, PasswordHasher(time_cost=1, memory_kib=256)
                  ).revoke_device_key(device_username(keys["pump-1"]).removeprefix("mtk_"))
        files = write_broker_files(tmp_path / "auth", device_accounts(store.engine),
                                   prefix=prefix, ingester=INGESTER,
                                   ingester_password=INGESTER_PW)
        assert (files.devices, files.removed) == (1, 1)
        assert set(read_passwd(tmp_path / "auth" / "passwd")) == {INGESTER, user}
        broker.reload()
        with pytest.raises(MedtwinError, match="refused"):
            _device(broker, pki, keys["pump-1"], "pump-1", prefix).open(wait=5)
        assert ing.wait_idle(quiet=1.0, timeout=30)
    finally:
        ing.stop()
    assert len(store.timeline("p2", codes=["8867-4"])) == 4
    assert store.timeline("p1", codes=["8867-4"]) == []


def test_ingester_dead_letters_a_device_on_another_patients_topic(store, broker, publisher):
    """A misconfigured broker (anonymous, no ACL) lets it through: the ingester refuses."""
    store.append([Patient(id=p, source_id=f"Patient/{p}") for p in ("p1", "p2")])
    d = Directory(store.engine, PasswordHasher(time_cost=1, memory_kib=256))
    d.add_device_key("pump-1", "p1")
    ing = Ingester(store, broker=broker.url, client_id=f"ing-{uuid.uuid4().hex[:6]}").start()
    try:
        for r in _readings("p1", 2, "ok"):
            publisher.send("medtwin/ward1/p1/pump-1/hr", r.payload())
        for r in _readings("p2", 3, "wrong"):
            publisher.send("medtwin/ward1/p2/pump-1/hr", r.payload())
        for r in _readings("p2", 1, "unkeyed"):  # a device without a key: allowed by default
            publisher.send("medtwin/ward1/p2/monitor-9/hr", r.payload())
        d.add_device_key("pump-7", "p2")  # a key issued while running applies within 1 s
        time.sleep(1.1)
        for r in _readings("p1", 1, "late"):
            publisher.send("medtwin/ward1/p1/pump-7/hr", r.payload())
        assert ing.wait_idle(quiet=1.5, timeout=30)
    finally:
        ing.stop()
    assert [o.source_id for o in store.timeline("p1", codes=["8867-4"])] == [
        "pump-1/ok-0", "pump-1/ok-1"]
    assert [o.source_id for o in store.timeline("p2", codes=["8867-4"])] == [
        "monitor-9/unkeyed-0"]
    letters = store.dead_letters()
    bound = letters[letters["reason"].str.contains("bound by its key to another patient")]
    assert len(bound) == 4 and ing.stats.unbound == 4
    assert not bound["reason"].str.contains("p2").any()  # the reason names no patient
    # with keys required, a device without one is refused too
    ing2 = Ingester(store, broker=broker.url, client_id=f"ing-{uuid.uuid4().hex[:6]}",
                    require_device_keys=True).start()
    try:
        publisher.send("medtwin/ward1/p2/monitor-9/hr", _readings("p2", 2, "strict")[1].payload())
        assert ing2.wait_idle(quiet=1.0, timeout=30)
    finally:
        ing2.stop()
    assert "has no device key" in " ".join(store.dead_letters()["reason"])


def test_broker_spec_parses_redacts_and_checks(tmp_path):
    s = broker_spec("mqtts://dev%40x:p%3Ass@broker.example")
    assert (s.host, s.port, s.tls, s.username, s.password) == (
        "broker.example", 8883, True, "dev@x", "p:ss")
    assert "p:ss" not in s.url and "p%3Ass" not in repr(s) and str(s) == s.url
    assert "hunter2" not in repr(DevicePublisher(broker="mqtts://u:hunter2@h"))
    assert broker_spec("mqtt://h").port == 1883 and broker_spec("h:1999").port == 1999
    with pytest.raises(ValidationError, match="mqtts://") as e:
        broker_spec("http://user:hunter2@h")
    assert "hunter2" not in str(e.value)
    with pytest.raises(ValidationError, match="no such file"):
        broker_spec("mqtts://h", ca_file=tmp_path / "missing.crt")
    (tmp_path / "c.crt").write_text("x")
    with pytest.raises(ValidationError, match="plain-text broker"):
        broker_spec("mqtt://h", ca_file=tmp_path / "c.crt")
    with pytest.raises(ValidationError, match="needs its certificate"):
        broker_spec("mqtts://h", key_file=tmp_path / "c.crt")
    with pytest.raises(ValidationError, match="needs a username"):
        broker_spec("mqtts://h", password="pw")


def test_acl_grants_each_device_only_its_own_topics(store, tmp_path):
    store.append([Patient(id="p1", source_id="Patient/p1")])
    d = Directory(store.engine, PasswordHasher(time_cost=1, memory_kib=256))
    k1 = d.add_device_key("pump-1", "p1")
    write_broker_files(tmp_path, device_accounts(store.engine), prefix="medtwin",
                       ingester=INGESTER, new_keys={device_username(k1): k1})
    acl = (tmp_path / "acl").read_text()
    assert f"user {device_username(k1)}\ntopic write medtwin/+/p1/pump-1/+\n" in acl
    assert f"user {INGESTER}\ntopic read medtwin/#\ntopic write medtwin/alerts/#\n" in acl
    entries = read_passwd(tmp_path / "passwd")
    assert check_password(k1, entries[device_username(k1)])
    assert (tmp_path / "passwd").stat().st_mode & 0o077 == 0
    # an ingester password is generated once when none is configured, then kept
    files = write_broker_files(tmp_path / "again", device_accounts(store.engine),
                               prefix="medtwin", ingester=INGESTER)
    assert files.ingester_password and files.missing == 1
    assert check_password(files.ingester_password,
                          read_passwd(tmp_path / "again" / "passwd")[INGESTER])



def test_cli_key_add_broker_config_revoke_and_stream(tmp_path, monkeypatch, pki,
                                                     secure_broker_factory):
    """`medtwin key add --broker-dir` writes the broker files; `medtwin stream` publishes
    over TLS with the device's key; `key revoke` takes its account away."""
    from typer.testing import CliRunner

    from medtwin.cli import app
    from medtwin.security.crypto import KeyRing
    from medtwin.store.event_store import EventStore

    runner = CliRunner()
    keyfile, db, auth = tmp_path / "keys.json", str(tmp_path / "cli.sqlite"), tmp_path / "auth"
    KeyRing.generate().save(keyfile)
    for k, v in {"KEY_FILE": str(keyfile), "ARGON2_MEMORY_KIB": "256", "ARGON2_TIME_COST": "1",
                 "MQTT_PASSWORD": INGESTER_PW}.items():
        monkeypatch.setenv(f"MEDTWIN_{k}", v)
    out = runner.invoke(app, ["key", "add", "--device", "mon-1", "--patient", "sim-0000",
                              "--db", db, "--broker-dir", str(auth)])
    assert out.exit_code == 0, out.output
    key = re.search(r"mtk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", out.output).group(0)
    assert f"username {device_username(key)}" in out.output and "reload Mosquitto" in out.output
    acl = (auth / "acl").read_text()
    assert "topic write medtwin/+/sim-0000/mon-1/+" in acl and "user medtwin-ingester" in acl
    broker = secure_broker_factory(auth)
    with EventStore.open(db) as store:
        store.append([Patient(id="sim-0000", source_id="Patient/sim-0000")])
    # `medtwin live` over TLS as the ingester (password from MEDTWIN_MQTT_PASSWORD)
    live = subprocess.Popen(
        [sys.executable, "-m", "medtwin.cli", "live", "--broker", broker.url, "--db", db,
         "--mqtt-username", INGESTER, "--mqtt-ca", str(pki.ca), "--require-device-keys",
         "--report-every", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in live.stderr:  # type: ignore[union-attr]
            if line.startswith("ingesting"):
                assert f"from {broker.url} " in line
                break
        else:
            pytest.fail(f"`medtwin live` did not start (exit {live.wait()})")
        monkeypatch.setenv("MEDTWIN_MQTT_PASSWORD", key)  # now as the device
        args = ["stream", "--patients", "1", "--steps", "2", "--rate", "0", "--broker",
                broker.url, "--mqtt-ca", str(pki.ca), "--device", "mon-1"]
        sent = runner.invoke(app, [*args, "--mqtt-username", device_username(key)])
        assert sent.exit_code == 0, sent.output
        assert f"to {broker.url}" in sent.output and key not in sent.output
        refused = runner.invoke(app, [*args, "--mqtt-username", "mtk_nobody"])
        assert refused.exit_code == 2 and "refused" in refused.output
        time.sleep(2.0)
    finally:
        live.send_signal(signal.SIGTERM)
        rest = live.communicate(timeout=30)[1]
    assert "stored=10," in rest, rest  # 2 ticks x 5 vitals of sim-0000
    assert INGESTER_PW not in rest and key not in rest
    with EventStore.open(db) as store:
        assert len(store.timeline("sim-0000")) == 10
    monkeypatch.setenv("MEDTWIN_MQTT_PASSWORD", INGESTER_PW)
    out = runner.invoke(app, ["key", "revoke", device_username(key), "--db", db,
                              "--broker-dir", str(auth)])
    assert out.exit_code == 0 and "1 removed" in out.output, out.output
    assert set(read_passwd(auth / "passwd")) == {INGESTER}
    out = runner.invoke(app, ["key", "broker-config", "--out", str(tmp_path / "fresh"),
                              "--db", db])
    assert out.exit_code == 0 and "0 device account(s)" in out.output, out.output
