"""A small in-process MQTT broker (5.0 and 3.1.1) for ``medtwin demo`` when Mosquitto is absent.

``medtwin demo`` runs Mosquitto when it is installed (:mod:`medtwin.live.demo_broker`); this
broker is the fallback, because the pure-Python brokers on PyPI speak either MQTT 3.1.1 only
(amqtt) or QoS 0 only (mqttools), while medtwin's ingester needs MQTT 5 with QoS 1 and manual
acknowledgement. It keeps the guarantees the ingester relies on:

- persistent sessions: a client connecting with ``clean_start=False`` (MQTT 5, with a
  session expiry interval) or ``clean_session=0`` (3.1.1) keeps its subscriptions and the
  QoS 1 messages routed to it while it is offline, and CONNACK says so (session present);
- QoS 1 delivery until acknowledged: a message sent to a subscriber stays in its session
  until the subscriber's PUBACK, and is sent again (DUP) when the session reconnects; no
  more are in flight than the client's Receive Maximum, the rest wait in order;
- QoS 2 from publishers: PUBREC/PUBREL/PUBCOMP, routed once however often it is resent
  (subscribers are granted QoS 1 at most, as the protocol allows);
- retained messages (the last per topic; an empty one clears it) and wills (published when
  a connection ends without DISCONNECT).

What it does not do: it keeps everything in memory (a restart loses sessions; the ingester
then reports the gap), listens on 127.0.0.1 only, has no authentication or TLS, and ignores
topic aliases, message expiry and other MQTT 5 properties. A demo broker, not a server.
It runs its own asyncio loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from medtwin.core.errors import MedtwinError

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
NEVER_EXPIRES = 0xFFFFFFFF
DEFAULT_RECEIVE_MAXIMUM = 65535

# MQTT 5 property identifiers by value type (to skip or read them)
_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO = {0x13, 0x21, 0x22, 0x23}
_FOUR = {0x02, 0x11, 0x18, 0x27}
_VARINT = {0x0B}
_STRING = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY = {0x09, 0x16}
_PAIR = {0x26}
SESSION_EXPIRY, RECEIVE_MAXIMUM = 0x11, 0x21


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


def _bin(buf: bytes, i: int) -> tuple[bytes, int]:
    n = int.from_bytes(buf[i:i + 2], "big")
    return buf[i + 2:i + 2 + n], i + 2 + n


def _enc_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return len(b).to_bytes(2, "big") + b


def _packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def _props(buf: bytes, i: int) -> tuple[dict[int, int], int]:
    """Read an MQTT 5 property block; returns the integer-valued properties and the end."""
    length, i = _read_varint(buf, i)
    end, out = i + length, {}
    while i < end:
        pid, i = _read_varint(buf, i)
        if pid in _BYTE:
            out[pid], i = buf[i], i + 1
        elif pid in _TWO:
            out[pid], i = int.from_bytes(buf[i:i + 2], "big"), i + 2
        elif pid in _FOUR:
            out[pid], i = int.from_bytes(buf[i:i + 4], "big"), i + 4
        elif pid in _VARINT:
            out[pid], i = _read_varint(buf, i)
        elif pid in _STRING or pid in _BINARY:
            _, i = _bin(buf, i)
        elif pid in _PAIR:
            _, i = _bin(buf, i)
            _, i = _bin(buf, i)
        else:
            raise ValueError(f"unknown MQTT property {pid:#x}")
    return out, end


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT topic-filter matching with ``+`` (one level) and ``#`` (the rest)."""
    f, t = filter_.split("/"), topic.split("/")
    if topic.startswith("$") and f[0] in {"+", "#"}:
        return False
    for k, part in enumerate(f):
        if part == "#":
            return True
        if k >= len(t) or (part != "+" and part != t[k]):
            return False
    return len(f) == len(t)


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    v5: bool = True
    session: _Session | None = None
    clean_exit: bool = False
    will: _Message | None = None


@dataclass(eq=False)
class _Session:
    """What the broker keeps of one client id, online or not."""

    client_id: str
    expiry: int = 0  # seconds after the connection ends; NEVER_EXPIRES: kept
    conn: _Conn | None = None
    receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM
    inflight: OrderedDict[int, _Message] = field(default_factory=OrderedDict)
    queued: deque[_Message] = field(default_factory=deque)
    awaiting_rel: set[int] = field(default_factory=set)  # QoS 2 ids routed, before PUBREL
    ended_at: float | None = None
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        while True:
            pid = next(self.ids) % 65535 + 1
            if pid not in self.inflight:
                return pid

    def expired(self, now: float) -> bool:
        return (self.conn is None and self.ended_at is not None
                and self.expiry != NEVER_EXPIRES and now - self.ended_at >= self.expiry)


@dataclass(frozen=True, slots=True)
class _Sub:
    session: _Session
    filter: str
    qos: int
    group: str | None


