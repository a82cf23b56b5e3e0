"""The twins' service functions that the API's /twins routes and the dashboard share: the
glucose twin's what-if (meals, boluses, a basal rate) and the vancomycin regimen what-if."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from medtwin.api.app import create_app
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.records import Patient
from medtwin.interop.fhir.read import parse_fhir
from medtwin.interop.fhir.synthetic import generate_patients
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore
from medtwin.twin.service import (
    GlucosePlan,
    Regimen,
    TwinNotReadyError,
    current_regimen,
    dose_view,
    glucose_view,
)

from .conftest import fast_settings, login


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("twins") / "t.sqlite"
    s = EventStore.open(path, keyring=KeyRing.generate())
    ids = {}
    for kind, bundle in zip(("t1d", "vancomycin"),
                            generate_patients(2, seed=4, days=1, kinds=["t1d", "vancomycin"]),
                            strict=True):
        parsed = parse_fhir(bundle)
        s.append(parsed.patients, parsed.records)
        ids[kind] = parsed.patients[0].id
    s.append([Patient(id="bare", source_id="Patient/bare")])
    s.ids = ids
    yield s
    s.close()


def test_glucose_what_if_meal_bolus_and_basal_move_the_forecast(store):
    pid = store.ids["t1d"]
    now = glucose_view(store, pid, horizon=180)
    t = now.twin_time
    assert now.what_if is None and now.outlook.peak == pytest.approx(now.forecast["mean"].max())
    meal = glucose_view(store, pid, horizon=180, plan=GlucosePlan(meals=((t, 80.0),)))
    # the same twin and the same recorded plan: the plan's forecast does not move
    assert meal.forecast["mean"].tolist() == pytest.approx(now.forecast["mean"].tolist())
    assert meal.what_if_outlook.peak > meal.outlook.peak + 20
    assert (meal.what_if["p95"] >= meal.what_if["p05"]).all()
    bolus = glucose_view(store, pid, horizon=180, plan=GlucosePlan(boluses=((t, 4.0),)))
    assert bolus.what_if["mean"].iloc[-1] < bolus.forecast["mean"].iloc[-1] - 10
    no_basal = glucose_view(store, pid, horizon=180, plan=GlucosePlan(basal=0.0))
    high_basal = glucose_view(store, pid, horizon=180, plan=GlucosePlan(basal=4.0))
    # without basal insulin glucose climbs; with a high basal it falls, against the plan
    assert no_basal.what_if["mean"].iloc[-1] > no_basal.forecast["mean"].iloc[-1] + 5
    assert high_basal.what_if["mean"].iloc[-1] < high_basal.forecast["mean"].iloc[-1] - 5
    # the twin stored after these calls is the plan's, not a what-if's
    again = glucose_view(store, pid, horizon=180)
    assert again.forecast["mean"].tolist() == pytest.approx(now.forecast["mean"].tolist())


def test_glucose_service_errors(store):
    pid = store.ids["t1d"]
    t = glucose_view(store, pid, horizon=30).twin_time
    with pytest.raises(ValidationError, match="within a day"):
        glucose_view(store, pid, plan=GlucosePlan(meals=((t + timedelta(days=2), 50.0),)))
    with pytest.raises(ValidationError, match="basal rate"):
        glucose_view(store, pid, plan=GlucosePlan(basal=50.0))
    with pytest.raises(TwinNotReadyError, match="no glucose reading"):
        glucose_view(store, "bare")
    with pytest.raises(NotFoundError):
        glucose_view(store, "nobody")


def test_vancomycin_regimen_what_if(store):
    pid = store.ids["vancomycin"]
    current = current_regimen(store, pid)
    assert current is not None and current.dose > 0 and current.interval in (8, 12, 24)
    rec = dose_view(store, pid).recommendation
    mine = dose_view(store, pid, regimen=current).recommendation
    assert (mine.dose, mine.interval, mine.duration) == (current.dose, current.interval,
                                                        current.infusion)
    double = dose_view(store, pid, regimen=Regimen(current.dose * 2, current.interval,
                                                   current.infusion)).recommendation
    assert double.median == pytest.approx(2 * mine.median, rel=0.05)  # linear PK
    assert rec.probability >= max(mine.probability, double.probability) - 1e-9
    with pytest.raises(ValidationError, match="infusion"):
        Regimen(1000, 8, 9)
    with pytest.raises(TwinNotReadyError):
        dose_view(store, store.ids["t1d"])
    assert current_regimen(store, store.ids["t1d"]) is None


def test_api_what_if_takes_a_basal_rate(store):
    app = create_app(fast_settings(), store, store.keyring)
    d = app.state.services.directory
    uid = d.add_user("dr_basal", "clinician", "correct horse battery").id
    d.add_to_team("basal", user_id=uid, patient_id=store.ids["t1d"])
    with TestClient(app) as client:
        head = {"Authorization": f"Bearer {login(client, 'dr_basal').json()['access_token']}"}
        url = f"/twins/{store.ids['t1d']}/glucose/what-if"
        off = client.post(url, json={"basal": 0.0, "horizon": 180}, headers=head)
        assert off.status_code == 200, off.text
        out = off.json()
        assert out["what_if"][-1]["mean"] > out["forecast"][-1]["mean"] + 5
        bad = client.post(url, json={"basal": -1}, headers=head)
        assert bad.status_code == 422


def test_the_regimen_starts_when_the_next_dose_is_due_and_keeps_every_dose_given(store):
    """Doses given after the last level stay in the course; recommended and current courses
    are the same course until the next dose is due (they part only where they differ)."""
    import numpy as np

    from medtwin.core.records import Intervention
    from medtwin.twin.vancomycin import pk_view

    pid = store.ids["vancomycin"]
    doses = [r for r in store.timeline(pid, kinds=["intervention"])
             if isinstance(r, Intervention) and r.unit == "mg"]
    now = doses[-1].time + timedelta(hours=3)
    current = current_regimen(store, pid)
    rec = pk_view(store, pid, now=now)
    cur = pk_view(store, pid, now=now, constraints=current.constraints())
    next_due = doses[-1].time + (doses[-1].time - doses[-2].time)
    before = rec.course["time"] < next_due
    assert before.sum() > 10
    np.testing.assert_allclose(rec.course.loc[before, "mode"], cur.course.loc[before, "mode"],
                               rtol=1e-9)
