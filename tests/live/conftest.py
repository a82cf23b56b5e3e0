"""A private Mosquitto broker per test (a real one, on its own port and data folder), so tests
can stop and restart it without touching the machine's broker; and a publisher helper."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from tests.live.pki import Pki


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto process that can be stopped and started again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.folder = folder
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
            "autosave_interval 1\nuser root\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private mosquitto did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None:
        if os.environ.get("CI"):  # the live-path safety tests must run in CI, never skip
            pytest.fail("the mosquitto broker is required in CI (.ci/run installs it)")
        pytest.skip("the mosquitto broker is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Publisher:
    """QoS 1 publisher that waits for each PUBACK."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Publisher]:
    p = Publisher(broker)
    yield p
    p.close()


@pytest.fixture
def new_publisher(broker: Broker) -> Iterator[type[Publisher]]:
    """The Publisher class, for a test that needs another publisher after a restart."""
    yield Publisher


class SecureBroker(Broker):
    """A Mosquitto with TLS only: one listener for username/password, one that takes the
    client certificate's CN as the username; no anonymous access; a password file and ACL
    (the files ``medtwin key broker-config`` writes, in ``auth``)."""

    def __init__(self, folder: Path, pki: Pki, auth: Path) -> None:
        super().__init__(folder)
        self.cert_port = _free_port()
        server_crt, server_key = pki.issue("server", "127.0.0.1", server=True)
        tls = f"cafile {pki.ca}\ncertfile {server_crt}\nkeyfile {server_key}\n" \
              "tls_version tlsv1.2\n"
        self.conf.write_text(
            "per_listener_settings false\nallow_anonymous false\n"
            f"password_file {auth / 'passwd'}\nacl_file {auth / 'acl'}\n"
            "persistence false\nuser root\n"
            f"listener {self.port} 127.0.0.1\n{tls}"
            f"listener {self.cert_port} 127.0.0.1\n{tls}"
            "require_certificate true\nuse_identity_as_username true\n")

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads the password file and the ACL."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def secure_broker_factory(tmp_path: Path, pki: Pki) -> Iterator[type]:
    """Start a TLS Mosquitto on the broker files in ``auth`` (written by the test first)."""
    if shutil.which("mosquitto") is None:
        if os.environ.get("CI"):
            pytest.fail("the mosquitto broker is required in CI (.ci/run installs it)")
        pytest.skip("the mosquitto broker is not installed (apt-get install mosquitto)")
    started: list[SecureBroker] = []

    def start(auth: Path) -> SecureBroker:
        folder = tmp_path / f"mosquitto-{len(started)}"
        folder.mkdir()
        b = SecureBroker(folder, pki, auth)
        b.start()
        started.append(b)
        return b

    yield start  # type: ignore[misc]
    for b in started:
        b.stop()