class EmbeddedBroker:
    """Start with :meth:`start` (returns ``mqtt://127.0.0.1:PORT``), end with :meth:`stop`."""

    kind = "embedded"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._subs: list[_Sub] = []
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, _Message] = {}
        self._turn: dict[str, int] = {}
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._anon = itertools.count(1)
        self.delivered = 0
        self.redelivered = 0

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
        """Close every connection and the listener (sessions, in memory, are lost)."""
        if self._loop is not None and self._thread is not None:
            for conn in list(self._conns):
                conn.clean_exit = True  # the broker goes: no wills
                self._loop.call_soon_threadsafe(conn.writer.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = self._thread = None

    # --- connections --------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
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
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, UnicodeDecodeError,
                ValueError):
            pass
        finally:
            self._conns.discard(conn)
            self._ended(conn)
            writer.close()

    def _ended(self, conn: _Conn) -> None:
        """A connection is gone: publish its will unless it said goodbye; keep or drop its
        session."""
        s = conn.session
        if conn.will is not None and not conn.clean_exit:
            self._route(conn.will)
        if s is None or s.conn is not conn:
            return  # never connected, or taken over by a newer connection
        s.conn, s.ended_at = None, time.monotonic()
        if s.expiry == 0:
            self._drop(s)

    def _drop(self, s: _Session) -> None:
        self._sessions.pop(s.client_id, None)
        self._subs = [x for x in self._subs if x.session is not s]

    def _handle(self, conn: _Conn, kind: int, flags: int, body: bytes) -> bool:
        """React to one packet; False ends the connection."""
        if kind == CONNECT:
            return self._connect(conn, body)
        s = conn.session
        if s is None:
            return False  # anything before CONNECT is a protocol error
        w = conn.writer
        if kind == PUBLISH:
            self._publish(conn, s, flags, body)
        elif kind == PUBACK:
            s.inflight.pop(int.from_bytes(body[:2], "big"), None)
            self._pump(s)
        elif kind == PUBREL:
            s.awaiting_rel.discard(int.from_bytes(body[:2], "big"))
            w.write(_packet(PUBCOMP, body[:2]))
        elif kind in (PUBREC, PUBCOMP):
            pass  # subscribers are granted QoS 1 at most: never asked for
        elif kind == SUBSCRIBE:
            self._subscribe(conn, s, body)
        elif kind == UNSUBSCRIBE:
            self._unsubscribe(conn, s, body)
        elif kind == PINGREQ:
            w.write(_packet(PINGRESP, b""))
        elif kind == DISCONNECT:
            reason = body[0] if conn.v5 and body else 0
            conn.clean_exit = reason != 0x04  # 0x04: disconnect with will message
            if conn.v5 and len(body) > 1:
                props, _ = _props(body, 1)
                if SESSION_EXPIRY in props and s.expiry:
                    s.expiry = props[SESSION_EXPIRY]
            return False
        return True

    def _connect(self, conn: _Conn, body: bytes) -> bool:
        _, i = _str(body, 0)
        level, cflags = body[i], body[i + 1]
        conn.v5 = level >= 5
        i += 4  # level, flags, keep-alive
        props: dict[int, int] = {}
        if conn.v5:
            props, i = _props(body, i)
        client_id, i = _str(body, i)
        clean = bool(cflags & 0x02)
        if cflags & 0x04:  # will: [properties], topic, payload
            if conn.v5:
                _, i = _props(body, i)
            topic, i = _str(body, i)
            payload, i = _bin(body, i)
            conn.will = _Message(topic, payload, min((cflags >> 3) & 3, 1), bool(cflags & 0x20))
        if conn.v5:
            expiry = props.get(SESSION_EXPIRY, 0)
        else:
            expiry = 0 if clean else NEVER_EXPIRES
        client_id = client_id or f"medtwin-anon-{next(self._anon)}"
        old = self._sessions.get(client_id)
        if old is not None and old.conn is not None:  # session takeover: end the old link
            old.conn.clean_exit = False
            old.conn.writer.close()
            old.conn = None
        if old is not None and (clean or old.expired(time.monotonic())):
            self._drop(old)
            old = None
        present = old is not None
        s = old or _Session(client_id)
        s.expiry, s.conn, s.ended_at = expiry, conn, None
        s.receive_maximum = props.get(RECEIVE_MAXIMUM, DEFAULT_RECEIVE_MAXIMUM)
        self._sessions[client_id] = s
        conn.session = s
        ack = bytes([1 if present else 0, 0])
        conn.writer.write(_packet(CONNACK, ack + (b"\x00" if conn.v5 else b"")))
        if present:  # unacknowledged messages first, as sent, then what waited
            for pid, m in s.inflight.items():
                self._send(s, m, pid, dup=True)
                self.redelivered += 1
            self._pump(s)
        return True

    def _publish(self, conn: _Conn, s: _Session, flags: int, body: bytes) -> None:
        qos, retain = (flags >> 1) & 3, bool(flags & 1)
        topic, i = _str(body, 0)
        pid = None
        if qos:
            pid, i = int.from_bytes(body[i:i + 2], "big"), i + 2
        if conn.v5:
            _, i = _props(body, i)
        message = _Message(topic, body[i:], min(qos, 1), retain)
        if qos == 2:
            if pid not in s.awaiting_rel:  # a resend before PUBREL is not routed twice
                s.awaiting_rel.add(pid)  # type: ignore[arg-type]
                self._route(message)
            conn.writer.write(_packet(PUBREC, pid.to_bytes(2, "big")))  # type: ignore[union-attr]
            return
        self._route(message)
        if qos == 1:
            conn.writer.write(_packet(PUBACK, pid.to_bytes(2, "big")))  # type: ignore[union-attr]

    def _subscribe(self, conn: _Conn, s: _Session, body: bytes) -> None:
        pid, i = body[:2], 2
        if conn.v5:
            _, i = _props(body, i)
        granted = bytearray()
        new: list[_Sub] = []
        while i < len(body):
            filter_, i = _str(body, i)
            qos = min(body[i] & 3, 1)
            i += 1
            group = None
            if filter_.startswith("$share/"):
                _, group, filter_ = filter_.split("/", 2)
            self._subs = [x for x in self._subs if not (
                x.session is s and x.filter == filter_ and x.group == group)]
            sub = _Sub(s, filter_, qos, group)
            self._subs.append(sub)
            new.append(sub)
            granted.append(qos)
        conn.writer.write(_packet(SUBACK, pid + (b"\x00" if conn.v5 else b"") + bytes(granted)))
        for sub in new:  # retained messages, to plain (non-shared) subscriptions
            if sub.group is None:
                for m in list(self._retained.values()):
                    if topic_matches(sub.filter, m.topic):
                        self._deliver(s, _Message(m.topic, m.payload, min(m.qos, sub.qos),
                                                  True))

    def _unsubscribe(self, conn: _Conn, s: _Session, body: bytes) -> None:
        pid, i = body[:2], 2
        if conn.v5:
            _, i = _props(body, i)
        gone = []
        while i < len(body):
            filter_, i = _str(body, i)
            gone.append(filter_.split("/", 2)[2] if filter_.startswith("$share/") else filter_)
        self._subs = [x for x in self._subs if not (x.session is s and x.filter in gone)]
        codes = b"\x00" * len(gone) if conn.v5 else b""
        conn.writer.write(_packet(UNSUBACK, pid + (b"\x00" if conn.v5 else b"") + codes))

    # --- routing ------------------------------------------------------------------------------
    def _route(self, m: _Message) -> None:
        if m.retain:
            if m.payload:
                self._retained[m.topic] = m
            else:
                self._retained.pop(m.topic, None)
        now = time.monotonic()
        for s in [s for s in self._sessions.values() if s.expired(now)]:
            self._drop(s)
        best: dict[_Session, int] = {}
        groups: dict[str, list[_Sub]] = {}
        for sub in self._subs:
            if not topic_matches(sub.filter, m.topic):
                continue
            if sub.group is None:
                best[sub.session] = max(best.get(sub.session, 0), sub.qos)
            else:
                groups.setdefault(f"{sub.group}\0{sub.filter}", []).append(sub)
        for key, members in groups.items():  # round robin, online members first
            online = [x for x in members if x.session.conn is not None] or members
            turn = self._turn.get(key, -1) + 1
            self._turn[key] = turn
            sub = online[turn % len(online)]
            best[sub.session] = max(best.get(sub.session, 0), sub.qos)
        for s, sub_qos in best.items():
            self._deliver(s, _Message(m.topic, m.payload, min(m.qos, sub_qos)))

    def _deliver(self, s: _Session, m: _Message) -> None:
        """Send now, or keep (QoS 1) until the session is back or has room in flight."""
        if m.qos == 0:
            if s.conn is not None:
                self._send(s, m, None)
            return
        s.queued.append(m)
        self._pump(s)

    def _pump(self, s: _Session) -> None:
        """Send waiting QoS 1 messages while the client's Receive Maximum allows."""
        while s.conn is not None and s.queued and len(s.inflight) < s.receive_maximum:
            m = s.queued.popleft()
            pid = s.next_id()
            s.inflight[pid] = m
            self._send(s, m, pid)

    def _send(self, s: _Session, m: _Message, pid: int | None, *, dup: bool = False) -> None:
        conn = s.conn
        assert conn is not None
        var = _enc_str(m.topic) + (pid.to_bytes(2, "big") if pid is not None else b"")
        var += b"\x00" if conn.v5 else b""
        flags = (m.qos << 1) | (0x08 if dup else 0) | (1 if m.retain else 0)
        conn.writer.write(_packet(PUBLISH, var + m.payload, flags))
        self.delivered += 1
