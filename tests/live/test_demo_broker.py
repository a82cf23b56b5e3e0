"""The demo's broker: a private Mosquitto child when installed (gone with its parent, even
killed), the embedded broker otherwise, said plainly."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from medtwin.live.demo_broker import EMBEDDED_LIMITS, DemoBroker


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
        return True
    except OSError:
        return False


def _roundtrip(url: str) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    got: list[bytes] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe("demo/x", qos=1)
    time.sleep(0.3)
    c.publish("demo/x", b"hello", qos=1).wait_for_publish(5)
    end = time.monotonic() + 5
    while not got and time.monotonic() < end:
        time.sleep(0.02)
    c.disconnect()
    c.loop_stop()
    return got[0] if got else b""


def test_uses_mosquitto_when_installed_and_says_so():
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    b = DemoBroker()
    url = b.start()
    try:
        assert b.kind == "mosquitto" and "Mosquitto" in b.notice and url in b.notice
        assert _roundtrip(url) == b"hello"
    finally:
        b.stop()
    assert not _listening(int(url.rsplit(":", 1)[1]))


def test_falls_back_to_the_embedded_broker_and_says_so(caplog):
    b = DemoBroker(prefer_mosquitto=False)
    url = b.start()
    try:
        assert b.kind == "embedded" and EMBEDDED_LIMITS in b.notice
        assert any("embedded demo broker" in r.getMessage() for r in caplog.records)
        assert _roundtrip(url) == b"hello"
    finally:
        b.stop()


def test_mosquitto_child_dies_with_a_killed_parent(tmp_path):
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    code = ("from medtwin.live.demo_broker import DemoBroker; import time; "
            "print(DemoBroker().start(), flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        url = parent.stdout.readline().strip()
        port = int(url.rsplit(":", 1)[1])
        assert _listening(port)
    finally:
        parent.kill()  # SIGKILL: no clean-up runs in the parent
        parent.wait(10)
    end = time.monotonic() + 10
    while _listening(port) and time.monotonic() < end:
        time.sleep(0.1)
    assert not _listening(port)
