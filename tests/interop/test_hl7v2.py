"""HL7 v2 parsing, checks, mapping and ACKs (no network: tests/live/test_mllp.py sends them)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from medtwin.interop.hl7v2 import (
    Location,
    MessageError,
    Problem,
    build_ack,
    parse_message,
    peek_header,
)
from medtwin.interop.hl7v2_map import patient_from_pid, results_from_oru, visit_from_pv1

# HL7 v2.4 chapter 7 ORU^R01 example (GHH LAB / Eve Everywoman), as reproduced in
# python-hl7's tests/samples.py (johnpaulett/python-hl7); birth date as the standard prints it.
ORU = ("MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.4\r"
       "PID|||555-44-4444||EVERYWOMAN^EVE^E^^^^L|JONES|19620320|F|||153 FERNWOOD DR.^^"
       "STATESVILLE^OH^35292||(206)3345232|(206)752-121||||AC555444444||67-A4335^OH^20030520\r"
       "OBR|1|845439^GHH OE|1045813^GHH LAB|15545^GLUCOSE|||200202150730|||||||||"
       "555-55-5555^PRIMARY^PATRICIA P^^^^MD^^|||||||||F||||||444-44-4444^HIPPOCRATES^"
       "HOWARD H^^^^MD\r"
       "OBX|1|SN|1554-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F\r")

SECRET = b"a pseudonym secret of the test key ring"


def test_standard_oru_parses_and_maps():
    parsed = parse_message(ORU.encode())
    h = parsed.header
    assert (h.message_type, h.event, h.control_id, h.version) == ("ORU", "R01", "CNTRL-3456",
                                                                   "2.4")
    patient = patient_from_pid(parsed.message, h, secret=SECRET)
    assert patient.gender == "female" and patient.birth_year == 1962
    assert patient.identity["name"] == [{"family": "EVERYWOMAN", "given": ["EVE", "E"],
                                         "use": "official"}]
    assert "mrn" not in patient.identity  # PID-3 names no MR identifier
    res = results_from_oru(parsed.message, h, patient.id, UTC)
    (obs,) = res.observations
    assert obs.source_id == f"Observation/{h.key}-4" and not res.problems


def test_times_without_offset_are_in_the_senders_zone():
    parsed = parse_message(ORU.encode())
    res = results_from_oru(parsed.message, parsed.header, "p", ZoneInfo("America/New_York"))
    assert res.observations[0].time == datetime(2002, 2, 15, 12, 30, tzinfo=UTC)  # EST +5
    with_offset = ORU.replace("|||200202150730|", "|||200202150730+0100|")
    parsed = parse_message(with_offset.encode())
    res = results_from_oru(parsed.message, parsed.header, "p", ZoneInfo("America/New_York"))
    assert res.observations[0].time == datetime(2002, 2, 15, 6, 30, tzinfo=UTC)


@pytest.mark.parametrize(("obx", "expect"), [
    ("OBX|1|SN|1554-5^GLUCOSE^LN||>^200|mg/dl||H|||F", {"value_text": ">200"}),
    ("OBX|1|CWE|882-1^ABO+Rh group^LN||A+^A Pos^SCT||||||F",
     {"value_code": "A+", "value_system": "http://snomed.info/sct"}),
    ("OBX|1|TX|8251-1^Comment^LN||first line~second line||||||F",
     {"value_text": "first line\nsecond line"}),
    ("OBX|1|NM|2345-7^Glucose^LN||||||||X", {"status": "cancelled", "value": None}),
])
def test_non_numeric_results_are_kept(obx, expect):
    parsed = parse_message(ORU.replace(ORU.split("\r")[3], obx).encode())
    res = results_from_oru(parsed.message, parsed.header, "p", UTC)
    assert not res.problems
    (obs,) = res.observations
    for k, v in expect.items():
        assert getattr(obs, k) == v


@pytest.mark.parametrize(("obx", "where", "named"), [
    ("OBX|1|ED|11502-2^Report^LN||^AP^PDF^Base64^JVBERi0=||||||F", "OBX^4^2", "ED"),
    ("OBX|1|NM|8867-4^Heart rate^LN||fast|/min|||||F", "OBX^4^5", "not a number"),
    ("OBX|1|NM|8310-5^Body temperature^LN||38|kg|||||F", "OBX^4^6", "kg"),
    ("OBX|1|NM|8867-4^Heart rate^LN||60|/min|||||Q", "OBX^4^11", "0085"),
    ("OBX|1|NM|8867-4^Heart rate^LN||60~70|/min|||||F", "OBX^4^5", "repeats"),
])
def test_results_that_cannot_be_kept_are_problems_with_a_location(obx, where, named):
    parsed = parse_message(ORU.replace(ORU.split("\r")[3], obx).encode())
    res = results_from_oru(parsed.message, parsed.header, "p", UTC)
    assert res.observations == []
    ((problem, raw),) = res.problems
    assert problem.where.erl() == where and named in problem.reason and raw == obx


def test_wrong_encoding_characters_and_field_separator_are_refused():
    for bad in (ORU.replace("|^~\\&|", "|^~|", 1), ORU.replace("|^~\\&|", "|^^\\&|", 1),
                "MSHA^~\\&A" + ORU[9:]):
        with pytest.raises(MessageError) as exc:
            parse_message(bad.encode())
        assert exc.value.ack == "AR" and exc.value.problem.where.segment == "MSH"


def test_visit_keys_do_not_carry_identifiers():
    a01 = ("MSH|^~\\&|ADT1|GHH|X|Y|200708181123||ADT^A01|M1|P|2.5.1\r"
           "PID|1||PATID1234^^^ADT1^MR||EVERYMAN^ADAM\r"
           "PV1|1|E|ED^^^GHH||||||||||||||||V1234^^^GHH^VN|||||||||||||||||||||||||"
           "200708181100|200708181500\r")
    parsed = parse_message(a01.encode())
    visit = visit_from_pv1(parsed.message, parsed.header, UTC, secret=SECRET)
    assert visit.klass == "EMER" and "V1234" not in (visit.key or "")
    assert visit.admitted == datetime(2007, 8, 18, 11, tzinfo=UTC)
    assert visit.discharged == datetime(2007, 8, 18, 15, tzinfo=UTC)
    again = visit_from_pv1(parse_message(a01.replace("|M1|", "|M2|").encode()).message,
                           parsed.header, UTC, secret=SECRET)
    assert again.key == visit.key  # the same visit number is the same encounter


def test_ack_of_an_old_version_uses_err_1_and_escapes_text():
    raw = peek_header(ORU.encode())
    ack = build_ack(raw, "AE", [Problem("value|with^delimiters", 102, Location("OBX", 4, 5))])
    lines = ack.split("\r")
    assert lines[0].startswith("MSH|^~\\&|GHH OE|BLDG4|GHH LAB|ELAB-3|")
    assert lines[1] == "MSA|AE|CNTRL-3456|value\\F\\with\\S\\delimiters"
    assert lines[2] == "ERR|OBX^4^5^102&Data type error&HL70357"  # v2.4: ERR-1 (ELD)
