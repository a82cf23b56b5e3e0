"""Records as ``events`` rows: the canonical JSON payload, the content hash and the
idempotency key (the CPU part of a write, which an importer may run in worker processes),
and the batch and result types of :class:`~medtwin.store.event_store.EventStore` writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from medtwin.core.records import KIND_OF, ClinicalRecord, Component, Patient


@dataclass(frozen=True, slots=True)
class AppendResult:
    """How many records a write stored, and how many it skipped as already stored."""

    stored: int = 0
    duplicates: int = 0
    patients_added: int = 0
    refused: int = 0  # records refused as a change their writer may not make (dead letters)
    refusals: tuple[tuple[int, str], ...] = ()  # ... each as (index in the batch, why)

    def __add__(self, other: AppendResult) -> AppendResult:
        return AppendResult(self.stored + other.stored, self.duplicates + other.duplicates,
                            self.patients_added + other.patients_added,
                            self.refused + other.refused, self.refusals + other.refusals)


def idempotency_key(kind: str, source_id: str, content_hash: str) -> str:
    """SHA-256 over kind, source id and content hash: equal only for the same record."""
    return hashlib.sha256(f"{kind}\x1f{source_id}\x1f{content_hash}".encode()).hexdigest()


def prepare_rows(records: Iterable[ClinicalRecord],
                 quality: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """The ``events`` rows of ``records`` (keys, columns and the payload as canonical JSON
    text): the CPU part of a write, which an importer may do in worker processes before
    handing the rows to :meth:`EventStore.append`. ``quality`` gives each record's
    data-quality flag (None: trusted); a flagged row is kept but never used as "latest"
    nor scored. The flag is not part of the content hash: the record is the same record."""
    rows = [_record_row(r) for r in records]
    if quality is not None:
        if len(quality) != len(rows):
            raise ValueError(f"{len(quality)} quality flags for {len(rows)} records")
        for row, flag in zip(rows, quality, strict=True):
            row["quality"] = flag
    return rows


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _json_default(value: Any) -> Any:
    """What ``_Record.to_dict`` turns the non-JSON values of a record into."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Component):
        return {name: getattr(value, name) for name in _field_names(Component)}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_json_default).encode


def canonical_json(rec: ClinicalRecord) -> str:
    """The record's canonical JSON: ``json.dumps(rec.to_dict(), sort_keys=True,
    separators=(",", ":"))``, built without the intermediate dict walk (the encoder turns
    times, durations and components as ``to_dict`` does). Its SHA-256 is the record's
    content hash, and the text itself is the stored payload."""
    data = {name: getattr(rec, name) for name in _field_names(type(rec))}
    for name in ("time", "start", "end", "onset", "abatement"):
        value = data.get(name)
        if type(value) is datetime:
            data[name] = value.isoformat()
    return _ENCODE(data)


def _record_row(rec: ClinicalRecord) -> dict[str, Any]:
    kind = KIND_OF[type(rec)]
    text = canonical_json(rec)
    content = hashlib.sha256(text.encode()).hexdigest()
    time = getattr(rec, "time", None) or getattr(rec, "start", None) or getattr(rec, "onset",
                                                                                None)
    value = getattr(rec, "value", None) if kind == "observation" else getattr(
        rec, "amount", None)
    return {
        "idem_key": idempotency_key(kind, rec.source_id, content),
        "kind": kind,
        "patient_id": rec.subject or None,
        "source_id": rec.source_id,
        "code": getattr(rec, "code", None),
        "time": time,
        "value": None if value is None else float(value),
        "unit": getattr(rec, "unit", None),
        "payload": text,
        "quality": None,
    }


@dataclass(frozen=True, slots=True)
class Batch:
    """One unit of input for :meth:`EventStore.append_batches` (e.g. one imported file):
    patients, records (or their :func:`prepare_rows`), dead letters and, per record, its
    data-quality flag (``quality``; None for all trusted). ``resources``, when given,
    holds the FHIR resource of each record, in the records' order (one
    ``store.resources.ResourceWrite`` per record, made above the store, e.g. by
    ``interop.fhir.write.record_writes``): stored in the same transaction, so that a reading
    written as a typed record is visible to FHIR read and search too."""

    patients: Sequence[Patient] = ()
    records: Sequence[ClinicalRecord] = ()
    dead_letters: Sequence[tuple[str, str, str]] = ()
    rows: list[dict[str, Any]] | None = None
    quality: Sequence[str | None] | None = None
    resources: Sequence[Any] = ()
