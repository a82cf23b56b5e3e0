"""Publish readings to the broker as devices do (QoS 1), paced in wall-clock time."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from medtwin.core.errors import MedtwinError
from medtwin.live.connection import BrokerSpec, as_spec, refusal
from medtwin.live.ingest import topic_for
from medtwin.live.streams import Reading

log = logging.getLogger(__name__)


@dataclass
class DevicePublisher:
    """A QoS 1 publisher standing in for a site's devices. ``broker`` is a URL or a
    :class:`~medtwin.live.connection.BrokerSpec` (TLS, a device's username and API key)."""

    broker: str | BrokerSpec = field(default="mqtt://127.0.0.1:1883", repr=False)  # secrets
    prefix: str = "medtwin"
    site: str = "ward1"
    device: str = "monitor"
    client_id: str = ""
    inflight: int = 1000
    sent: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.spec = as_spec(self.broker)
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                   protocol=mqtt.MQTTv5)
        self.spec.apply(self._client)
        self._answer: list[object] = []
        self._answered = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.max_inflight_messages_set(self.inflight)
        self._client.max_queued_messages_set(0)
        self._acked = threading.Semaphore(0)
        self._client.on_publish = lambda *_: self._acked.release()

    def _on_connect(self, _c: object, _u: object, _f: object, reason: object,
                    _p: object) -> None:
        self._answer.append(reason)
        self._answered.set()

    def __enter__(self) -> DevicePublisher:
        return self.open()

    def open(self, wait: float = 10.0) -> DevicePublisher:
        """Connect and wait for the broker's CONNACK; a refusal is a :class:`MedtwinError`."""
        try:
            self._client.connect(self.spec.host, self.spec.port)
        except OSError as exc:  # ssl.SSLError included
            raise MedtwinError(f"cannot reach the MQTT broker at {self.spec.url}: {exc}") from exc
        self._client.loop_start()
        answered = self._answered.wait(wait)
        reason = self._answer[0] if self._answer else None
        if not answered or getattr(reason, "is_failure", False):
            self._client.disconnect()
            self._client.loop_stop()
            why = refusal(reason) if answered else "no answer to CONNECT (plain client on a " \
                "TLS port?)"
            raise MedtwinError(f"the MQTT broker at {self.spec.url} refused the device "
                               f"connection: {why}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, readings: Iterable[Reading]) -> int:
        """Queue readings for publication; returns how many."""
        n = 0
        for r in readings:
            topic = topic_for(self.prefix, self.site, r.patient, self.device, r.metric)
            self._client.publish(topic, r.payload(), qos=1)
            n += 1
        self.sent += n
        return n

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the broker acknowledged everything sent so far."""
        end = time.monotonic() + timeout
        while self.sent > 0:
            if not self._acked.acquire(timeout=max(0.0, end - time.monotonic())):
                raise MedtwinError(f"broker did not acknowledge {self.sent} message(s) in time")
            self.sent -= 1


def paced(batches: Iterable[list[Reading]], publisher: DevicePublisher, *, rate: float,
          stop: threading.Event | None = None, stamp_now: bool = False) -> int:
    """Publish one batch every 1/rate seconds (as fast as possible when rate <= 0).

    ``stamp_now``: each reading is stamped with the time it is published (what a real device
    does), whatever patient time the simulation has reached."""
    total, t0 = 0, time.monotonic()
    try:
        for k, batch in enumerate(batches):
            if stop is not None and stop.is_set():
                break
            if rate > 0:
                delay = t0 + k / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if stamp_now:
                now = datetime.now(UTC)
                batch = [dataclasses.replace(r, time=now) for r in batch]
            total += publisher.publish(batch)
    except KeyboardInterrupt:  # Ctrl-C ends the stream; what was sent is still flushed
        log.info("stream stopped after %d readings", total)
    publisher.flush()
    return total
