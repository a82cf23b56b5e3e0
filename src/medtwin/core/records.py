"""Domain records: the only things that cross from interop/store into the twin.

Records are immutable, typed and validated when built. Times are timezone-aware UTC
``datetime`` objects; values are in the unit named beside them (UCUM), already normalised
at the interop boundary.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from medtwin.core.errors import ValidationError

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"


def utc(t: datetime, *, where: str = "time") -> datetime:
    """Return ``t`` as an aware UTC datetime; a naive time is refused (its zone is unknown)."""
    if not isinstance(t, datetime):
        raise ValidationError(f"expected a datetime, got {type(t).__name__}", where=where)
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValidationError(
            "time has no time zone; give an offset such as +00:00 or Z", where=where
        )
    try:
        return t.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00 lies before the first UTC instant
        raise ValidationError(f"time {t.isoformat()} is outside the calendar's range once "
                              "converted to UTC (years 1 to 9999)", where=where) from None


def _need_text(value: object, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("must be a non-empty string", where=where)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # a cache of dataclass field names


def _no_nul(record: object) -> None:
    """Refuse a NUL character in any text field: never clinical, and PostgreSQL cannot store
    one in a text column (it would fail the write far from the input that carried it)."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:
        names = _FIELD_NAMES[type(record)] = tuple(f.name for f in fields(record))  # type: ignore[arg-type]
    for name in names:
        value = getattr(record, name)
        if type(value) is str and "\x00" in value:
            raise ValidationError("text must not contain NUL (U+0000) characters",
                                  where=f"{type(record).__name__}.{name}")


def _finite(value: float | None, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not math.isfinite(float(value))):
        raise ValidationError(f"must be a finite number, got {value!r}", where=where)


class _Record:
    """Shared helpers: a stable content hash and a JSON-ready dict."""

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data (datetimes as ISO 8601 strings)."""
        return {f.name: _jsonable(getattr(self, f.name))
                for f in fields(self)}  # type: ignore[arg-type]

    def content_hash(self) -> str:
        """SHA-256 of the record's content: with the source id it forms the idempotency key."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns cls
        """Rebuild a record from :meth:`to_dict` output."""
        kwargs = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            v = data[f.name]
            if f.name in {"time", "end_time", "start", "end", "onset", "abatement"} and v:
                v = datetime.fromisoformat(v)
            elif f.name == "duration" and v is not None:
                v = timedelta(seconds=float(v))
            elif f.name == "components" and v:
                v = tuple(Component(**c) for c in v)
            kwargs[f.name] = v
        return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Component(_Record):
    """One part of a multi-part observation (e.g. the systolic pressure of a blood pressure)."""

    code: str
    value: float | None
    unit: str | None
    system: str = LOINC
    display: str | None = None

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.code, "Component.code")
        _finite(self.value, f"Component[{self.code}].value")


@dataclass(frozen=True, slots=True)
class Observation(_Record):
    """A measured or reported value about a subject at a time (FHIR Observation).

    A numeric value has ``value`` and ``unit``; a coded value (e.g. smoking status) has
    ``value_code``/``value_system``; a free-text value has ``value_text``. A panel such as a
    blood pressure keeps its parts in ``components``.
    """

    subject: str
    code: str
    time: datetime
    value: float | None
    unit: str | None
    source_id: str
    system: str = LOINC
    display: str | None = None
    components: tuple[Component, ...] = ()
    value_code: str | None = None
    value_system: str | None = None
    value_text: str | None = None
    status: str = "final"
    category: str | None = None
    encounter: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.subject, "Observation.subject")
        _need_text(self.code, "Observation.code")
        _need_text(self.source_id, "Observation.source_id")
        object.__setattr__(self, "time", utc(self.time, where=f"Observation[{self.code}].time"))
        _finite(self.value, f"Observation[{self.code}].value")
        if self.value is not None:
            object.__setattr__(self, "value", float(self.value))
        if not isinstance(self.components, tuple):
            object.__setattr__(self, "components", tuple(self.components))
        has_value = (
            self.value is not None
            or self.value_code is not None
            or self.value_text is not None
            or bool(self.components)
        )
        if not has_value and self.status not in {"cancelled", "entered-in-error", "registered"}:
            raise ValidationError(
                "has no value, coded value, text or components", where=f"Observation[{self.code}]"
            )


class InterventionKind(StrEnum):
    """What was done to the subject."""

    DRUG_DOSE = "drug_dose"
    INFUSION = "infusion"
    MEAL = "meal"
    INSULIN = "insulin"


