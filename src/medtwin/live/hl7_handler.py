"""One HL7 v2 message in, its records in the store, its ACK out.

:meth:`Hl7Handler.handle` takes the bytes of one MLLP frame and returns the ACK to send; it
answers ``AA`` only after the store's ``append`` has returned (the write is committed).

- ADT A01/A02/A03/A04/A08: the Patient (PID) and the visit's Encounter (PV1). The EHR's ADT
  feed is authoritative, so a later message about the same visit (PV1-19 visit number, else
  PID-18 account number) is a new version of the same Encounter (``may_amend=True``): a
  transfer moves its ward, a discharge sets its end. What a message leaves out is kept from
  the stored version, so a discharge without an admit time keeps the admission's.
- ORU^R01: one Observation per OBX (see :mod:`medtwin.interop.hl7v2_map`); an OBX that
  cannot be kept is dead-lettered with the whole message and the reason, the others are
  stored, and the ACK is ``AE`` with one ERR per refused OBX.
- A message that cannot be taken at all gets ``AR`` (unknown type, version, character set,
  encoding characters) or ``AE`` (missing PID, bad field), and goes to the dead letters with
  its raw text. Nothing of it is stored.
- Redelivery: results' source ids come from the sender, its control id (MSH-10) and the
  segment's position, and the store's idempotency keys skip what is stored already; the
  handler also remembers recent control ids, so the same message again gets the same ACK
  without being applied twice, and a control id reused for other content is refused.
- The store unreachable: ``AR`` with "resend", nothing remembered, so a redelivery is
  processed afresh.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, timedelta, tzinfo

from medtwin.core.errors import ConflictError, NotFoundError, StoreError, ValidationError
from medtwin.core.records import Encounter, Patient
from medtwin.interop.fhir.write import record_writes
from medtwin.interop.hl7v2 import (
    CHARSETS,
    DUPLICATE_KEY,
    INTERNAL,
    REQUIRED_MISSING,
    Location,
    MessageError,
    Parsed,
    Problem,
    build_ack,
    parse_message,
    peek_header,
    stable_id,
)
from medtwin.interop.hl7v2_map import (
    event_time,
    patient_from_pid,
    results_from_oru,
    visit_from_pv1,
)
from medtwin.interop.quality import FUTURE_TOLERANCE
from medtwin.store.event_store import EventStore

log = logging.getLogger(__name__)

RECENT_MESSAGES = 50_000  # control ids remembered to answer a redelivery at once


@dataclass(frozen=True, slots=True)
class Reply:
    """What became of one message: its ACK (bytes to frame) and counts."""

    ack: bytes
    code: str
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    redelivered: bool = False


@dataclass
class Hl7Stats:
    """Running counts of one listener."""

    received: int = 0
    accepted: int = 0
    errors: int = 0
    rejected: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    redelivered: int = 0


@dataclass
class Hl7Handler:
    """Applies HL7 v2 messages to ``store``. ``tz`` is the zone of times sent without an
    offset; ``processing_ids`` the MSH-11 values accepted (production only by default)."""

    store: EventStore
    tz: tzinfo = UTC
    processing_ids: tuple[str, ...] = ("P",)
    future_tolerance: timedelta = FUTURE_TOLERANCE
    app: str = "MEDTWIN"
    stats: Hl7Stats = field(default_factory=Hl7Stats)

    def __post_init__(self) -> None:
        self._recent: OrderedDict[str, tuple[str, Reply]] = OrderedDict()
        keyring = self.store.keyring
        secret = getattr(keyring, "pseudonym_secret", None)
        if not isinstance(secret, bytes):
            raise ValidationError("HL7 v2 needs the store's key ring: patient and visit ids "
                                  "are keyed pseudonyms of the identifiers (open the store "
                                  "with MEDTWIN_KEY_FILE, or `medtwin keys generate`)",
                                  where="store")
        self._secret = secret

    # --- one message -------------------------------------------------------------------
    def handle(self, raw: bytes) -> Reply:
        """Process one message (the bytes inside an MLLP frame) and return its ACK."""
        self.stats.received += 1
        raw_msh = peek_header(raw)
        try:
            parsed = parse_message(raw, processing_ids=self.processing_ids)
        except MessageError as exc:
            return self._count(self._refuse(raw, raw_msh, exc.ack, [exc.problem]))
        h = parsed.header
        digest = hashlib.sha256(parsed.text.encode()).hexdigest()
        seen = self._recent.get(h.key)
        if seen is not None:
            self._recent.move_to_end(h.key)
            if seen[0] == digest:
                self.stats.redelivered += 1
                log.info("%s^%s %s again: answered %s, nothing applied twice",
                         h.message_type, h.event, h.control_id, seen[1].code)
                return Reply(seen[1].ack, seen[1].code, duplicates=seen[1].stored,
                             redelivered=True)
            problem = Problem(f"MSH-10 control id {h.control_id!r} from this sender was "
                              "already used for a different message; give every message "
                              "its own control id", DUPLICATE_KEY, Location("MSH", 1, 10))
            return self._count(self._refuse(raw, raw_msh, "AE", [problem]))
        try:
            reply = self._adt(parsed, raw_msh) if h.message_type == "ADT" else \
                self._oru(parsed, raw_msh)
        except MessageError as exc:
            reply = self._refuse(raw, raw_msh, exc.ack, [exc.problem])
        except StoreError as exc:
            log.error("store write failed for %s: %s", h.control_id, exc)
            return self._count(self._ack(raw_msh, "AR", [Problem(
                "the store is unavailable; nothing was stored, resend the message", INTERNAL)]))
        self._remember(h.key, digest, reply)
        log.info("%s^%s %s -> %s (stored %d, duplicates %d, dead letters %d)",
                 h.message_type, h.event, h.control_id, reply.code, reply.stored,
                 reply.duplicates, reply.dead_lettered)
        return self._count(reply)

    def _remember(self, key: str, digest: str, reply: Reply) -> None:
        self._recent[key] = (digest, reply)
        if len(self._recent) > RECENT_MESSAGES:
            self._recent.popitem(last=False)

    def _count(self, reply: Reply) -> Reply:
        s = self.stats
        s.accepted += reply.code == "AA"
        s.errors += reply.code == "AE"
        s.rejected += reply.code == "AR"
        s.stored += reply.stored
        s.duplicates += reply.duplicates
        s.dead_lettered += reply.dead_lettered
        return reply

    # --- ACKs and dead letters ---------------------------------------------------------
    def _ack(self, raw_msh: list[str], code: str, problems: list[Problem] = (),  # type: ignore[assignment]
             **counts: int) -> Reply:
        text = build_ack(raw_msh, code, list(problems), app=self.app)
        declared = raw_msh[18].split("^")[0].strip().upper() if len(raw_msh) > 18 else ""
        codec = CHARSETS.get(declared, "utf-8")
        return Reply(text.encode(codec, "replace"), code, **counts)

    def _refuse(self, raw: bytes, raw_msh: list[str], code: str,
                problems: list[Problem]) -> Reply:
        """Dead-letter the whole message with the reasons, and answer ``code``."""
        source = _source(raw_msh)
        reason = "; ".join(f"{p.where.erl() or 'message'}: {p.reason}" for p in problems)
        try:
            self.store.append(dead_letters=[(source, f"{code}: {reason}", _raw_text(raw))])
        except StoreError as exc:
            log.error("dead letter for %s not written: %s", source, exc)
            return self._ack(raw_msh, "AR", [Problem(
                "the store is unavailable; nothing was stored, resend the message", INTERNAL)])
        log.warning("%s refused with %s: %s", source, code, reason)
        return self._ack(raw_msh, code, problems, dead_lettered=1)

    # --- ADT ---------------------------------------------------------------------------
    def _adt(self, parsed: Parsed, raw_msh: list[str]) -> Reply:
        m, h = parsed.message, parsed.header
        patient = patient_from_pid(m, h, secret=self._secret)
        visit = visit_from_pv1(m, h, self.tz, secret=self._secret)
        when = event_time(m, h, self.tz)
        key = visit.key or (stable_id(self._secret, "visit", h.key)
                            if h.event in ("A01", "A04") else None)
        if key is None:
            raise MessageError(f"ADT^{h.event} names no visit: PV1-19 visit number and PID-18 "
                               "account number are both empty", code=REQUIRED_MISSING,
                               where=Location("PV1", 1, 19))
        source_id = f"Encounter/{key}"
        prior = self._current(patient.id, source_id)
        start = visit.admitted or (prior.start if prior else None) or \
            (when if h.event != "A03" else None)
        end = visit.discharged or (when if h.event == "A03" else None) or \
            (prior.end if prior else None)
        try:
            encounter = Encounter(
                subject=patient.id, source_id=source_id, start=start, end=end,
                status="finished" if end else "in-progress",
                klass=visit.klass or (prior.klass if prior else None),
                display=visit.location or (prior.display if prior else None))
        except ValidationError as exc:
            raise MessageError(f"{exc.message} (admit {start}, discharge {end})",
                               where=Location("PV1", 1, 45)) from exc
        warnings = self._demographics(patient)
        try:
            result = self.store.append([patient], [encounter], may_amend=True,
                                       resources=record_writes([encounter]))
        except ConflictError as exc:
            raise MessageError(f"{exc}; the visit number belongs to another patient",
                               code=DUPLICATE_KEY, where=Location("PV1", 1, 19)) from exc
        return self._ack(raw_msh, "AA", warnings, stored=result.stored,
                         duplicates=result.duplicates)

    def _current(self, patient_id: str, source_id: str) -> Encounter | None:
        """The latest stored version of an encounter, if any."""
        try:
            versions = self.store.history(patient_id, "encounter", source_id)
        except NotFoundError:
            return None
        return versions[-1]["record"] if versions else None

    def _demographics(self, patient: Patient) -> list[Problem]:
        """A warning when PID differs from the stored registration (kept as first stored)."""
        if not self.store.has_patient(patient.id):
            return []
        try:
            stored = self.store.patient(patient.id)
        except StoreError:  # identities sealed and no key: cannot compare, nothing to say
            return []
        if (stored.identity, stored.gender, stored.birth_year) == (
                patient.identity, patient.gender, patient.birth_year):
            return []
        return [Problem("PID demographics differ from the stored registration; medtwin keeps "
                        "the first registration of a patient", INTERNAL, Location("PID", 1),
                        severity="W")]

    # --- ORU ---------------------------------------------------------------------------
    def _oru(self, parsed: Parsed, raw_msh: list[str]) -> Reply:
        m, h = parsed.message, parsed.header
        patient = patient_from_pid(m, h, secret=self._secret)
        encounter = None
        if _has(m, "PV1"):
            visit = visit_from_pv1(m, h, self.tz, secret=self._secret)
            if visit.key and self._current(patient.id, f"Encounter/{visit.key}"):
                encounter = visit.key
        res = results_from_oru(m, h, patient.id, self.tz, encounter=encounter,
                               tolerance=self.future_tolerance)
        problems = [p for p, _ in res.problems]
        letters = []
        if problems:
            reason = "; ".join(f"{p.where.erl()}: {p.reason}" for p in problems)
            letters.append((h.source, f"AE: {reason}", _raw_text(parsed.text.encode())))
        result = self.store.append([patient], res.observations, dead_letters=letters,
                                   quality=res.quality, may_amend=False,
                                   on_conflict="dead-letter",
                                   resources=record_writes(res.observations, res.quality))
        for i, _why in result.refusals:
            n = int(res.observations[i].source_id.rsplit("-", 1)[1])
            problems.append(Problem(
                f"OBX {n} differs from the result stored under control id {h.control_id!r}; "
                "a stored result is never overwritten (send a correction with its own "
                "control id)", DUPLICATE_KEY, Location("OBX", n)))
        code = "AE" if problems else "AA"
        return self._ack(raw_msh, code, problems, stored=result.stored,
                         duplicates=result.duplicates,
                         dead_lettered=len(letters) + result.refused)


def _has(message: object, sid: str) -> bool:
    return any(str(seg[0]) == sid for seg in message)  # type: ignore[attr-defined]


def _source(raw_msh: list[str]) -> str:
    """``hl7v2:<facility>:<control id>`` from the raw MSH (no patient data)."""
    def f(i: int) -> str:
        return raw_msh[i][:60] if len(raw_msh) > i else ""
    return f"hl7v2:{f(4) or f(3) or 'unknown'}:{f(10) or 'no-control-id'}"


def _raw_text(raw: bytes) -> str:
    """The message as text for the dead letters: undecodable bytes and NUL kept visible."""
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
