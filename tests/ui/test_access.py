"""The dashboard's data layer: the service's policy and audit apply, as through the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from starlette.requests import Request

from medtwin.api.deps import build_services
from medtwin.api.settings import Settings
from medtwin.core.records import Observation, Patient
from medtwin.security.crypto import KeyRing
from medtwin.store.alerts import AlertStore
from medtwin.store.event_store import EventStore
from medtwin.ui import access, session

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
VITALS = {"8867-4": ("/min", 128), "9279-1": ("/min", 26), "59408-5": ("%", 90),
          "8480-6": ("mm[Hg]", 88), "8310-5": ("Cel", 39.4)}


def _request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/ui/login", "headers": [],
                    "client": ("127.0.0.1", 5000), "query_string": b""})


@pytest.fixture
def svc(tmp_path):
    store = EventStore.open(str(tmp_path / "ui.sqlite"), keyring=KeyRing.generate())
    settings = Settings(argon2_memory_kib=8, argon2_time_cost=1)
    s = build_services(settings, store, store.keyring)
    pats = [Patient(id=p, source_id=f"Patient/{p}", identity={"name": [{"text": f"Name {p}"}],
                                                                "mrn": f"MRN-{p}"})
            for p in ("p1", "p2", "p3")]
    store.append(pats)
    sick = [Observation("p1", code, T0, value, unit, f"o-{code}")
            for code, (unit, value) in VITALS.items()]
    well = [Observation("p2", "8867-4", T0, 72.0, "/min", "o-hr2")]
    store.append(records=sick + well)
    north = s.directory.add_user("dr.north", "clinician", "pw-north-123")
    s.directory.add_user("admin", "admin", "pw-admin-123")
    s.directory.add_to_team("north", user_id=north.id, patient_id="p1")
    s.directory.add_to_team("north", patient_id="p2")
    s.directory.add_to_team("south", patient_id="p3")
    yield s
    store.close()


def test_clinician_sees_only_their_care_team_sickest_first(svc):
    storage: dict = {}
    who = session.sign_in(svc, _request(), storage, "dr.north", "pw-north-123")
    ids = access.visible_patients(svc, None, who)
    assert sorted(ids) == ["p1", "p2"]
    rows = access.ward_rows(svc, None, who, ids, audit=True)
    assert [r.patient_id for r in rows] == ["p1", "p2"]
    assert rows[0].score.risk.value == "high" and rows[0].score.total >= 7
    assert rows[0].name == "Name p1" and rows[0].vitals["HR"] == "128 /min"
    with pytest.raises(access.UiDeniedError, match="no patient"):
        access.patient_data(svc, None, who, "p3")
    entries = svc.audit.entries()
    assert {(e.action, e.patient_id) for e in entries if e.resource == "ward-summary"} == {
        ("read", "p1"), ("read", "p2")}
    assert any(e.outcome == "denied" and e.patient_id == "p3" for e in entries)


def test_acknowledge_is_checked_and_audited(svc):
    alerts = AlertStore(svc.store)
    mine = alerts.raise_alert("p1", "news2", 3, "NEWS2 high", {}, T0)
    theirs = alerts.raise_alert("p3", "news2", 3, "NEWS2 high", {}, T0)
    who = session.sign_in(svc, _request(), {}, "dr.north", "pw-north-123")
    done = access.acknowledge(svc, None, who, mine.id)
    assert done.acknowledged_by == "clinician:dr.north"
    with pytest.raises(access.UiDeniedError):
        access.acknowledge(svc, None, who, theirs.id)
    assert next(a for a in alerts.all() if a.id == theirs.id).acknowledged_by is None
    acks = [e for e in svc.audit.entries() if e.resource.startswith("alert:")]
    assert [(e.action, e.outcome, e.patient_id) for e in acks] == [
        ("acknowledge", "success", "p1"), ("write", "denied", "p3")]
    assert svc.audit.verify().ok


def test_roles_without_clinical_access_are_refused_on_the_ward(svc):
    admin = session.sign_in(svc, _request(), {}, "admin", "pw-admin-123")
    with pytest.raises(access.UiDeniedError, match="clinicians and patients"):
        access.visible_patients(svc, None, admin)
    access.require_admin(svc, None, admin, "admin-page")
    clin = session.sign_in(svc, _request(), {}, "dr.north", "pw-north-123")
    with pytest.raises(access.UiDeniedError):
        access.require_admin(svc, None, clin, "admin-page")


def test_session_sign_in_out_expiry_and_revocation(svc):
    storage: dict = {}
    with pytest.raises(session.SignInError, match="wrong user name or password"):
        session.sign_in(svc, _request(), storage, "dr.north", "nope")
    assert session.current(svc, _request(), storage) is None
    who = session.sign_in(svc, _request(), storage, "dr.north", "pw-north-123")
    assert session.current(svc, _request(), storage) == who
    # an expired access token is renewed by the refresh token
    storage[session.ACCESS] = svc.tokens.issue(who.id, "clinician", 0,
                                               now=datetime.now(UTC) - timedelta(hours=1))
    assert session.current(svc, _request(), storage) == who
    # an expired refresh token ends the session
    old = datetime.now(UTC) - timedelta(days=2)
    storage[session.ACCESS] = svc.tokens.issue(who.id, "clinician", 0, now=old)
    storage[session.REFRESH] = svc.tokens.issue(who.id, "clinician", 0, kind="refresh", now=old)
    assert session.current(svc, _request(), storage) is None and not storage
    session.sign_in(svc, _request(), storage, "dr.north", "pw-north-123")
    svc.directory.disable("dr.north")  # revoked at once
    assert session.current(svc, _request(), storage) is None
    session.sign_out(svc, None, storage, who)
    assert [e.action for e in svc.audit.entries()].count("login") == 3


def test_researchers_see_no_identified_data_and_patients_only_themselves(svc):
    from medtwin.ui.pages import home_of

    svc.directory.add_user("res", "researcher", "pw-res-123")
    svc.directory.add_user("pat", "patient", "pw-pat-123", patient_id="p2")
    res = session.sign_in(svc, _request(), {}, "res", "pw-res-123")
    assert home_of(res) == "/trials"  # where a researcher lands after signing in
    with pytest.raises(access.UiDeniedError, match="Trials") as refused:
        access.visible_patients(svc, None, res)
    for pid in ("p1", "p2", "p3"):
        with pytest.raises(access.UiDeniedError) as exc:
            access.patient_data(svc, None, res, pid)
        assert "Name" not in str(exc.value) and "MRN" not in str(exc.value)
    assert "Name" not in str(refused.value) and "MRN" not in str(refused.value)
    pat = session.sign_in(svc, _request(), {}, "pat", "pw-pat-123")
    assert home_of(pat) == "/"
    ids = access.visible_patients(svc, None, pat)
    assert ids == ["p2"]
    assert [r.name for r in access.ward_rows(svc, None, pat, ids, audit=True)] == ["Name p2"]
    assert access.patient_data(svc, None, pat, "p2").mrn == "MRN-p2"
    with pytest.raises(access.UiDeniedError, match="no patient with id p1"):  # as if absent
        access.patient_data(svc, None, pat, "p1")
    with pytest.raises(access.UiDeniedError):  # a patient reads, never acknowledges
        access.acknowledge(svc, None, pat, AlertStore(svc.store).raise_alert(
            "p2", "news2", 3, "NEWS2 high", {}, T0).id)
    denied = [(e.actor, e.patient_id) for e in svc.audit.entries() if e.outcome == "denied"]
    assert ("researcher:res", "p1") in denied and ("patient:pat", "p1") in denied


def test_times_are_shown_in_the_browsers_zone_with_utc_as_the_labelled_fallback():
    from medtwin.ui.layout import local_time

    storage: dict = {}
    assert not session.zone_known(storage)
    assert session.zone(storage).key == "UTC" and "unknown" in session.zone_label(storage)
    assert session.remember_zone(storage, "America/New_York").key == "America/New_York"
    assert session.zone_known(storage) and session.zone_label(storage) == "America/New_York"
    winter = datetime(2026, 1, 5, 17, 30, tzinfo=UTC)
    assert local_time(winter, session.zone(storage)) == "05 Jan 12:30:00 EST"
    for bad in ("Mars/Olympus", "../etc/passwd", None, 42, "x" * 100):
        assert session.remember_zone(storage, bad) is None
        assert session.zone_known(storage) and session.zone(storage).key == "UTC"
        assert "unknown" in session.zone_label(storage)
    assert local_time(winter) == "05 Jan 17:30:00 UTC"  # outside a page: UTC


def test_ward_row_shows_the_newest_glucose_and_its_time(svc):
    who = session.sign_in(svc, _request(), {}, "dr.north", "pw-north-123")
    later = T0 + timedelta(minutes=5)
    svc.store.append(records=[
        Observation("p2", "2339-0", T0, 180.0, "mg/dL", "lab-1"),
        Observation("p2", "99504-3", later, 7.0, "mmol/L", "cgm-1")])
    row = {r.patient_id: r for r in access.ward_rows(svc, None, who, ["p1", "p2"],
                                                     audit=False)}["p2"]
    assert row.vitals["Glucose"] == "126 mg/dL"  # the CGM's 7.0 mmol/L, newer than the lab
    assert row.last_reading == later and "Glucose" not in row.vitals.get("p1", {})


def test_care_patients_follows_the_care_team_as_it_changes(svc):
    who = session.sign_in(svc, _request(), {}, "dr.north", "pw-north-123")
    assert access.care_patients(svc, who) == ["p1", "p2"]
    svc.directory.add_to_team("north", patient_id="p3")  # a new arrival on the ward
    svc.directory.add_to_team("north", patient_id="not-stored-yet")
    assert access.care_patients(svc, who) == ["p1", "p2", "p3"]
    admin = session.sign_in(svc, _request(), {}, "admin", "pw-admin-123")
    assert access.care_patients(svc, admin) == []


def test_an_admin_opens_a_record_only_with_an_emergency_reason_which_is_audited(svc):
    admin = session.sign_in(svc, _request(), {}, "admin", "pw-admin-123")
    with pytest.raises(access.UiDeniedError) as refused:
        access.patient_data(svc, None, admin, "p1")
    assert "emergency" in str(refused.value) and "header" not in str(refused.value)
    data = access.patient_data(svc, None, admin, "p1", break_glass="arrest call, team away")
    assert data.mrn == "MRN-p1" and data.news2 is not None and data.news2.score is not None
    last = [e for e in svc.audit.recent(5) if e.resource == "patient-page"][0]
    assert (last.outcome, last.patient_id) == ("success", "p1")
    assert last.detail == "break-glass: arrest call, team away"