@dataclass(frozen=True, slots=True)
class Intervention(_Record):
    """Something given to the subject: a drug dose, an infusion, a meal or insulin.

    ``amount`` is in ``unit``; an infusion (or a meal eaten over time) has a ``duration``.
    """

    subject: str
    kind: InterventionKind
    time: datetime
    amount: float
    unit: str
    source_id: str
    route: str | None = None
    duration: timedelta | None = None
    code: str | None = None
    system: str | None = None
    display: str | None = None

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.subject, "Intervention.subject")
        _need_text(self.source_id, "Intervention.source_id")
        try:
            object.__setattr__(self, "kind", InterventionKind(self.kind))
        except ValueError as exc:
            kinds = ", ".join(k.value for k in InterventionKind)
            raise ValidationError(
                f"unknown kind {self.kind!r}; use one of {kinds}", where="Intervention.kind"
            ) from exc
        object.__setattr__(self, "time", utc(self.time, where="Intervention.time"))
        _finite(self.amount, "Intervention.amount")
        if self.amount < 0:
            raise ValidationError(f"amount must be >= 0, got {self.amount}", where="Intervention")
        _need_text(self.unit, "Intervention.unit")
        if self.duration is not None and self.duration < timedelta(0):
            raise ValidationError("duration must be >= 0", where="Intervention.duration")


@dataclass(frozen=True, slots=True)
class Condition(_Record):
    """A diagnosis or problem (FHIR Condition)."""

    subject: str
    code: str
    system: str
    source_id: str
    display: str | None = None
    onset: datetime | None = None
    abatement: datetime | None = None
    clinical_status: str | None = None
    verification_status: str | None = None
    encounter: str | None = None

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.subject, "Condition.subject")
        _need_text(self.code, "Condition.code")
        for name in ("onset", "abatement"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, utc(v, where=f"Condition.{name}"))


@dataclass(frozen=True, slots=True)
class Encounter(_Record):
    """A contact with care: a visit, an admission, an emergency attendance (FHIR Encounter)."""

    subject: str
    source_id: str
    start: datetime | None
    end: datetime | None = None
    status: str = "finished"
    klass: str | None = None
    code: str | None = None
    system: str | None = None
    display: str | None = None

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.subject, "Encounter.subject")
        for name in ("start", "end"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, utc(v, where=f"Encounter.{name}"))
        if self.start and self.end and self.end < self.start:
            raise ValidationError("period.end is before period.start", where="Encounter.period")


@dataclass(frozen=True, slots=True)
class MedicationRequest(_Record):
    """A prescription or order for a medication (FHIR MedicationRequest)."""

    subject: str
    source_id: str
    time: datetime | None
    code: str | None
    system: str | None = None
    display: str | None = None
    status: str = "active"
    intent: str = "order"
    dosage_text: str | None = None
    dose: float | None = None
    dose_unit: str | None = None
    encounter: str | None = None

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.subject, "MedicationRequest.subject")
        if self.time is not None:
            object.__setattr__(self, "time", utc(self.time, where="MedicationRequest.authoredOn"))
        _finite(self.dose, "MedicationRequest.dose")


@dataclass(frozen=True, slots=True)
class Device(_Record):
    """A device bound to a subject (FHIR Device) or a metric a device reports (DeviceMetric)."""

    source_id: str
    subject: str | None
    kind: str = "device"
    code: str | None = None
    system: str | None = None
    display: str | None = None
    unit: str | None = None
    parent: str | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.source_id, "Device.source_id")


@dataclass(frozen=True, slots=True)
class Consent(_Record):
    """A patient's consent decision (FHIR Consent), e.g. to the research use of their data.

    ``scope`` is the Consent.scope code (``research``, ``patient-privacy``, ...);
    ``provision`` is ``permit`` or ``deny``; ``purposes`` are the provision's purpose codes
    (e.g. ``HRESCH``); ``start``/``end`` bound the period the provision applies to.
    """

    subject: str
    source_id: str
    status: str
    scope: str | None = None
    provision: str | None = None
    purposes: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    time: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.subject, "Consent.patient")
        _need_text(self.source_id, "Consent.source_id")
        for name in ("purposes", "categories"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        for name in ("time", "start", "end"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, utc(v, where=f"Consent.{name}"))

    def permits_research(self, at: datetime) -> bool:
        """Whether this consent, at time ``at``, permits research use of the patient's data."""
        research = self.scope == "research" or bool({"HRESCH", "CLINTRCH", "BIORCH"}
                                                     & set(self.purposes))
        in_period = (self.start is None or self.start <= at) and (self.end is None
                                                                  or at < self.end)
        return (self.status == "active" and research and self.provision != "deny"
                and in_period)


@dataclass(frozen=True, slots=True)
class Patient(_Record):
    """A subject's demographics.

    ``identity`` holds the identifying fields (name, birth date, address, telecom, MRN); the
    store keeps them in their own table, apart from clinical events, so encryption and
    de-identification work in one place.
    """

    id: str
    source_id: str
    gender: str | None = None
    birth_year: int | None = None
    deceased: bool = False
    identity: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _no_nul(self)
        _need_text(self.id, "Patient.id")


ClinicalRecord = (Observation | Intervention | Condition | Encounter | MedicationRequest | Device
                  | Consent)

KIND_OF: dict[type, str] = {
    Observation: "observation",
    Intervention: "intervention",
    Condition: "condition",
    Encounter: "encounter",
    MedicationRequest: "medication_request",
    Device: "device",
    Consent: "consent",
}
RECORD_OF_KIND: dict[str, type] = {v: k for k, v in KIND_OF.items()}
