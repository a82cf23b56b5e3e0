"""The embedded demo broker keeps the guarantees medtwin relies on, checked side by side with a
real Mosquitto (the peer): persistent sessions, QoS 1 redelivery until the subscriber's
PUBACK, QoS 2 routed once, retained messages and wills; and ingestion across an ingester
restart loses nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from medtwin.core.records import Patient
from medtwin.live.broker import EmbeddedBroker
from medtwin.live.ingest import Ingester


@pytest.fixture(params=["embedded", "mosquitto"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(host, port) of the embedded broker, or of a private Mosquitto (the reference)."""
    if request.param == "embedded":
        b = EmbeddedBroker()
        b.start()
        yield "127.0.0.1", b.port
        b.stop()
    else:
        m = request.getfixturevalue("broker")
        yield "127.0.0.1", m.port


class Subscriber:
    """An MQTT 5 client with a persistent session that acknowledges only when told."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port, self.client_id = port, client_id
        self.got: list[tuple[str, bytes, bool, int]] = []
        self.session_present: bool | None = None
        self._ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        self.c.on_message = lambda _c, _u, m: self.got.append(
            (m.topic, bytes(m.payload), bool(m.dup), m.mid))
        self.c.on_connect = self._on_connect

    def _on_connect(self, _c, _u, flags, _r, _p) -> None:
        self.session_present = bool(flags.session_present)
        self._ready.set()

    def connect(self, *, clean: bool = False) -> Subscriber:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._ready.clear()
        self.c.connect("127.0.0.1", self.port, clean_start=clean, properties=props)
        self.c.loop_start()
        assert self._ready.wait(10)
        return self

    def ack_all(self) -> None:
        for *_, mid in self.got:
            self.c.ack(mid, 1)

    def drop(self) -> None:
        """End the connection without acknowledging anything (as a crash would)."""
        self.c.disconnect()
        self.c.loop_stop()

    def wait(self, n: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.2)  # and nothing more arrives


def _publish(port: int, topic: str, payloads: list[bytes], qos: int = 1,
             retain: bool = False) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for p in payloads:
        c.publish(topic, p, qos=qos, retain=retain).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_qos1_redelivered_until_puback_and_kept_for_offline_session(any_broker):
    _, port = any_broker
    topic = f"t{uuid.uuid4().hex[:6]}/x"
    sub = Subscriber(port, f"sub-{uuid.uuid4().hex[:6]}").connect(clean=True)
    sub.c.subscribe(topic, qos=1)
    time.sleep(0.3)
    _publish(port, topic, [b"m%d" % i for i in range(5)])
    sub.wait(5)
    assert [p for _, p, dup, _ in sub.got] == [b"m%d" % i for i in range(5)]
    sub.drop()  # none acknowledged
    _publish(port, topic, [b"late%d" % i for i in range(3)])  # while it is away
    again = Subscriber(port, sub.client_id).connect()
    again.wait(8)
    assert again.session_present is True
    assert [(p, dup) for _, p, dup, _ in again.got] == [
        (b"m%d" % i, True) for i in range(5)] + [(b"late%d" % i, False) for i in range(3)]
    again.ack_all()
    time.sleep(0.3)
    again.drop()
    third = Subscriber(port, sub.client_id).connect()
    third.wait(0, timeout=1.0)
    assert third.session_present is True and third.got == []  # acknowledged: never again
    third.drop()
    fresh = Subscriber(port, sub.client_id).connect(clean=True)  # clean start: session gone
    _publish(port, topic, [b"after-clean"])
    fresh.wait(1, timeout=1.0)
    assert fresh.session_present is False and fresh.got == []
    fresh.drop()


def test_retained_message_and_will(any_broker):
    _, port = any_broker
    topic = f"t{uuid.uuid4().hex[:6]}"
    _publish(port, f"{topic}/status", [b"online"], retain=True)
    sub = Subscriber(port, f"sub-{uuid.uuid4().hex[:6]}").connect(clean=True)
    sub.c.subscribe(f"{topic}/#", qos=1)
    sub.wait(1)
    assert [(t, p) for t, p, *_ in sub.got] == [(f"{topic}/status", b"online")]
    # a client that vanishes without DISCONNECT has its will published
    raw = _raw_connect(port, will=(f"{topic}/will", b"gone"))
    raw.close()
    sub.wait(2)
    assert (f"{topic}/will", b"gone") in [(t, p) for t, p, *_ in sub.got]
    # ... one that says goodbye does not
    raw = _raw_connect(port, will=(f"{topic}/will", b"gone-2"))
    raw.sendall(b"\xe0\x00")
    raw.close()
    sub.wait(3, timeout=1.0)
    assert b"gone-2" not in [p for _, p, *_ in sub.got]
    sub.drop()


def test_qos2_publish_is_routed_once(any_broker):
    _, port = any_broker
    topic = f"t{uuid.uuid4().hex[:6]}/q2"
    sub = Subscriber(port, f"sub-{uuid.uuid4().hex[:6]}").connect(clean=True)
    sub.c.subscribe(topic, qos=1)
    time.sleep(0.3)
    raw = _raw_connect(port)
    publish = _pkt(0x34, _s(topic) + (7).to_bytes(2, "big") + b"exactly-once")
    raw.sendall(publish)
    assert _read(raw)[0] == 0x50  # PUBREC
    raw.sendall(bytes([publish[0] | 0x08]) + publish[1:])  # resent (DUP) before PUBREL
    assert _read(raw)[0] == 0x50
    raw.sendall(_pkt(0x62, (7).to_bytes(2, "big")))  # PUBREL
    assert _read(raw)[0] == 0x70  # PUBCOMP
    raw.sendall(b"\xe0\x00")
    raw.close()
    sub.wait(1, timeout=2.0)
    assert [p for _, p, *_ in sub.got] == [b"exactly-once"]
    sub.drop()


def test_ingester_restart_loses_nothing_on_the_embedded_broker(tmp_path):
    from medtwin.store.event_store import EventStore

    broker = EmbeddedBroker()
    url = broker.start()
    store = EventStore.open(str(tmp_path / "e.sqlite"))
    store.append([Patient(id="p1", source_id="Patient/p1")])
    t0 = datetime.now(UTC) - timedelta(hours=1)
    readings = [json.dumps({"code": "8867-4", "value": 60 + i % 30, "unit": "/min",
                            "time": (t0 + timedelta(seconds=i)).isoformat(), "id": f"r{i}"}
                           ).encode() for i in range(200)]
    try:
        first = Ingester(store, broker=url, client_id="ing-restart").start()
        _publish(broker.port, "medtwin/w1/p1/mon/hr", readings[:100])
        assert first.wait_idle(quiet=0.5, timeout=20)
        first.stop()
        _publish(broker.port, "medtwin/w1/p1/mon/hr", readings[100:])  # nobody listening
        second = Ingester(store, broker=url, client_id="ing-restart").start()
        assert second.wait_idle(quiet=0.5, timeout=20)
        second.stop()
    finally:
        broker.stop()
    assert second.stats.sessions_lost == 0 and second.stats.stored == 100
    assert len(store.timeline("p1", codes=["8867-4"])) == 200
    store.close()


# --- a raw MQTT 3.1.1 client, to send what paho will not (a resent QoS 2, a will + crash) --
def _s(text: str) -> bytes:
    b = text.encode()
    return len(b).to_bytes(2, "big") + b


def _pkt(head: int, body: bytes) -> bytes:
    n, out = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([head]) + bytes(out) + body


def _read(sock: socket.socket) -> bytes:
    head = sock.recv(1)
    n, mult = 0, 1
    while True:
        b = sock.recv(1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return head + body


def _raw_connect(port: int, will: tuple[str, bytes] | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    flags = 0x02 | (0x04 | 0x08 if will else 0)  # clean session; will at QoS 1
    body = _s("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big")
    body += _s(f"raw-{uuid.uuid4().hex[:6]}")
    if will:
        body += _s(will[0]) + len(will[1]).to_bytes(2, "big") + will[1]
    sock.sendall(_pkt(0x10, body))
    assert _read(sock)[0] == 0x20  # CONNACK
    return sock
