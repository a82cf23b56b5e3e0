"""HL7 v2 messages: decode, parse (python-hl7), check the header, and build the ACK.

What arrives over MLLP is bytes. :func:`parse_message` decodes them in the character set
MSH-18 declares (none declared: UTF-8, a superset of the standard's ASCII default), lets
python-hl7 split segments, fields, repetitions and components, and checks what medtwin
relies on: the encoding characters (MSH-1, MSH-2), well-formed segment ids, a message type
medtwin handles (ADT A01/A02/A03/A04/A08, ORU R01), a control id (MSH-10), a supported
version (MSH-12) and processing id (MSH-11). A message that fails is refused with
:class:`MessageError`, which carries the acknowledgment code (``AR``: medtwin cannot take
this kind of message at all; ``AE``: this message's content is wrong) and the HL7 error code
of table 0357, so that :func:`build_ack` answers with MSA and ERR segments that say why.

Mapping the content to medtwin's records is :mod:`medtwin.interop.hl7v2_map`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

import hl7
from hl7.exceptions import HL7Exception

from medtwin.core.errors import ValidationError

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8",
                      "2.8.1", "2.8.2")
ADT_EVENTS = {"A01": "admit", "A02": "transfer", "A03": "discharge", "A04": "register",
              "A08": "update"}
HANDLED = {"ADT": set(ADT_EVENTS), "ORU": {"R01"}}
ACK_VERSION = "2.5.1"  # what an ACK says when the message's own version cannot be used

# MSH-18 (HL7 table 0211) -> Python codec. UTF-16/32 cannot travel in MLLP frames (their
# bytes contain the frame characters), so they are not here.
CHARSETS = {
    "": "utf-8", "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8",
    "8859/1": "iso8859-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3",
    "8859/4": "iso8859-4", "8859/5": "iso8859-5", "8859/6": "iso8859-6",
    "8859/7": "iso8859-7", "8859/8": "iso8859-8", "8859/9": "iso8859-9",
    "8859/15": "iso8859-15", "ISO IR6": "ascii", "ISO IR100": "iso8859-1",
    "ISO IR192": "utf-8", "GB 18030-2000": "gb18030", "KS X 1001": "euc-kr",
    "BIG-5": "big5", "ISO IR87": "iso2022_jp", "ISO IR13": "shift_jis",
}
# HL7 table 0357 (message error condition codes) that medtwin uses
SEGMENT_SEQUENCE, REQUIRED_MISSING, DATA_TYPE, TABLE_VALUE = 100, 101, 102, 103
UNSUPPORTED_TYPE, UNSUPPORTED_EVENT, UNSUPPORTED_PROCESSING = 200, 201, 202
UNSUPPORTED_VERSION, DUPLICATE_KEY, INTERNAL = 203, 205, 207
ERROR_TEXT = {
    SEGMENT_SEQUENCE: "Segment sequence error", REQUIRED_MISSING: "Required field missing",
    DATA_TYPE: "Data type error", TABLE_VALUE: "Table value not found",
    UNSUPPORTED_TYPE: "Unsupported message type", UNSUPPORTED_EVENT: "Unsupported event code",
    UNSUPPORTED_PROCESSING: "Unsupported processing id",
    UNSUPPORTED_VERSION: "Unsupported version id", DUPLICATE_KEY: "Duplicate key identifier",
    INTERNAL: "Application internal error",
}
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_NAMESPACE = uuid.UUID("7b0c6f0e-43a5-5a4e-9c55-6d6564747769")  # medtwin's HL7 v2 ids


@dataclass(frozen=True, slots=True)
class Location:
    """Where in a message a problem is (HL7 ERL: segment id, its sequence, field)."""

    segment: str = ""
    sequence: int = 1
    field: int = 0

    def erl(self) -> str:
        """``SEG^seq^field`` (ERR-2), empty when the whole message is meant."""
        if not self.segment:
            return ""
        return "^".join(str(p) for p in (self.segment, self.sequence, self.field) if p)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with (part of) a message, for an ERR segment and a dead letter."""

    reason: str
    code: int = INTERNAL
    where: Location = field(default_factory=Location)
    severity: str = "E"  # E error, W warning (table 0516)


