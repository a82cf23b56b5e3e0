"""Twin endpoints: the glucose twin's forecast and what-if, the vancomycin recommendation;
per-patient access like any other read of patient data."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from medtwin.api.app import create_app
from medtwin.core.records import Patient
from medtwin.interop.fhir.read import parse_fhir
from medtwin.interop.fhir.synthetic import generate_patients
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore

from .conftest import PASSWORD, fast_settings, login


@pytest.fixture
def twins(tmp_path):
    keyring = KeyRing.generate()
    store = EventStore.open(tmp_path / "t.sqlite", keyring=keyring)
    ids = {}
    for kind, bundle in zip(("t1d", "vancomycin", "stable"),
                            generate_patients(3, seed=2, days=1,
                                              kinds=["t1d", "vancomycin", "stable"]),
                            strict=True):
        parsed = parse_fhir(bundle)
        store.append(parsed.patients, parsed.records)
        ids[kind] = parsed.patients[0].id
    store.append([Patient(id="bare", source_id="Patient/bare")])  # no reading at all
    ids["bare"] = "bare"
    app = create_app(fast_settings(), store, keyring)
    d = app.state.services.directory
    mine = d.add_user("dr_a", "clinician", PASSWORD)
    d.add_user("dr_b", "clinician", PASSWORD)
    for pid in ids.values():
        d.add_to_team("ward-a", user_id=mine.id, patient_id=pid)
    with TestClient(app) as client:
        heads = {name: {"Authorization": f"Bearer {login(client, name).json()['access_token']}"}
                 for name in ("dr_a", "dr_b")}
        yield client, ids, heads
    store.close()


def test_glucose_twin_forecast_and_what_if(twins):
    client, ids, heads = twins
    r = client.get(f"/twins/{ids['t1d']}/glucose?horizon=60", headers=heads["dr_a"])
    assert r.status_code == 200, r.text
    out = r.json()
    assert 40 < out["glucose"] < 400 and 0 <= out["hypo_probability"] <= 1
    assert len(out["forecast"]) >= 10
    assert all(p["p05"] <= p["mean"] <= p["p95"] for p in out["forecast"])
    t = out["twin_time"]
    body = {"meals": [[t, 60.0]], "horizon": 120}
    meal = client.post(f"/twins/{ids['t1d']}/glucose/what-if", json=body,
                       headers=heads["dr_a"]).json()
    base = meal["forecast"][-1]["mean"]
    assert meal["what_if"][-1]["mean"] > base + 10  # 60 g of carbohydrate raise glucose
    bolus = client.post(f"/twins/{ids['t1d']}/glucose/what-if",
                        json={"boluses": [[t, 4.0]], "horizon": 120},
                        headers=heads["dr_a"]).json()
    assert bolus["what_if"][-1]["mean"] < base - 10  # 4 U of insulin lower it
    labs = client.get(f"/twins/{ids['stable']}/glucose", headers=heads["dr_a"])
    assert labs.status_code == 200  # six-hourly laboratory glucose is enough to start
    none = client.get(f"/twins/{ids['bare']}/glucose", headers=heads["dr_a"])
    assert none.status_code == 409 and "no glucose reading" in none.text


def test_list_of_twins_says_which_can_run(twins):
    client, ids, heads = twins
    got = {t["kind"]: t for t in client.get(f"/twins/{ids['vancomycin']}",
                                            headers=heads["dr_a"]).json()}
    assert got["vancomycin"]["ready"] and got["glucose"]["last_version"] is None
    client.get(f"/twins/{ids['t1d']}/glucose", headers=heads["dr_a"])
    t1d = {t["kind"]: t for t in client.get(f"/twins/{ids['t1d']}",
                                            headers=heads["dr_a"]).json()}
    assert t1d["glucose"]["ready"] and t1d["glucose"]["last_version"] >= 1
    assert not t1d["vancomycin"]["ready"]
    assert client.get(f"/twins/{ids['t1d']}", headers=heads["dr_b"]).status_code == 404


def test_vancomycin_dose_recommendation(twins):
    client, ids, heads = twins
    r = client.get(f"/twins/{ids['vancomycin']}/dose?target=auc24=400:600",
                   headers=heads["dr_a"])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["dose_mg"] % 250 == 0 and out["interval_h"] in (8, 12, 24)
    assert 0 < out["probability"] <= 1 and out["interval_90"][0] < out["median"]
    bad = client.get(f"/twins/{ids['vancomycin']}/dose?target=auc=1", headers=heads["dr_a"])
    assert bad.status_code == 422
    assert client.get(f"/twins/{ids['t1d']}/dose", headers=heads["dr_a"]).status_code == 409


def test_twins_of_other_teams_are_hidden(twins):
    client, ids, heads = twins
    assert client.get(f"/twins/{ids['t1d']}/glucose", headers=heads["dr_b"]).status_code == 404
    assert client.get(f"/twins/{ids['vancomycin']}/dose",
                      headers=heads["dr_b"]).status_code == 404
    assert client.get(f"/twins/{ids['t1d']}/glucose").status_code == 401
    assert client.get("/twins/nobody/glucose", headers=heads["dr_a"]).status_code == 404
