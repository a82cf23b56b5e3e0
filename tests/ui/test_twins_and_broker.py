"""The demo's embedded MQTT 5 broker carries the live path; the patient page's twins (the
patient's own glucose and vancomycin twins, through the service's checks and audit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from starlette.requests import Request

from medtwin.api.deps import build_services
from medtwin.api.settings import Settings
from medtwin.core.errors import ValidationError
from medtwin.core.records import Patient
from medtwin.interop.fhir.read import parse_fhir
from medtwin.interop.fhir.synthetic import generate_patients
from medtwin.live.broker import EmbeddedBroker, topic_matches
from medtwin.live.ingest import Ingester
from medtwin.live.publish import DevicePublisher
from medtwin.live.streams import simulated_ward
from medtwin.live.sync import MonitorLoop
from medtwin.security.crypto import KeyRing
from medtwin.store.alerts import AlertStore
from medtwin.store.event_store import EventStore
from medtwin.twin.service import GLUCOSE_RESOURCE, TwinNotReadyError, glucose_view
from medtwin.ui import access, session, twins


def test_topic_filters():
    assert topic_matches("medtwin/+/+/+/+", "medtwin/w/p/d/hr")
    assert not topic_matches("medtwin/+/+/+/+", "medtwin/w/p/d")
    assert topic_matches("medtwin/#", "medtwin/alerts/w/p")
    assert not topic_matches("#", "$SYS/x") and not topic_matches("a/b", "a/c")


def test_embedded_broker_carries_qos1_mqtt5_ingestion_and_alerts(tmp_path):
    broker = EmbeddedBroker()
    url = broker.start()
    store = EventStore.open(str(tmp_path / "b.sqlite"))
    store.append([Patient(id=f"sim-{p:04d}", source_id=f"Patient/sim-{p:04d}")
                  for p in range(2)])
    monitor = MonitorLoop(store, broker=url).start()
    ingester = Ingester(store, broker=url, on_stored=monitor.on_stored).start()
    try:
        with DevicePublisher(broker=url) as pub:
            for batch in simulated_ward(2, start=datetime.now(UTC) - timedelta(minutes=5),
                                        interval=timedelta(seconds=30), steps=6,
                                        deteriorating=0.5, onset_steps=1):
                pub.publish(batch)
        assert ingester.wait_idle(quiet=0.5, timeout=20)
    finally:
        ingester.stop()
        monitor.stop()
        broker.stop()
    assert ingester.stats.stored == 2 * 5 * 6 and ingester.stats.dead_lettered == 0
    assert [a.patient_id for a in AlertStore(store).active()] == ["sim-0000"] * len(
        AlertStore(store).active()) and monitor.raised >= 1
    store.close()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """A service over a T1D patient and a vancomycin patient (dr.a's), and a bare patient."""
    store = EventStore.open(str(tmp_path_factory.mktemp("twins") / "t.sqlite"),
                            keyring=KeyRing.generate())
    s = build_services(Settings(argon2_memory_kib=8, argon2_time_cost=1), store, store.keyring)
    ids = {}
    for kind, bundle in zip(("t1d", "vancomycin"),
                            generate_patients(2, seed=5, days=1, kinds=["t1d", "vancomycin"]),
                            strict=True):
        parsed = parse_fhir(bundle)
        store.append(parsed.patients, parsed.records)
        ids[kind] = parsed.patients[0].id
    store.append([Patient(id="bare", source_id="Patient/bare")])
    ids["bare"] = "bare"
    a = s.directory.add_user("dr.a", "clinician", "pw-a-123456")
    s.directory.add_user("dr.b", "clinician", "pw-b-123456")
    s.directory.add_user("res", "researcher", "pw-r-123456")
    for pid in ids.values():
        s.directory.add_to_team("a", user_id=a.id, patient_id=pid)
    s.ids = ids
    yield s
    store.close()


def _who(svc, name: str, pw: str):
    req = Request({"type": "http", "method": "POST", "path": "/ui/login", "headers": [],
                   "client": ("127.0.0.1", 5000), "query_string": b""})
    return session.sign_in(svc, req, {}, name, pw)


def test_the_patient_page_what_if_runs_on_the_patients_own_twin_checked_and_audited(svc):
    who = _who(svc, "dr.a", "pw-a-123456")
    pid = svc.ids["t1d"]
    now = access.glucose_twin(svc, None, who, pid, horizon=180)
    plan = twins.glucose_plan([twins.PlanRow("meal", 0, 80)], None, now.twin_time)
    view = access.glucose_twin(svc, None, who, pid, horizon=180, plan=plan)
    assert view.twin_time == now.twin_time  # the same twin: nothing new was assimilated
    assert view.what_if_outlook.peak > view.outlook.peak + 20
    # the API's forecast of this patient is the page's (one service function)
    api = glucose_view(svc.store, pid, horizon=180)
    assert api.forecast["mean"].tolist() == pytest.approx(view.forecast["mean"].tolist())
    bolus = twins.glucose_plan([twins.PlanRow("bolus", 0, 4)], None, now.twin_time)
    lower = access.glucose_twin(svc, None, who, pid, horizon=180, plan=bolus)
    assert lower.what_if["mean"].iloc[-1] < lower.forecast["mean"].iloc[-1] - 10
    reads = [e for e in svc.audit.entries() if e.resource == GLUCOSE_RESOURCE]
    assert [(e.action, e.outcome, e.patient_id) for e in reads] == [("read", "success", pid)] * 3
    access.glucose_twin(svc, None, who, pid, audit=False)  # a live refresh of an open page
    assert len([e for e in svc.audit.entries() if e.resource == GLUCOSE_RESOURCE]) == 3
    for name, pw in (("dr.b", "pw-b-123456"), ("res", "pw-r-123456")):
        other = _who(svc, name, pw)
        with pytest.raises(access.UiDeniedError):
            access.glucose_twin(svc, None, other, pid)
        with pytest.raises(access.UiDeniedError):
            access.dose(svc, None, other, svc.ids["vancomycin"])
    denied = [e for e in svc.audit.entries() if e.outcome == "denied"]
    assert {e.resource for e in denied} == {GLUCOSE_RESOURCE, "dose"}
    with pytest.raises(TwinNotReadyError, match="no glucose reading"):  # the empty state
        access.glucose_twin(svc, None, who, "bare")
    with pytest.raises(access.UiDeniedError, match="no patient"):
        access.glucose_twin(svc, None, who, "ghost")


def test_the_vancomycin_what_if_compares_a_dose_change_with_the_current_regimen(svc):
    who = _who(svc, "dr.a", "pw-a-123456")
    pid = svc.ids["vancomycin"]
    cmp = access.dose(svc, None, who, pid)
    assert cmp.current is not None and cmp.what_if is None
    cur = cmp.current_regimen
    more = twins.regimen(cur.dose * 1.5, cur.interval, cur.infusion)
    cmp = access.dose(svc, None, who, pid, what_if=more)
    assert cmp.what_if.recommendation.median > cmp.current.recommendation.median * 1.3
    assert cmp.what_if.course["mode"].max() > cmp.current.course["mode"].max()
    assert len(cmp.what_if.course) == len(cmp.current.course)
    with pytest.raises(ValidationError, match="interval"):
        twins.regimen(1000, 0, 1)


def test_plan_rows_are_checked_and_placed_after_the_twins_time():
    t = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    plan = twins.glucose_plan([twins.PlanRow("meal", 30, 60), twins.PlanRow("bolus", 0, 3)],
                              1.2, t)
    assert plan.meals == ((t + timedelta(minutes=30), 60.0),)
    assert plan.boluses == ((t, 3.0),) and plan.basal == 1.2
    assert twins.glucose_plan([], None, t).empty
    for rows, basal, msg in (([twins.PlanRow("meal", None, 60)], None, "time .* is empty"),
                             ([twins.PlanRow("meal", 10, 900)], None, "carbohydrate"),
                             ([twins.PlanRow("bolus", 10, 80)], None, "insulin"),
                             ([], 11.0, "basal")):
        with pytest.raises(ValidationError, match=msg):
            twins.glucose_plan(rows, basal, t)
