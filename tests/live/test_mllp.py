"""HL7 v2 over MLLP: real messages over a real TCP socket to the listener, ACKs and store
contents checked (SQLite and PostgreSQL), redelivery, malformed input, truncated frames and a
clean stop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.yamlio import load_yaml
from medtwin.live.hl7_handler import Hl7Handler
from medtwin.live.mllp import MllpListener
from medtwin.ops.calibrate import encounters_frame
from medtwin.ops.forecast import census_from_store
from medtwin.ops.loader import parse_model
from medtwin.security.crypto import KeyRing

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"

# HL7 v2.5.1 chapter 3, section 3.5.1 (ADT^A01) example message, as reproduced in many public
# test suites (e.g. the hl7-message parser tests and LinuxForHealth's hl7v2-fhir-converter
# samples); the patient is the standard's fictitious Adam Everyman. Copied as data.
A01 = ("MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB, INC.|GOOD HEALTH HOSPITAL|198808181126|"
       "SECURITY|ADT^A01^ADT_A01|MSG00001|P|2.5.1|\r"
       "EVN|A01|200708181123||\r"
       "PID|1||PATID1234^5^M11^ADT1^MR^GOOD HEALTH HOSPITAL~123456789^^^USSSA^SS||"
       "EVERYMAN^ADAM^A^III||19610615|M||C|2222 HOME STREET^^GREENSBORO^NC^27401-1020|GL|"
       "(555) 555-2004|(555)555-2004||S||PATID12345001^2^M10^ADT1^AN^A|444333333|987654^NC|\r"
       "NK1|1|NUCLEAR^NELDA^W|SPO^SPOUSE||||NK^NEXT OF KIN\r"
       "PV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR||||ADM|A0|\r")
# The same visit transferred (A02: PV1-3 is the new location) and discharged (A03: PV1-45),
# built from the A01 above the way chapter 3's A02/A03 examples differ from it.
A02 = (A01.replace("ADT^A01^ADT_A01|MSG00001", "ADT^A02^ADT_A02|MSG00002")
       .replace("EVN|A01|200708181123", "EVN|A02|200708191500")
       .replace("PV1|1|I|2000^2012^01", "PV1|1|I|3000^3012^02"))
A03 = (A01.replace("ADT^A01^ADT_A01|MSG00001", "ADT^A03^ADT_A03|MSG00003")
       .replace("EVN|A01|200708181123", "EVN|A03|200708211000")
       .replace("PV1|1|I|2000^2012^01", "PV1|1|I|3000^3012^02")
       .replace("ADM|A0|", "ADM|A0|" + "|" * 28 + "|200708211000"))

# HL7 v2.4 chapter 7 ORU^R01 example (GHH LAB, patient Eve Everywoman), as reproduced in
# python-hl7's tests/samples.py (johnpaulett/python-hl7) and nHapi's samples; the birth date as
# the standard prints it (19620320). OBX-3 names no coding system, so the code is kept as sent.
ORU_GHH = ("MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.4\r"
           "PID|||555-44-4444||EVERYWOMAN^EVE^E^^^^L|JONES|19620320|F|||153 FERNWOOD DR.^^"
           "STATESVILLE^OH^35292||(206)3345232|(206)752-121||||AC555444444||67-A4335^OH^20030520\r"
           "OBR|1|845439^GHH OE|1045813^GHH LAB|15545^GLUCOSE|||200202150730|||||||||"
           "555-55-5555^PRIMARY^PATRICIA P^^^^MD^^|||||||||F||||||444-44-4444^HIPPOCRATES^"
           "HOWARD H^^^^MD\r"
           "OBX|1|SN|1554-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F\r")


def _oru(control: str, obx: list[str], *, pid: str | None = None) -> str:
    """An ORU^R01 of the GHH lab for Adam Everyman with the given OBX segments."""
    pid = pid if pid is not None else ("PID|1||PATID1234^5^M11^ADT1^MR^GOOD HEALTH HOSPITAL||"
                                       "EVERYMAN^ADAM^A^III||19610615|M\r")
    return (f"MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01^ORU_R01|{control}|P|"
            f"2.5.1\r{pid}OBR|1|845439^GHH OE|1045813^GHH LAB|24331-1^Lipid panel^LN|||"
            "200202150730\r" + "".join(s + "\r" for s in obx))


GLUCOSE_MMOL = "OBX|1|NM|15074-8^Glucose [Moles/volume] in Blood^LN||5.5|mmol/L|3.9-5.8|N|||F"
HEART_RATE = "OBX|2|NM|8867-4^Heart rate^LN||72|/min||N|||F|||200202150735"


def frame(text: str | bytes) -> bytes:
    return VT + (text.encode() if isinstance(text, str) else text) + FS + CR


class Client:
    """A plain TCP MLLP sender, as an interface engine would be."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ack(self, timeout: float = 10.0) -> str | None:
        """The next ACK's text, or None when the server closed the connection first."""
        self.sock.settimeout(timeout)
        while FS + CR not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        block, self.buf = self.buf.split(FS + CR, 1)
        assert block.startswith(VT)
        return block[1:].decode()

    def roundtrip(self, text: str | bytes) -> str:
        self.send(frame(text))
        ack = self.ack()
        assert ack is not None
        return ack

    def close(self) -> None:
        self.sock.close()


