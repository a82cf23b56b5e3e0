"""Which patient each device may report for, from the store's device keys.

``medtwin key add --device D --patient P`` binds device ``D`` to patient ``P``. The broker's
ACL already lets a device publish only under its own patient and device
(:mod:`medtwin.live.acl`); the ingester checks the same binding again, so a reading that got
through a misconfigured broker (anonymous access, no ACL) on another patient's topic is
dead-lettered instead of stored in the wrong record. A device that never had a key is let
through unless keys are required (``require_key``); a device whose keys are all revoked is
refused. What this cannot see: a client publishing under another device's name on that
device's own patient topic, which only the broker's per-device credentials prevent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from medtwin.store import schema as t


@dataclass
class DeviceBindings:
    """The device -> patients map, reloaded every ``refresh_every`` seconds (a revocation
    applies within that) and, at most once a second, when a device or a pairing is not known
    yet (a new key applies within a second)."""

    engine: Engine
    require_key: bool = False
    refresh_every: float = 30.0
    _active: dict[str, set[str]] = field(default_factory=dict, init=False)
    _known: set[str] = field(default_factory=set, init=False)
    _loaded: float = field(default=float("-inf"), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def load(self) -> DeviceBindings:
        """Read every device key (active and revoked) from the store; returns self."""
        k = t.api_keys
        with self.engine.connect() as conn:
            rows = conn.execute(select(k.c.device_id, k.c.patient_id, k.c.revoked)).all()
        active: dict[str, set[str]] = {}
        for device, patient, revoked in rows:
            if not revoked:
                active.setdefault(device, set()).add(patient)
        with self._lock:
            self._active, self._known = active, {r[0] for r in rows}
            self._loaded = time.monotonic()
        return self

    def _allowed(self, device: str, patient: str) -> bool | None:
        """True/False when decided, None when the device has no key at all."""
        if patient in self._active.get(device, ()):
            return True
        return False if device in self._known else None

    def refusal(self, device: str, patient: str) -> str | None:
        """Why a reading from ``device`` for ``patient`` must be refused, or None when it may
        be stored. The reason names the device, never the patient."""
        now = time.monotonic()
        if now - self._loaded > self.refresh_every:
            self.load()
        verdict = self._allowed(device, patient)
        if verdict is not True and now - self._loaded > 1.0:  # a key added since
            self.load()
            verdict = self._allowed(device, patient)
        if verdict:
            return None
        if verdict is None:
            if not self.require_key:
                return None
            return (f"device {device!r} has no device key; issue one with `medtwin key add "
                    f"--device {device} --patient ...`")
        if device not in self._active:
            return f"every key of device {device!r} is revoked"
        return (f"device {device!r} is bound by its key to another patient than this topic's: "
                "a device may publish only its own patient's readings")