class MessageError(ValidationError):
    """A message medtwin refuses: ``ack`` is ``AR`` (cannot take this kind of message) or
    ``AE`` (this message's content is wrong); ``problem`` says what and where."""

    def __init__(self, message: str, *, ack: str = "AE", code: int = INTERNAL,
                 where: Location | None = None) -> None:
        loc = where or Location()
        super().__init__(message, where=loc.erl().replace("^", "-") or "message")
        self.ack = ack
        self.problem = Problem(message, code, loc)


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH fields medtwin uses."""

    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    time: str
    message_type: str
    event: str
    control_id: str
    processing_id: str
    version: str
    charset: str = ""

    @property
    def key(self) -> str:
        """A stable id of this message: its sender and control id (MSH-3, MSH-4, MSH-10)."""
        return str(uuid.uuid5(_NAMESPACE, "|".join(
            (self.sending_app, self.sending_facility, self.control_id))))

    @property
    def source(self) -> str:
        """The dead letters' source for this message (no patient data in it)."""
        return f"hl7v2:{self.sending_facility or self.sending_app}:{self.control_id}"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A decoded, parsed and checked message."""

    message: hl7.Message
    header: Header
    text: str


def stable_id(secret: bytes, *parts: str) -> str:
    """A UUID keyed by ``secret`` (the key ring's pseudonym secret) from ``parts``: medtwin's
    ids for HL7 v2 patients and visits. The identifiers (MRN, visit number) never appear in
    an id, and without the secret an id cannot be recomputed from a guessed MRN (an unkeyed
    hash of a 7-digit MRN is reversed by trying them all)."""
    digest = hmac.new(secret, "\x1f".join(("hl7v2", *parts)).encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def get(seg: hl7.Segment | None, fld: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """The unescaped text at SEG-fld.rep.comp.sub, or ``""`` when absent."""
    if seg is None:
        return ""
    try:
        return str(seg.extract_field(1, fld, rep, comp, sub)).strip()
    except (IndexError, ValueError, TypeError):
        return ""


def repetitions(seg: hl7.Segment | None, fld: int) -> int:
    """How many repetitions field ``fld`` of ``seg`` has (0 when empty)."""
    if seg is None or fld >= len(seg):
        return 0
    value = seg(fld)
    if isinstance(value, str):
        return 1 if value else 0
    return sum(1 for r in value if str(r))


def _raw_msh(text: str) -> list[str]:
    """MSH split on its own field separator: enough to address an ACK to a message that
    python-hl7 cannot parse. Index i is MSH-i (MSH-1 is the separator itself)."""
    first = text.split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return []
    sep = first[3]
    return ["MSH", sep, *first[4:].split(sep)]


def peek_header(raw: bytes) -> list[str]:
    """The raw MSH fields of ``raw`` (latin-1, which never fails), for an ACK's address."""
    return _raw_msh(_normalise(raw.decode("iso8859-1")))


def _normalise(text: str) -> str:
    """Segments end in CR; tolerate CRLF and LF from senders that use them."""
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 ")


def decode(raw: bytes) -> str:
    """``raw`` as text in the character set MSH-18 names; :class:`MessageError` when the
    set is unknown or the bytes do not belong to it."""
    msh = peek_header(raw)
    declared = (msh[18].split("^")[0] if len(msh) > 18 else "").strip()
    codec = CHARSETS.get(declared.upper())
    if codec is None:
        raise MessageError(f"MSH-18 names the character set {declared!r}, which medtwin does "
                           f"not read; send one of {', '.join(k for k in CHARSETS if k)}",
                           ack="AR", code=TABLE_VALUE, where=Location("MSH", 1, 18))
    try:
        return _normalise(raw.decode(codec))
    except UnicodeDecodeError as exc:
        named = f"the declared {declared}" if declared else "UTF-8 (MSH-18 is empty)"
        raise MessageError(f"byte {exc.start} ({raw[exc.start:exc.start + 1]!r}) is not valid "
                           f"in {named}; declare the message's character set in MSH-18 "
                           "(e.g. 8859/1 or UNICODE UTF-8)", ack="AR", code=DATA_TYPE,
                           where=Location("MSH", 1, 18)) from None


def _check_encoding_characters(text: str) -> None:
    if not text.startswith("MSH"):
        raise MessageError(f"the message starts with {text[:3]!r}, not an MSH segment",
                           ack="AR", code=SEGMENT_SEQUENCE, where=Location("MSH", 1))
    sep = text[3:4]
    if not sep or sep.isalnum() or sep in " \r\t":
        raise MessageError(f"MSH-1 field separator {sep!r} is not a delimiter character; "
                           "use '|'", ack="AR", code=DATA_TYPE, where=Location("MSH", 1, 1))
    enc = text[4:].split(sep, 1)[0]
    chars = list(enc)
    bad = (len(chars) not in (4, 5) or len(set(chars)) != len(chars) or sep in chars
           or any(c.isalnum() or c.isspace() for c in chars))
    if bad:
        raise MessageError(f"MSH-2 encoding characters {enc!r} are not 4 distinct delimiters "
                           "(component, repetition, escape, subcomponent); use '^~\\&'",
                           ack="AR", code=DATA_TYPE, where=Location("MSH", 1, 2))


def parse_message(raw: bytes, *, processing_ids: tuple[str, ...] = ("P",)) -> Parsed:
    """Decode, parse and check one message (the bytes between MLLP's frame characters)."""
    text = decode(raw)
    if "\x00" in text:
        raise MessageError("the message contains a NUL character (U+0000)", ack="AR",
                           code=DATA_TYPE)
    _check_encoding_characters(text)
    try:
        message = hl7.parse(text)
    except (HL7Exception, ValueError, IndexError) as exc:
        raise MessageError(f"the message cannot be parsed: {exc}", ack="AR",
                           code=SEGMENT_SEQUENCE) from exc
    for n, seg in enumerate(message, 1):
        sid = str(seg[0]) if len(seg) else ""
        if not _SEGMENT_ID.fullmatch(sid):
            raise MessageError(f"segment {n} has the malformed id {sid[:20]!r} (three "
                               "capitals or digits, e.g. PID)", ack="AE",
                               code=SEGMENT_SEQUENCE, where=Location(sid[:3] or "?", n))
        if sid == "MSH" and n > 1:
            raise MessageError(f"segment {n} is a second MSH: send one message per frame",
                               ack="AR", code=SEGMENT_SEQUENCE, where=Location("MSH", n))
    header = _header(message.segment("MSH"))
    _check_header(header, processing_ids)
    return Parsed(message, header, text)


def _header(msh: hl7.Segment) -> Header:
    return Header(
        sending_app=get(msh, 3), sending_facility=get(msh, 4), receiving_app=get(msh, 5),
        receiving_facility=get(msh, 6), time=get(msh, 7), message_type=get(msh, 9),
        event=get(msh, 9, comp=2), control_id=get(msh, 10), processing_id=get(msh, 11),
        version=get(msh, 12), charset=get(msh, 18))


def _check_header(h: Header, processing_ids: tuple[str, ...]) -> None:
    if not h.control_id:
        raise MessageError("MSH-10 message control id is empty; every message needs one "
                           "(redelivery is recognised by it)", ack="AR",
                           code=REQUIRED_MISSING, where=Location("MSH", 1, 10))
    if h.version not in SUPPORTED_VERSIONS:
        raise MessageError(f"MSH-12 version {h.version!r} is not one medtwin reads; send "
                           f"one of {', '.join(SUPPORTED_VERSIONS)}", ack="AR",
                           code=UNSUPPORTED_VERSION, where=Location("MSH", 1, 12))
    if h.processing_id not in processing_ids:
        raise MessageError(f"MSH-11 processing id {h.processing_id!r} is not accepted here "
                           f"(this listener takes {', '.join(processing_ids)})", ack="AR",
                           code=UNSUPPORTED_PROCESSING, where=Location("MSH", 1, 11))
    if h.message_type not in HANDLED:
        raise MessageError(f"message type {h.message_type!r} is not handled; medtwin takes "
                           "ADT (A01, A02, A03, A04, A08) and ORU^R01", ack="AR",
                           code=UNSUPPORTED_TYPE, where=Location("MSH", 1, 9))
    if h.event not in HANDLED[h.message_type]:
        events = ", ".join(f"{h.message_type}^{e}" for e in sorted(HANDLED[h.message_type]))
        raise MessageError(f"event {h.message_type}^{h.event} is not handled; medtwin takes "
                           f"{events}",
                           ack="AR", code=UNSUPPORTED_EVENT, where=Location("MSH", 1, 9))


def parse_time(value: str, tz: tzinfo, *, where: Location) -> datetime:
    """An HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``) as an aware UTC datetime; a time
    without an offset is in ``tz`` (the sender's zone, configured on the listener)."""
    try:
        t = hl7.parse_datetime(value)
    except (ValueError, TypeError, OverflowError):
        t = None
    if t is None:
        raise MessageError(f"{value!r} is not an HL7 date/time (YYYYMMDDHHMM[SS][+ZZZZ])",
                           code=DATA_TYPE, where=where)
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz)
    try:
        return t.astimezone(UTC)
    except OverflowError:
        raise MessageError(f"{value!r} lies outside the calendar once converted to UTC",
                           code=DATA_TYPE, where=where) from None