def msa(ack: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")


def errs(ack: str) -> list[list[str]]:
    return [s.split("|") for s in ack.split("\r") if s.startswith("ERR")]


@pytest.fixture
def store(store):
    """The shared store fixture with a key ring: HL7 v2 ids are keyed pseudonyms."""
    store.keyring = KeyRing.generate()
    return store


class Running:
    """A listener on a free port, serving in a background thread."""

    def __init__(self, store, **kw) -> None:
        self.handler = Hl7Handler(store, **{k: v for k, v in kw.items()
                                            if k in ("tz", "future_tolerance")})
        self.listener = MllpListener(self.handler.handle, port=0,
                                     **{k: v for k, v in kw.items()
                                        if k in ("frame_timeout", "max_messages")})
        started = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(
            self.listener.serve(on_started=lambda _p: started.set())), daemon=True)
        self.thread.start()
        assert started.wait(10), "listener did not start"
        self.port = self.listener.port

    def client(self) -> Client:
        return Client(self.port)

    def stop(self) -> None:
        self.listener.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "listener did not stop"


@pytest.fixture
def running(store) -> Iterator[Running]:
    r = Running(store)
    yield r
    r.stop()


WARD = """
name: ward
time_unit: minutes
resources: {beds: {capacity: 20}}
activities:
  stay: {resource: beds, duration: {dist: lognormal, mean: 600, variance: 90000}}
classes: {patient: {pathway: [stay]}}
arrivals: [{name: adm, rate_per_hour: 1, class: patient}]
census: {activity: stay, encounter_class: IMP}
"""


