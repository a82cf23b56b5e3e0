"""timeline_page reads each row's display out of the payload in the query (issue 16): the
same rows as the payload-decoding reader, on SQLite and PostgreSQL, for any display text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.errors import NotFoundError
from medtwin.core.records import Observation, Patient

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DISPLAYS = [None, "Heart rate", 'quote " and back\\slash', "unicode é ü 心拍 🫀", "null", "",
            "[1, 2]", "{\"a\": 1}", "tab\tnew\nline", "x" * 300]


def test_page_rows_equal_the_payload_reader(store):
    store.append([Patient(id="p", source_id="Patient/p")],
                 [Observation(subject="p", code="8867-4", display=d, value=60.5 + i,
                              unit="/min", time=T0 + timedelta(minutes=i),
                              source_id=f"Observation/o{i}") for i, d in enumerate(DISPLAYS)])
    store.append(records=[Observation(subject="p", code="8867-4", display="v2", value=1.0,
                                      unit="/min", time=T0, source_id="Observation/o0")],
                 may_amend=True)
    rows, more = store.timeline_page("p", limit=100)
    assert more is None
    assert rows == store.timeline_entries("p")
    assert [r["display"] for r in rows] == ["v2", *DISPLAYS[1:]]
    first, more = store.timeline_page("p", limit=3)
    rest, _ = store.timeline_page("p", limit=100, after=more)
    assert first + rest == rows


def test_unknown_patient_is_not_found(store):
    with pytest.raises(NotFoundError, match="nobody"):
        store.timeline_page("nobody")