_STANDARD = hl7.parse("MSH|^~\\&|\r")  # a container with the standard delimiters, to escape


def _esc(value: str) -> str:
    return _STANDARD.escape(value) if value else ""


def build_ack(raw_msh: list[str], code: str, problems: Sequence[Problem] = (), *,
              app: str = "MEDTWIN", now: datetime | None = None) -> str:
    """The original-mode ACK of a message whose raw MSH fields are ``raw_msh``: MSH, MSA
    (MSA-3 the first problem's reason) and one ERR per problem, always in the standard
    delimiters. Address fields are copied as sent when the message used those delimiters
    too, escaped otherwise."""
    standard = len(raw_msh) > 2 and raw_msh[2][:4] == "^~\\&"
    comp_sep = raw_msh[2][:1] if len(raw_msh) > 2 and raw_msh[2][:1] else "^"

    def msh(i: int, comp: int = 1) -> str:
        value = raw_msh[i] if len(raw_msh) > i else ""
        value = value.split(comp_sep)[comp - 1] if len(value.split(comp_sep)) >= comp else ""
        value = value.split("~")[0] if standard else value
        return value if standard else _esc(value)

    version = msh(12) if msh(12) in SUPPORTED_VERSIONS else ACK_VERSION
    charset = msh(18) if msh(18).upper() in CHARSETS else ""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S+0000")
    fields = ["MSH", "^~\\&", msh(5) or app, msh(6), msh(3), msh(4), stamp, "",
              f"ACK^{msh(9, 2)}^ACK", f"ACK{uuid.uuid4().hex[:16]}",
              msh(11) if msh(11) in ("P", "T", "D") else "P", version]
    if charset:
        fields += [""] * 5 + [charset]
    lines = ["|".join(fields),
             "|".join(["MSA", code, msh(10)] + ([_esc(problems[0].reason[:80])]
                                                if problems else []))]
    legacy = version in ("2.3", "2.3.1", "2.4")
    for p in problems:
        loc, label = p.where, _esc(ERROR_TEXT.get(p.code, ""))
        if legacy:  # ERR-1 (ELD): segment^sequence^field^code&text&table
            lines.append("ERR|" + "^".join([loc.segment, str(loc.sequence) if loc.segment
                                             else "", str(loc.field or ""),
                                             f"{p.code}&{label}&HL70357"]))
        else:  # ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 user message
            lines.append("|".join(["ERR", "", loc.erl(), f"{p.code}^{label}^HL70357",
                                   p.severity, "", "", "", _esc(p.reason)]))
    return "\r".join(lines) + "\r"