def test_admit_transfer_discharge_move_the_census(store, running):
    c = running.client()
    ack = c.roundtrip(A01)
    assert msa(ack)[1:3] == ["AA", "MSG00001"]
    assert ack.startswith("MSH|^~\\&|GHH LAB, INC.|GOOD HEALTH HOSPITAL|ADT1|GOOD HEALTH "
                          "HOSPITAL|") and "|ACK^A01^ACK|" in ack and "|P|2.5.1" in ack
    (pid,) = store.patients()["id"]
    patient = store.patient(pid)
    assert patient.gender == "male" and patient.birth_year == 1961
    assert patient.identity["mrn"] == "PATID1234"
    assert patient.identity["name"][0] == {"family": "EVERYMAN", "given": ["ADAM", "A"],
                                           "suffix": ["III"], "use": "official"}
    assert patient.identity["birth_date"] == "1961-06-15"
    assert "PATID1234" not in pid  # the identifier never becomes an id

    model = parse_model(load_yaml(WARD), "<ward>")
    admitted = datetime(2007, 8, 18, 11, 23, tzinfo=UTC)  # EVN-2: PV1-44 is empty
    census = census_from_store(store, model, at=admitted + timedelta(hours=1))
    assert census.patients == [pid]

    assert msa(c.roundtrip(A02))[1:3] == ["AA", "MSG00002"]
    (enc,) = store.timeline(pid, kinds=["encounter"])
    assert enc.display == "ward 3000, room 3012, bed 02" and enc.end is None
    assert enc.start == admitted and enc.klass == "IMP"

    assert msa(c.roundtrip(A03))[1:3] == ["AA", "MSG00003"]
    (enc,) = store.timeline(pid, kinds=["encounter"])
    discharged = datetime(2007, 8, 21, 10, tzinfo=UTC)
    assert (enc.start, enc.end, enc.status) == (admitted, discharged, "finished")
    versions = store.history(pid, "encounter", enc.source_id)
    assert [v["record"].display for v in versions] == [
        "ward 2000, room 2012, bed 01", "ward 3000, room 3012, bed 02",
        "ward 3000, room 3012, bed 02"]
    assert census_from_store(store, model, at=discharged + timedelta(hours=1)).patients == []
    assert census_from_store(store, model, at=discharged - timedelta(hours=1)).patients == [pid]
    frame_ = encounters_frame(store, "IMP")
    assert len(frame_) == 1 and frame_["end"].notna().all()

    # the A01 again (its ACK was lost): same ACK, and the discharge is not undone
    assert msa(c.roundtrip(A01))[1:3] == ["AA", "MSG00001"]
    assert store.timeline(pid, kinds=["encounter"])[0].end == discharged
    assert len(store.history(pid, "encounter", enc.source_id)) == 3
    c.close()


def test_results_are_stored_with_loinc_and_canonical_units(store, running):
    c = running.client()
    assert msa(c.roundtrip(_oru("LAB-1", [GLUCOSE_MMOL, HEART_RATE])))[1] == "AA"
    (pid,) = store.patients()["id"]
    obs = {o.code: o for o in store.timeline(pid, kinds=["observation"])}
    glucose = obs["15074-8"]
    assert glucose.system == "http://loinc.org" and glucose.unit == "mg/dL"
    assert glucose.value == pytest.approx(5.5 * 18.0156, rel=1e-4)  # mmol/L -> mg/dL
    assert glucose.time == datetime(2002, 2, 15, 7, 30, tzinfo=UTC)  # OBR-7
    assert obs["8867-4"].time == datetime(2002, 2, 15, 7, 35, tzinfo=UTC)  # OBX-14
    assert obs["8867-4"].value == 72 and obs["8867-4"].status == "final"

    # the standard's own example: SN value, OBX-3 without a coding system (not LOINC)
    assert msa(c.roundtrip(ORU_GHH))[1:3] == ["AA", "CNTRL-3456"]
    eve = next(p for p in store.patients()["id"] if p != pid)
    (o,) = store.timeline(eve, kinds=["observation"])
    assert (o.code, o.value, o.unit, o.display) == ("1554-5", 182.0, "mg/dl", "GLUCOSE")
    assert o.system == "urn:medtwin:hl7v2:local"
    assert store.patient(eve).identity["birth_date"] == "1962-03-20"
    c.close()


def test_implausible_value_is_refused_with_the_reason_and_the_rest_stored(store, running):
    c = running.client()
    bad_hr = "OBX|2|NM|8867-4^Heart rate^LN||720|/min||H|||F"
    text = "OBX|3|ST|8251-1^Service comment^LN||haemolysed sample||||||F"
    ack = c.roundtrip(_oru("LAB-2", [GLUCOSE_MMOL, bad_hr, text]))
    assert msa(ack)[1:3] == ["AE", "LAB-2"] and "plausible" in msa(ack)[3]
    (err,) = errs(ack)
    assert err[2] == "OBX^5^5" and err[3].startswith("102^") and err[4] == "E"
    assert "720" in err[8] and "plausible range" in err[8]
    (pid,) = store.patients()["id"]
    stored = {o.code: o for o in store.timeline(pid, kinds=["observation"])}
    assert set(stored) == {"15074-8", "8251-1"}
    assert stored["8251-1"].value_text == "haemolysed sample"
    letters = store.dead_letters()
    (row,) = letters.itertuples()
    assert row.source == "hl7v2:ELAB-3:LAB-2" and "OBX^5^5" in row.reason
    assert "OBX|2|NM|8867-4^Heart rate^LN||720" in row.payload  # the raw message is kept
    c.close()


