"""MQTT ingestion: subscribe, validate, append to the store, and only then acknowledge.

QoS 1 with manual acknowledgement on a persistent MQTT 5 session: a message the ingester has
not yet written is not acknowledged, so the broker delivers it again after a crash or a
reconnect; the store's idempotency keys then keep the retry from being stored twice. Bad
messages go to the dead-letter table with the reason and the raw payload; they never stop
the stream. Every reading passes the clinical-data policy (:func:`medtwin.interop.quality.
admit`): an implausible value or a wrong unit is dead-lettered with the reason, a reading
dated beyond the clock-skew tolerance in the future is stored flagged (quarantined: never
the latest value, never scored). A device never amends a record: a message reusing a stored
source id with other content is dead-lettered by the store. Several ingesters can share the
load through an MQTT 5 shared subscription.

Two failures must not silence the stream. A message the store cannot take (a poison
message) is found by writing the batch one reading at a time, once the store answers a
probe: it is dead-lettered with the reason and the rest are stored, instead of the whole
batch being retried forever. A broker that comes back without this ingester's session (it
lost its state: restarted without persistence, or the session expired) has dropped whatever
it held for us: the ingester notices (CONNACK's session-present flag), subscribes again, and
reports the gap (log, a dead-letter row naming the interval, ``stats.sessions_lost``, the
``on_gap`` hook) instead of carrying on as if nothing were missing.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from medtwin.core.errors import MedtwinError, NotFoundError, StoreError, ValidationError
from medtwin.core.records import Observation
from medtwin.interop.fhir.write import record_writes
from medtwin.interop.quality import FUTURE_DATED, FUTURE_TOLERANCE, admit
from medtwin.live.bindings import DeviceBindings
from medtwin.live.connection import BrokerSpec, as_spec, refusal
from medtwin.live.payload import parse_reading, parse_topic
from medtwin.store.engine import ping
from medtwin.store.event_store import EventStore
from medtwin.store.rows import AppendResult

log = logging.getLogger(__name__)

RECENT_IDS = 100_000  # source ids remembered to tell a retry from an out-of-order reading


@dataclass
class IngestStats:
    """Running counts of one ingester."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    future_dated: int = 0
    out_of_order: int = 0
    batches: int = 0
    store_retries: int = 0
    failed_batches: int = 0
    poison: int = 0
    sessions_lost: int = 0
    unbound: int = 0  # readings on a topic their device's key is not bound to


@dataclass(frozen=True, slots=True)
class IngestGap:
    """An interval in which readings may have been lost: the broker dropped our session."""

    since: datetime
    until: datetime
    reason: str

    def describe(self) -> str:
        """The gap as an operator reads it."""
        return (f"readings published between {self.since.isoformat(timespec='seconds')} and "
                f"{self.until.isoformat(timespec='seconds')} may be missing: {self.reason}")


@dataclass(frozen=True, slots=True)
class Flagged:
    """A stored reading with what was unusual about it (told to the twin-sync loop).
    ``future-dated`` marks a quarantined reading: stored, never scored."""

    observation: Observation
    flags: tuple[str, ...] = ()
    site: str = ""
    device: str = ""

    @property
    def quarantined(self) -> bool:
        """True when the reading must not be used as the latest value nor scored."""
        return FUTURE_DATED in self.flags


@dataclass(frozen=True, slots=True)
class _Msg:
    mid: int
    qos: int
    topic: str
    payload: bytes


def broker_address(url: str | BrokerSpec) -> tuple[str, int]:
    """``mqtt[s]://host:port`` (or ``host:port``) to (host, port)."""
    spec = as_spec(url)
    return spec.host, spec.port


