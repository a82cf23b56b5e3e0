"""The patient page's cardio panel: shown for a cardiac diagnosis, runs the patient's own
cardio twin through the service's checks and audit (the API's service function), and draws
the forecast band with a what-if next to the current course."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from starlette.requests import Request

from medtwin.api.deps import build_services
from medtwin.api.settings import Settings
from medtwin.core.records import SNOMED, Condition, Patient
from medtwin.interop.fhir.read import parse_fhir
from medtwin.interop.fhir.synthetic import generate_patients
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore
from medtwin.twin.cardio_service import CARDIAC_CONDITIONS, CARDIO_RESOURCE, cardio_view
from medtwin.twin.service import TwinNotReadyError
from medtwin.ui import access, cardio, charts, session

FAST = {"horizon": 60.0, "draws": 8}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """A hypertensive and a T1D patient (dr.a's), and a hypertensive patient without
    readings."""
    store = EventStore.open(str(tmp_path_factory.mktemp("cardio") / "c.sqlite"),
                            keyring=KeyRing.generate())
    s = build_services(Settings(argon2_memory_kib=8, argon2_time_cost=1), store, store.keyring)
    ids = {}
    for kind, bundle in zip(("stable", "t1d"),
                            generate_patients(2, seed=7, days=1, kinds=["stable", "t1d"]),
                            strict=True):
        parsed = parse_fhir(bundle)
        store.append(parsed.patients, parsed.records)
        ids[kind] = parsed.patients[0].id
    store.append([Patient(id="bare", source_id="Patient/bare")],
                 [Condition(subject="bare", code="38341003", system=SNOMED,
                            source_id="Condition/bare",
                            display="Hypertensive disorder, systemic arterial (disorder)")])
    ids["bare"] = "bare"
    a = s.directory.add_user("dr.a", "clinician", "pw-a-123456")
    s.directory.add_user("dr.b", "clinician", "pw-b-123456")
    for pid in ids.values():
        s.directory.add_to_team("a", user_id=a.id, patient_id=pid)
    s.ids = ids
    yield s
    store.close()


def _who(svc, name: str, pw: str):
    req = Request({"type": "http", "method": "POST", "path": "/ui/login", "headers": [],
                   "client": ("127.0.0.1", 5000), "query_string": b""})
    return session.sign_in(svc, req, {}, name, pw)


def test_the_panel_is_for_patients_with_a_cardiac_diagnosis(svc):
    assert cardio.cardiac_diagnoses(svc.store, svc.ids["stable"]) == [
        "Hypertensive disorder, systemic arterial (disorder)"]
    assert cardio.cardiac_diagnoses(svc.store, svc.ids["t1d"]) == []
    assert "38341003" in CARDIAC_CONDITIONS and "49436004" in CARDIAC_CONDITIONS  # AF
    assert "84114007" in CARDIAC_CONDITIONS and "414545008" in CARDIAC_CONDITIONS


def test_the_cardio_panel_runs_the_patients_own_twin_checked_and_audited(svc):
    who = _who(svc, "dr.a", "pw-a-123456")
    pid = svc.ids["stable"]
    now = cardio.cardio_twin(svc, None, who, pid, **FAST)
    # the API's twin of this patient is the page's (one service function, one snapshot)
    api = cardio_view(svc.store, pid, **FAST)
    assert api.snapshot_version == now.snapshot_version
    assert api.forecast["mean"].tolist() == pytest.approx(now.forecast["mean"].tolist())
    rows = cardio.comparison_rows(now)
    assert rows[0]["measure"] == "blood pressure" and "Predict" in rows[0]["what-if"]
    text = cardio.status_text(now, ZoneInfo("UTC"))
    obs = now.observed
    assert f"BP {obs['SBP']:.0f}/{obs['DBP']:.0f} mmHg" in text and "Model smith2004" in text
    fig = charts.cardio_figure(now)
    traces = {t.name: t for t in fig.data}
    assert {"MAP current", "MAP current 90% band", "CO current", "HR current"} <= set(traces)
    assert "MAP what-if" not in traces
    part = now.forecast[now.forecast["output"] == "MAP"]
    assert list(traces["MAP current"].y) == pytest.approx(part["mean"].tolist())
    # a what-if: a vasodilator lowers the pressure, drawn next to the current course
    alt = cardio.cardio_twin(svc, None, who, pid, scenario="vasodilator", **FAST)
    fig = charts.cardio_figure(alt)
    traces = {t.name: list(t.y) for t in fig.data}
    assert traces["MAP what-if"][-1] < traces["MAP current"][-1] - 3
    assert all(lo <= m + 1e-9 for lo, m in zip(traces["MAP what-if 90% band"],
                                                traces["MAP what-if"], strict=True))
    rows = {r["measure"]: r for r in cardio.comparison_rows(alt)}
    assert rows["mean arterial pressure"]["what-if"] != rows["mean arterial pressure"]["current"]
    reads = [e for e in svc.audit.entries() if e.resource == CARDIO_RESOURCE]
    assert [(e.action, e.outcome, e.patient_id) for e in reads] == [("read", "success", pid)] * 2
    cardio.cardio_twin(svc, None, who, pid, audit=False, **FAST)
    assert len([e for e in svc.audit.entries() if e.resource == CARDIO_RESOURCE]) == 2


def test_others_are_refused_and_missing_data_is_said(svc):
    other = _who(svc, "dr.b", "pw-b-123456")
    with pytest.raises(access.UiDeniedError):
        cardio.cardio_twin(svc, None, other, svc.ids["stable"], **FAST)
    denied = [e for e in svc.audit.entries()
              if e.resource == CARDIO_RESOURCE and e.outcome == "denied"]
    assert [e.patient_id for e in denied] == [svc.ids["stable"]]
    who = _who(svc, "dr.a", "pw-a-123456")
    with pytest.raises(TwinNotReadyError, match="blood pressure"):
        cardio.cardio_twin(svc, None, who, "bare", **FAST)
    with pytest.raises(access.UiDeniedError, match="no patient"):
        cardio.cardio_twin(svc, None, who, "ghost", **FAST)