def test_future_dated_result_is_stored_quarantined(store, running):
    c = running.client()
    later = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y%m%d%H%M%S+0000")
    ack = c.roundtrip(_oru("LAB-3", [f"OBX|1|NM|8867-4^Heart rate^LN||80|/min||N|||F|||{later}"]))
    assert msa(ack)[1] == "AA"
    (pid,) = store.patients()["id"]
    assert store.timeline(pid, kinds=["observation"]) == []  # never used nor scored
    (row,) = store.timeline_entries(pid, kinds=["observation"])
    assert row["quality"] == "future-dated" and row["value"] == 80
    c.close()


def test_redelivery_stores_nothing_twice_even_after_a_restart(store):
    first = Running(store)
    c = first.client()
    message = _oru("LAB-4", [GLUCOSE_MMOL, HEART_RATE])
    assert msa(c.roundtrip(message))[1] == "AA"
    assert msa(c.roundtrip(message))[1] == "AA"
    c.close()
    first.stop()
    assert first.handler.stats.redelivered == 1
    again = Running(store)  # a new process: no memory of control ids, the store decides
    c = again.client()
    assert msa(c.roundtrip(message))[1] == "AA"
    assert again.handler.stats.stored == 0 and again.handler.stats.duplicates == 2
    c.close()
    again.stop()
    assert store.counts() == {"observation": 2}
    assert store.dead_letters().empty


def test_a_reused_control_id_with_other_content_is_refused(store):
    first = Running(store)
    c = first.client()
    assert msa(c.roundtrip(_oru("LAB-5", [GLUCOSE_MMOL])))[1] == "AA"
    changed = _oru("LAB-5", [GLUCOSE_MMOL.replace("||5.5|", "||9.9|")])
    ack = c.roundtrip(changed)  # same process: recognised by the control id
    assert msa(ack)[1] == "AE" and errs(ack)[0][3].startswith("205^")
    c.close()
    first.stop()
    again = Running(store)  # after a restart: the store refuses to overwrite the result
    c = again.client()
    ack = c.roundtrip(changed)
    assert msa(ack)[1] == "AE" and errs(ack)[0][3].startswith("205^")
    c.close()
    again.stop()
    (pid,) = store.patients()["id"]
    (o,) = store.timeline(pid, kinds=["observation"])
    assert o.value == pytest.approx(5.5 * 18.0156, rel=1e-4)


BAD = [  # (message, ack code, HL7 error code, what the reason names)
    (A01.replace("|^~\\&|", "|^~^&|", 1), "AR", "102", "MSH-2"),
    (A01.replace("ADT^A01^ADT_A01", "ORM^O01^ORM_O01"), "AR", "200", "ORM"),
    (A01.replace("ADT^A01^ADT_A01", "ADT^A17^ADT_A17"), "AR", "201", "A17"),
    (A01.replace("|P|2.5.1|", "|P|3.0|"), "AR", "203", "3.0"),
    (A01.replace("|P|2.5.1|", "|P|2.5.1||||||UTF-7"), "AR", "103", "UTF-7"),
    (A01.replace("MSG00001", ""), "AR", "101", "MSH-10"),
    (A01.replace("PID|1||", "pid|1||"), "AE", "100", "malformed id"),
    ("\r".join(s for s in A01.split("\r") if not s.startswith("PID")), "AE", "101", "PID"),
    (A01.replace("|19610615|M|", "|19613515|M|"), "AE", "102", "PID-7"),
    (A01.replace("PV1|1|I|", "PV1|1|Z|"), "AE", "103", "PV1-2"),
]


