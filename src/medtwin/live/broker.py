"""A small in-process MQTT broker (5.0 and 3.1.1, QoS 0/1) for ``medtwin demo``.

A user's machine has no Mosquitto, and the pure-Python brokers on PyPI speak either MQTT
3.1.1 only (amqtt) or QoS 0 only (mqttools), while medtwin's ingester needs MQTT 5 with QoS 1
and manual acknowledgement. This broker covers exactly what the demo uses: CONNECT, PUBLISH
(QoS 0 and 1, acknowledged), SUBSCRIBE with ``+``/``#`` wildcards and ``$share/<group>/``
shared subscriptions, UNSUBSCRIBE, PING and DISCONNECT. Sessions live in memory and end with
the connection (no retained messages, no will, no persistence): a demo broker, not a server.
It listens on 127.0.0.1 only and runs its own asyncio loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from dataclasses import dataclass, field

from medtwin.core.errors import MedtwinError

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        byte = buf[i]
        i += 1
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, i
        mult *= 128


def _str(buf: bytes, i: int) -> tuple[str, int]:
    n = int.from_bytes(buf[i:i + 2], "big")
    return buf[i + 2:i + 2 + n].decode("utf-8"), i + 2 + n


def _enc_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return len(b).to_bytes(2, "big") + b


def _packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT topic-filter matching with ``+`` (one level) and ``#`` (the rest)."""
    f, t = filter_.split("/"), topic.split("/")
    for k, part in enumerate(f):
        if part == "#":
            return not topic.startswith("$") or k > 0
        if k >= len(t) or (part != "+" and part != t[k]):
            return False
    return len(f) == len(t)


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    v5: bool = True
    client_id: str = ""
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        return next(self.ids) % 65535 + 1


@dataclass(frozen=True, slots=True)
class _Sub:
    conn: _Conn
    filter: str
    qos: int
    group: str | None


class EmbeddedBroker:
    """Start with :meth:`start` (returns ``mqtt://127.0.0.1:PORT``), end with :meth:`stop`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._subs: list[_Sub] = []
        self._turn: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.delivered = 0

    @property
    def url(self) -> str:
        """The address clients connect to."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Listen in a background thread; returns the broker URL."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, self.host, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except OSError as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="medtwin-broker", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise MedtwinError(f"the embedded MQTT broker could not listen on {self.host}:"
                               f"{self.port}: {failure[0] if failure else 'timeout'}")
        log.info("embedded MQTT broker on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Close every connection and the listener."""
        if self._loop is not None and self._thread is not None:
            for sub in list(self._subs):
                self._loop.call_soon_threadsafe(sub.conn.writer.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = self._thread = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        try:
            while True:
                head = await reader.readexactly(1)
                length, mult = 0, 1
                while True:
                    b = (await reader.readexactly(1))[0]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                body = await reader.readexactly(length)
                if not self._handle(conn, head[0] >> 4, head[0] & 0x0F, body):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, UnicodeDecodeError):
            pass
        finally:
            self._subs = [s for s in self._subs if s.conn is not conn]
            writer.close()

    def _handle(self, conn: _Conn, kind: int, flags: int, body: bytes) -> bool:
        """React to one packet; False ends the connection."""
        w = conn.writer
        if kind == CONNECT:
            _, i = _str(body, 0)
            conn.v5 = body[i] >= 5
            i += 4  # level, flags, keep-alive
            if conn.v5:
                n, i = _read_varint(body, i)
                i += n
            conn.client_id, _ = _str(body, i)
            w.write(_packet(CONNACK, b"\x00\x00\x00" if conn.v5 else b"\x00\x00"))
        elif kind == PUBLISH:
            qos = (flags >> 1) & 3
            topic, i = _str(body, 0)
            pid = None
            if qos:
                pid, i = body[i:i + 2], i + 2
            if conn.v5:
                n, i = _read_varint(body, i)
                i += n
            self._route(topic, body[i:], qos)
            if pid is not None:
                w.write(_packet(PUBACK, pid))
        elif kind == SUBSCRIBE:
            pid, i = body[:2], 2
            if conn.v5:
                n, i = _read_varint(body, i)
                i += n
            granted = bytearray()
            while i < len(body):
                filter_, i = _str(body, i)
                qos = body[i] & 3
                i += 1
                group = None
                if filter_.startswith("$share/"):
                    _, group, filter_ = filter_.split("/", 2)
                self._subs.append(_Sub(conn, filter_, min(qos, 1), group))
                granted.append(min(qos, 1))
            w.write(_packet(SUBACK, pid + (b"\x00" if conn.v5 else b"") + bytes(granted)))
        elif kind == UNSUBSCRIBE:
            pid, i = body[:2], 2
            if conn.v5:
                n, i = _read_varint(body, i)
                i += n
            gone = []
            while i < len(body):
                filter_, i = _str(body, i)
                gone.append(filter_.split("/", 2)[2] if filter_.startswith("$share/")
                            else filter_)
            self._subs = [s for s in self._subs if not (s.conn is conn and s.filter in gone)]
            codes = b"\x00" * len(gone) if conn.v5 else b""
            w.write(_packet(UNSUBACK, pid + (b"\x00" if conn.v5 else b"") + codes))
        elif kind == PINGREQ:
            w.write(_packet(PINGRESP, b""))
        elif kind == DISCONNECT:
            return False
        return True  # PUBACK from subscribers and anything else: nothing to do

    def _route(self, topic: str, payload: bytes, qos: int) -> None:
        best: dict[_Conn, int] = {}
        groups: dict[str, list[_Sub]] = {}
        for s in self._subs:
            if not topic_matches(s.filter, topic):
                continue
            if s.group is None:
                best[s.conn] = max(best.get(s.conn, 0), s.qos)
            else:
                groups.setdefault(f"{s.group}\0{s.filter}", []).append(s)
        for key, members in groups.items():
            turn = self._turn.get(key, -1) + 1
            self._turn[key] = turn
            s = members[turn % len(members)]
            best[s.conn] = max(best.get(s.conn, 0), s.qos)
        for conn, sub_qos in best.items():
            q = min(qos, sub_qos)
            var = _enc_str(topic) + (conn.next_id().to_bytes(2, "big") if q else b"")
            var += b"\x00" if conn.v5 else b""
            conn.writer.write(_packet(PUBLISH, var + payload, q << 1))
            self.delivered += 1
