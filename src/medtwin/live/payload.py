"""Device messages -> Observation records.

Topic: ``<prefix>/<site>/<patient>/<device>/<metric>``. Payload: a small JSON reading
``{"code": "8867-4", "value": 72, "unit": "/min", "time": "2026-01-05T08:00:00Z", "id": "..."}``
(``code`` may be left out when the metric is a known alias such as ``hr``) or a FHIR R4
Observation. Units are normalised as at every interop boundary.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from medtwin.core import codes
from medtwin.core.errors import ValidationError
from medtwin.core.records import Observation
from medtwin.interop.codes import to_canonical
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.read import parse_fhir, parse_fhir_datetime

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
METRIC_CODES = {"hr": codes.HEART_RATE, "pulse": codes.HEART_RATE, "rr": codes.RESPIRATORY_RATE,
                "spo2": codes.SPO2_PULSE_OXIMETRY, "temp": codes.BODY_TEMPERATURE,
                "sbp": codes.SYSTOLIC_BP, "dbp": codes.DIASTOLIC_BP, "glucose": codes.GLUCOSE_BLOOD,
                "cgm": codes.GLUCOSE_INTERSTITIAL, "o2flow": codes.O2_FLOW}


@dataclass(frozen=True, slots=True)
class Topic:
    """The parts of a reading's topic."""

    site: str
    patient: str
    device: str
    metric: str


def parse_topic(topic: str, prefix: str = "medtwin") -> Topic:
    """Split ``<prefix>/<site>/<patient>/<device>/<metric>``; ValidationError if malformed."""
    parts = topic.split("/")
    head = prefix.split("/")
    if parts[: len(head)] != head or len(parts) != len(head) + 4 or not all(parts):
        raise ValidationError(f"topic {topic!r} is not {prefix}/<site>/<patient>/<device>/"
                              "<metric>", where="topic")
    return Topic(*parts[len(head):])


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"value must be a finite number, got {value!r}", where=where)
    return float(value)


def parse_reading(topic: str, payload: bytes, *, prefix: str = "medtwin") -> Observation:
    """One message to one Observation, or a ValidationError saying what is wrong."""
    t = parse_topic(topic, prefix)
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"payload is not JSON: {exc}", where="payload") from exc
    if not isinstance(data, dict):
        raise ValidationError("payload must be a JSON object", where="payload")
    if data.get("resourceType") == "Observation":
        return _fhir(t, data)
    code = data.get("code") or METRIC_CODES.get(t.metric.lower())
    if not isinstance(code, str):
        raise ValidationError(f"no 'code' and metric {t.metric!r} is not a known alias "
                              f"({', '.join(sorted(METRIC_CODES))})", where="payload.code")
    if "time" not in data:
        raise ValidationError("no 'time'; send an ISO 8601 time with a zone", where="payload")
    time = parse_fhir_datetime(str(data["time"]), where="payload.time")
    value, unit = to_canonical(code, _number(data.get("value"), "payload.value"),
                               data.get("unit"), where="payload.unit")
    source = data.get("id")
    if not isinstance(source, str) or not source:
        source = "sha256-" + hashlib.sha256(topic.encode() + b"\x1f" + payload).hexdigest()[:32]
    elif not _FHIR_ID.match(source):  # any text a device sends: a stable, valid FHIR id
        source = "sha256-" + hashlib.sha256(source.encode()).hexdigest()[:32]
    return Observation(subject=t.patient, code=code, time=time, value=value, unit=unit,
                       source_id=f"{t.device}/{source}", device=t.device, category="vital-signs"
                       if code in METRIC_CODES.values() else None)


def _fhir(t: Topic, resource: dict[str, Any]) -> Observation:
    subject = (resource.get("subject") or {}).get("reference")
    if subject is None:
        resource = {**resource, "subject": {"reference": f"Patient/{t.patient}"}}
    elif subject.rsplit("/", 1)[-1] != t.patient:
        raise ValidationError(f"subject {subject!r} differs from the topic's patient "
                              f"{t.patient!r}", where="Observation.subject")
    try:
        parsed = parse_fhir(resource, source="mqtt")
    except FhirImportError as exc:
        raise ValidationError("; ".join(str(i) for i in exc.issues[:5]),
                              where="Observation") from exc
    (obs,) = parsed.records
    return obs  # type: ignore[return-value]