@dataclass
class Ingester:
    """Subscribes to device readings and appends them to ``store``.

    ``on_stored`` receives each written batch (the sync loop's hook). ``group`` turns the
    subscription into ``$share/<group>/...`` so that several ingesters split the stream.
    ``broker`` is a URL or a :class:`~medtwin.live.connection.BrokerSpec` (TLS, credentials).
    A reading whose device has a key bound to another patient is dead-lettered;
    ``require_device_keys`` also refuses devices that have no key.
    """

    store: EventStore
    broker: str | BrokerSpec = field(default="mqtt://127.0.0.1:1883", repr=False)  # secrets
    prefix: str = "medtwin"
    client_id: str = "medtwin-ingester"
    group: str | None = None
    batch_size: int = 500
    batch_wait: float = 0.02
    receive_maximum: int = 2000
    on_stored: Callable[[list[Flagged]], None] | None = None
    on_gap: Callable[[IngestGap], None] | None = None
    stats: IngestStats = field(default_factory=IngestStats)
    future_tolerance: timedelta = FUTURE_TOLERANCE  # clock skew allowed before quarantine
    require_device_keys: bool = False

    def __post_init__(self) -> None:
        self.spec = as_spec(self.broker)
        self._refused: str | None = None
        self._bindings: DeviceBindings | None = None
        self._queue: queue.Queue[_Msg] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._known: set[str] = set()
        self._latest: dict[tuple[str, str], datetime] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._writer: threading.Thread | None = None
        self._had_session = False  # a session existed on the broker (we were subscribed)
        self._last_contact: datetime | None = None  # last message or connection
        self.gaps: list[IngestGap] = []
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                   protocol=mqtt.MQTTv5, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.reconnect_delay_set(min_delay=0.2, max_delay=5)
        self.spec.apply(self._client)

    @property
    def topic(self) -> str:
        """The subscription filter."""
        base = f"{self.prefix}/+/+/+/+"
        return f"$share/{self.group}/{base}" if self.group else base

    # --- MQTT side (paho's network thread) -----------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: object, flags: object, reason: object,
                    _p: object) -> None:
        if getattr(reason, "is_failure", False):
            self._refused = refusal(reason)
            log.warning("broker %s refused the connection: %s", self.spec.url, self._refused)
            return
        now = datetime.now(UTC)
        if self._had_session and not getattr(flags, "session_present", True):
            self._report_gap(IngestGap(self._last_contact or now, now,
                                       "the broker came back without this ingester's session "
                                       "(restarted without persistence, or it expired)"))
        self._last_contact = now
        client.subscribe(self.topic, qos=1)  # on every connect: a lost session lost it too

    def _on_subscribe(self, _c: object, _u: object, _mid: int, reasons: list[object],
                      _p: object) -> None:
        if any(getattr(r, "is_failure", False) for r in reasons):
            log.error("broker refused the subscription to %s: %s", self.topic, reasons)
            return
        self._had_session = True
        self._connected.set()  # only now is every new message routed to us
        log.info("connected to %s, subscribed to %s", self.spec.url, self.topic)

    def _on_disconnect(self, _c: object, _u: object, _f: object, reason: object,
                       _p: object) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("broker connection lost (%s); reconnecting", reason)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self._last_contact = datetime.now(UTC)
        self._queue.put(_Msg(msg.mid, msg.qos, msg.topic, bytes(msg.payload)))

    def _report_gap(self, gap: IngestGap) -> None:
        """Say loudly that readings may be missing, and keep a record of it in the store
        (written before the gap is counted: whoever sees the count finds the record)."""
        log.error("ingestion gap: %s", gap.describe())
        try:
            self.store.append(dead_letters=[(f"ingester:{self.client_id}",
                                             f"gap: {gap.describe()}", "")])
        except StoreError:
            log.exception("could not record the ingestion gap in the store")
        self.gaps.append(gap)
        self.stats.sessions_lost += 1
        if self.on_gap:
            try:
                self.on_gap(gap)
            except Exception:  # the hook must never stop ingestion
                log.exception("on_gap hook failed")

    # --- life cycle -------------------------------------------------------------------------
    def start(self, *, wait: float = 10.0) -> Ingester:
        """Connect (persistent session), subscribe and start writing; returns self."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 24 * 3600  # the broker keeps unacknowledged messages
        props.ReceiveMaximum = self.receive_maximum
        self._known = set(self.store.patients()["id"])
        self._bindings = DeviceBindings(self.store.engine,
                                        require_key=self.require_device_keys).load()
        self._writer = threading.Thread(target=self._write_loop, name="medtwin-ingest-writer",
                                        daemon=True)
        self._writer.start()
        try:
            self._client.connect(self.spec.host, self.spec.port, keepalive=30,
                                 clean_start=False, properties=props)
        except OSError as exc:  # ssl.SSLError included: a bad certificate or a plain port
            self._stop.set()
            raise MedtwinError(f"cannot reach the MQTT broker at {self.spec.url}: {exc}; is it "
                               "running, and is it TLS (mqtts://) or plain (mqtt://)?") from exc
        self._client.loop_start()
        end = time.monotonic() + wait
        while not self._connected.wait(0.05) and time.monotonic() < end:
            if self._refused:
                break
        if not self._connected.is_set():
            why = self._refused or "no answer to CONNECT (a plain client on a TLS port?)"
            self.stop(drain=0)
            raise MedtwinError(f"the MQTT broker at {self.spec.url} did not accept the "
                               f"session: {why}")
        return self

    def stop(self, *, drain: float = 10.0) -> None:
        """Write what has arrived, acknowledge it, then disconnect."""
        deadline = time.monotonic() + drain
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        if self._writer:
            self._writer.join(timeout=drain)
        self._client.disconnect()
        self._client.loop_stop()

    def wait_idle(self, *, quiet: float = 0.5, timeout: float = 60.0) -> bool:
        """Block until nothing has arrived for ``quiet`` seconds (True) or ``timeout``."""
        end = time.monotonic() + timeout
        last, seen = time.monotonic(), -1
        while time.monotonic() < end:
            now_seen = self.stats.received
            if now_seen != seen or not self._queue.empty():
                seen, last = now_seen, time.monotonic()
            elif time.monotonic() - last >= quiet:
                return True
            time.sleep(0.02)
        return False

    # --- writer thread --------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                batch = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            end = time.monotonic() + self.batch_wait
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, end - time.monotonic())))
                except queue.Empty:
                    break
            try:
                written = self._write(batch)
            except Exception:  # a bug must not silently kill the writer: log, keep unacked
                log.exception("ingestion of a batch failed; it stays unacknowledged")
                self.stats.failed_batches += 1
                if self._stop.wait(1.0):
                    return
                self._requeue(batch)
                continue
            if not written:
                return  # stopping while the store is away: leave them unacknowledged
            for m in batch:
                self._client.ack(m.mid, m.qos)

    def _requeue(self, batch: list[_Msg]) -> None:
        """Put a failed batch back (it was never acknowledged), to be tried again."""
        self.stats.received -= len(batch)
        for m in batch:
            self._queue.put(m)

    def _classify(self, batch: list[_Msg]) -> tuple[list[Flagged], list[tuple[str, str, str]]]:
        good: list[Flagged] = []
        bad: list[tuple[str, str, str]] = []
        now = datetime.now(UTC)
        for m in batch:
            try:
                admitted = admit(parse_reading(m.topic, m.payload, prefix=self.prefix),
                                 now=now, tolerance=self.future_tolerance, where="payload")
                obs = admitted.observation
                if obs.subject not in self._known:
                    self._refresh(obs.subject)
            except (ValidationError, NotFoundError) as exc:
                bad.append((m.topic, str(exc), m.payload.decode("utf-8", "replace")))
                continue
            topic = parse_topic(m.topic, self.prefix)
            why = self._bindings.refusal(topic.device, obs.subject) if self._bindings else None
            if why is not None:
                self.stats.unbound += 1
                bad.append((m.topic, why, m.payload.decode("utf-8", "replace")))
                continue
            flags = [admitted.quality] if admitted.quality else []
            if self._seen(obs.source_id):  # a retry: the store skips it; quarantine stays
                good.append(Flagged(obs, tuple(flags), topic.site, topic.device))
                continue
            key = (obs.subject, obs.code)
            if admitted.quality is None:  # a quarantined time never moves "latest"
                if key in self._latest and obs.time < self._latest[key]:
                    flags.append("out-of-order")
                else:
                    self._latest[key] = obs.time
            good.append(Flagged(obs, tuple(flags), topic.site, topic.device))
        return good, bad

    def _seen(self, source_id: str) -> bool:
        """True if this ingester saw ``source_id`` recently (a bounded memory of retries)."""
        if source_id in self._recent:
            self._recent.move_to_end(source_id)
            return True
        self._recent[source_id] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        return False

    def _refresh(self, patient: str) -> None:
        if not self.store.has_patient(patient):
            raise NotFoundError(f"unknown patient {patient!r}; import the patient before its "
                                "devices publish")
        self._known.add(patient)

    def _write(self, batch: list[_Msg]) -> bool:
        self.stats.received += len(batch)
        good, bad = self._classify(batch)
        delay = 0.1
        while True:
            try:  # a device never amends: a reused source id is dead-lettered, not stored
                flags = [FUTURE_DATED if g.quarantined else None for g in good]
                result = self.store.append(
                    [], [g.observation for g in good], dead_letters=bad, quality=flags,
                    may_amend=False, on_conflict="dead-letter",
                    resources=record_writes([g.observation for g in good], flags))
                break
            except StoreError as exc:
                if self._store_answers():  # the store is up: a poison message, no outage
                    result = self._write_each(good, bad)
                    break
                self.stats.store_retries += 1
                log.warning("store write failed, retrying in %.1fs: %s", delay, exc)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
        self.stats.batches += 1
        self.stats.stored += result.stored
        self.stats.duplicates += result.duplicates
        refused = {i for i, _ in result.refusals}
        good = [g for i, g in enumerate(good) if i not in refused]  # never scored
        self.stats.dead_lettered += len(bad) + len(refused)
        self.stats.future_dated += sum(g.quarantined for g in good)
        self.stats.out_of_order += sum("out-of-order" in g.flags for g in good)
        if self.on_stored and good:
            try:
                self.on_stored(good)
            except Exception:  # the hook must never stop ingestion
                log.exception("on_stored hook failed")
        return True


    def _store_answers(self) -> bool:
        """True when the database answers a trivial query (so a failure is the data's)."""
        try:
            ping(self.store.engine)
        except StoreError:
            return False
        return True

    def _write_each(self, good: list[Flagged], bad: list[tuple[str, str, str]]
                    ) -> AppendResult:
        """Write the readings one at a time: one the store cannot take is dead-lettered with
        the reason and counted as refused (never scored); the others are stored."""
        total = AppendResult()
        letters = list(bad)
        for i, g in enumerate(good):
            try:
                flag = [FUTURE_DATED if g.quarantined else None]
                r = self.store.append(
                    [], [g.observation], quality=flag, may_amend=False,
                    on_conflict="dead-letter", resources=record_writes([g.observation], flag))
                total += AppendResult(r.stored, r.duplicates, r.patients_added, r.refused,
                                      tuple((i, why) for _, why in r.refusals))
            except StoreError as exc:
                self.stats.poison += 1
                log.error("a reading the store cannot take was dead-lettered: %s", exc)
                letters.append((f"device:{g.device or 'unknown'}", f"store refused it: {exc}",
                                json.dumps(g.observation.to_dict())))
                total += AppendResult(refused=1, refusals=((i, str(exc)),))
        if letters:  # the batch's own dead letters, and the readings refused here
            self.store.append(dead_letters=letters)
        return total


def topic_for(prefix: str, site: str, patient: str, device: str, metric: str) -> str:
    """The topic a device publishes a reading on (validated)."""
    topic = f"{prefix}/{site}/{patient}/{device}/{metric}"
    parse_topic(topic, prefix)
    return topic