@pytest.mark.parametrize(("message", "code", "error", "named"), BAD,
                         ids=["encoding-chars", "unknown-type", "unknown-event", "version",
                              "charset", "no-control-id", "bad-segment", "no-pid",
                              "bad-birth-date", "bad-class"])
def test_bad_messages_are_answered_with_the_reason_and_dead_lettered(store, running, message,
                                                                      code, error, named):
    c = running.client()
    ack = c.roundtrip(message)
    assert msa(ack)[1] == code
    (err,) = errs(ack)
    assert err[3].startswith(f"{error}^") and named in err[8]
    assert store.patients().empty and store.counts() == {}
    (row,) = store.dead_letters().itertuples()
    assert row.reason.startswith(code) and named in row.reason
    assert row.payload == message  # the raw message, as sent
    assert msa(c.roundtrip(A01.replace("MSG00001", "MSG-OK")))[1] == "AA"  # the link works on
    c.close()


def test_character_sets_are_read_as_declared(store, running):
    c = running.client()
    latin = (A01.replace("|P|2.5.1|", "|P|2.5.1||||||8859/1")
             .replace("EVERYMAN^ADAM", "MÜLLER^JÖRG")).encode("iso8859-1")
    ack = c.roundtrip(latin)
    assert msa(ack)[1] == "AA" and "|8859/1" in ack.split("\r")[0]
    (pid,) = store.patients()["id"]
    assert store.patient(pid).identity["name"][0]["family"] == "MÜLLER"
    undeclared = A01.replace("MSG00001", "MSG-L1").replace("EVERYMAN^ADAM", "MÜLLER^JÖRG"
                                                           ).encode("iso8859-1")
    ack = c.roundtrip(undeclared)  # not UTF-8 and no MSH-18: refused, not garbled
    assert msa(ack)[1] == "AR" and "MSH-18" in errs(ack)[0][8]
    c.close()


def test_truncated_frame_gets_no_ack_and_stores_nothing(store):
    r = Running(store, frame_timeout=0.5)
    c = r.client()
    c.send(VT + A01.encode()[:200])  # no <FS><CR>: the sender died mid-frame
    t0 = time.monotonic()
    assert c.ack(timeout=10) is None  # the listener closed the link without an ACK
    assert 0.4 < time.monotonic() - t0 < 5
    c.close()
    assert store.patients().empty and store.dead_letters().empty
    c = r.client()  # a new connection works; bytes before <VT> are not a message
    c.send(b"garbage" + frame(A01))
    assert msa(c.ack())[1] == "AA"
    c.close()
    r.stop()


def test_stop_is_clean_with_an_idle_connection_open(store):
    r = Running(store)
    c = r.client()
    assert msa(c.roundtrip(A01))[1] == "AA"
    t0 = time.monotonic()
    r.stop()  # what SIGINT/SIGTERM do in `medtwin hl7 listen`
    assert time.monotonic() - t0 < 5
    assert c.ack(timeout=5) is None  # the idle connection was closed
    with pytest.raises(OSError):
        Client(r.port)
    assert len(store.patients()) == 1


def test_identity_is_sealed_at_rest(tmp_path):
    import json

    from sqlalchemy import select

    from medtwin.store import schema as t
    from medtwin.store.event_store import EventStore

    with EventStore.open(tmp_path / "sealed.sqlite", keyring=KeyRing.generate()) as store:
        r = Running(store)
        c = r.client()
        assert msa(c.roundtrip(A01))[1] == "AA"
        c.close()
        r.stop()
        with store.engine.connect() as conn:
            rows = conn.execute(select(t.patient_identity.c.data)).scalars().all()
        assert len(rows) == 1 and set(rows[0]) == {"enc"}
        assert "EVERYMAN" not in json.dumps(rows) and "PATID1234" not in json.dumps(rows)
        (pid,) = store.patients()["id"]
        assert store.patient(pid).identity["mrn"] == "PATID1234"
