"""The cardio twin's routes: personalised to the stored cuff BP and HR (a hypertensive
synthetic patient), its forecast band and what-ifs; the same access rules, audit and typed
errors as every twin route."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from medtwin.api.app import create_app
from medtwin.core.records import Observation, Patient
from medtwin.interop.fhir.read import parse_fhir
from medtwin.interop.fhir.synthetic import generate_patients
from medtwin.security.crypto import KeyRing
from medtwin.store.event_store import EventStore
from medtwin.twin.cardio_service import CARDIO_RESOURCE, cardiac_conditions

from .conftest import PASSWORD, fast_settings, login

FAST = "horizon=30&draws=8"


@pytest.fixture(scope="module")
def cardio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cardio")
    keyring = KeyRing.generate()
    store = EventStore.open(tmp / "c.sqlite", keyring=keyring)
    parsed = parse_fhir(generate_patients(1, seed=3, days=1, kinds=["stable"])[0])
    store.append(parsed.patients, parsed.records)
    pid = parsed.patients[0].id
    store.append([Patient(id="bare", source_id="Patient/bare"),
                  Patient(id="odd", source_id="Patient/odd")])
    store.append(records=[Observation("odd", "10230-1", parsed.records[-1].time, 1.5, "1",
                                      "Observation/odd-ef")])
    app = create_app(fast_settings(), store, keyring)
    d = app.state.services.directory
    mine = d.add_user("dr_a", "clinician", PASSWORD)
    d.add_user("dr_b", "clinician", PASSWORD)
    for p in (pid, "bare", "odd"):
        d.add_to_team("ward-a", user_id=mine.id, patient_id=p)
    with TestClient(app) as client:
        heads = {n: {"Authorization": f"Bearer {login(client, n).json()['access_token']}"}
                 for n in ("dr_a", "dr_b")}
        yield client, store, pid, heads
    store.close()


def _latest_bp(store: EventStore, pid: str) -> tuple[float, float, object]:
    bp = [o for o in store.timeline(pid, kinds=["observation"], codes=["85354-9"])]
    last = bp[-1]
    parts = {c.code: c.value for c in last.components}
    return parts["8480-6"], parts["8462-4"], last.time


def test_cardio_twin_is_personalised_with_a_band(cardio):
    client, store, pid, heads = cardio
    assert cardiac_conditions(store, pid)  # the synthetic patient is hypertensive
    r = client.get(f"/twins/{pid}/cardio?{FAST}", headers=heads["dr_a"])
    assert r.status_code == 200, r.text
    out = r.json()
    sbp, dbp, when = _latest_bp(store, pid)
    assert out["observed"]["SBP"] == sbp and out["observed"]["DBP"] == dbp
    assert out["twin_time"].startswith(when.isoformat()[:19])
    now = out["current"]  # the twin at its steady state reproduces the readings it was fitted to
    assert out["steady_state"] and out["converged"]
    assert abs(now["SBP"] - sbp) < 0.08 * sbp and abs(now["DBP"] - dbp) < 0.1 * dbp
    assert 0.3 < now["EF"] < 0.8 and 2.5 < now["CO"] < 9 and now["DBP"] < now["MAP"] < now["SBP"]
    params = {p["name"]: p for p in out["parameters"]}
    assert {"R_sys", "E_ao", "E_es_lvf", "V_stressed", "T_ref"} <= set(params)
    assert all(p["low95"] < p["estimate"] < p["high95"] and p["log_sd"] > 0
               for p in params.values())
    assert params["R_sys"]["unit"] == "mmHg*s/mL"
    band = out["forecast"]["MAP"]
    assert len(band) == 31 and band[-1]["seconds"] == 30
    assert all(p["p05"] <= p["mean"] <= p["p95"] for b in out["forecast"].values() for p in b)
    assert band[-1]["p95"] - band[-1]["p05"] > 1.0  # the parameters' uncertainty shows
    assert out["what_if"] is None and out["draws"] == 8 and out["collapsed"] <= 2
    entries = [e for e in client.app.state.services.audit.entries()
               if e.resource == CARDIO_RESOURCE and e.patient_id == pid]
    assert entries and entries[-1].outcome == "success"
    again = client.get(f"/twins/{pid}/cardio?{FAST}", headers=heads["dr_a"]).json()
    assert again["snapshot_version"] == out["snapshot_version"]  # nothing new: not refitted
    assert again["parameters"] == out["parameters"]
    listed = {t["kind"]: t for t in client.get(f"/twins/{pid}", headers=heads["dr_a"]).json()}
    assert listed["cardio"]["ready"] and listed["cardio"]["last_version"] >= 1
    bare = {t["kind"]: t for t in client.get("/twins/bare", headers=heads["dr_a"]).json()}
    assert not bare["cardio"]["ready"]


def test_what_if_next_to_current(cardio):
    client, _, pid, heads = cardio
    r = client.post(f"/twins/{pid}/cardio/what-if",
                    json={"scenario": "haemorrhage", "horizon": 90, "draws": 8},
                    headers=heads["dr_a"])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["scenario"]["name"] == "haemorrhage"
    now, alt = out["current"], out["what_if"]
    assert alt["MAP"] < now["MAP"] - 1 and alt["SV"] < now["SV"] - 3  # 300 mL lost
    assert alt["HR"] > now["HR"]  # the baroreflex answers with tachycardia
    wf = out["what_if_forecast"]["MAP"]
    assert len(wf) == len(out["forecast"]["MAP"]) == 91
    assert all(p["p05"] <= p["mean"] <= p["p95"] for p in wf)
    ino = client.get(f"/twins/{pid}/cardio?{FAST}&scenario=inotrope",
                     headers=heads["dr_a"]).json()
    assert ino["what_if"]["EF"] > ino["current"]["EF"] + 0.03  # contractility up


def test_other_care_team_gets_the_same_404_as_other_twins(cardio):
    client, _, pid, heads = cardio
    r = client.get(f"/twins/{pid}/cardio?{FAST}", headers=heads["dr_b"])
    glucose = client.get(f"/twins/{pid}/glucose", headers=heads["dr_b"])
    assert r.status_code == glucose.status_code == 404
    assert r.json()["detail"] == glucose.json()["detail"]
    post = client.post(f"/twins/{pid}/cardio/what-if", json={"scenario": "inotrope"},
                       headers=heads["dr_b"])
    assert post.status_code == 404
    missing = client.get("/twins/nobody/cardio", headers=heads["dr_a"])
    assert missing.status_code == 404
    assert client.get(f"/twins/{pid}/cardio").status_code == 401
    denied = [e for e in client.app.state.services.audit.entries()
              if e.resource == CARDIO_RESOURCE and e.outcome == "denied"]
    assert len(denied) >= 2


@pytest.mark.parametrize(("call", "field"), [
    (("get", "?scenario=bogus", None), "scenario"),
    (("get", "?horizon=5", None), "horizon"),
    (("get", "?draws=1", None), "draws"),
    (("post", "/what-if", {"scenario": "hemorrhage"}), "scenario"),
    (("post", "/what-if", {"scenario": "inotrope", "horizon": 1e4}), "horizon"),
    (("post", "/what-if", {"scenario": "inotrope", "dose": 2}), "dose"),
    (("post", "/what-if", {}), "scenario"),
    (("get", "?horizon=300&draws=100", None), "draws"),  # more work than one request may ask
    (("post", "/what-if", {"scenario": "inotrope", "horizon": 300, "draws": 100}), "draws"),
])
def test_bad_input_is_a_422_naming_the_field(cardio, call, field):
    client, _, pid, heads = cardio
    method, tail, body = call
    url = f"/twins/{pid}/cardio{tail}"
    r = (client.get(url, headers=heads["dr_a"]) if method == "get"
         else client.post(url, json=body, headers=heads["dr_a"]))
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_no_data_409_and_implausible_stored_value_422(cardio):
    client, _, _, heads = cardio
    none = client.get(f"/twins/bare/cardio?{FAST}", headers=heads["dr_a"])
    assert none.status_code == 409 and "blood pressure" in none.json()["detail"]
    odd = client.get(f"/twins/odd/cardio?{FAST}", headers=heads["dr_a"])
    assert odd.status_code == 422 and "EF (10230-1)" in odd.json()["detail"]


def test_cardio_view_of_a_stored_time(cardio):
    """The twin's time is its newest reading: a reading added later moves it on and refits."""
    client, store, pid, heads = cardio
    first = client.get(f"/twins/{pid}/cardio?{FAST}", headers=heads["dr_a"]).json()
    _, _, when = _latest_bp(store, pid)
    store.append(records=[Observation(pid, "8867-4", when + timedelta(minutes=5), 92.0, "/min",
                                      "Observation/cardio-hr-late")])
    later = client.get(f"/twins/{pid}/cardio?{FAST}", headers=heads["dr_a"]).json()
    assert later["observed"]["HR"] == 92.0
    assert later["snapshot_version"] > first["snapshot_version"]
    assert later["current"]["HR"] > first["current"]["HR"] + 10


def test_the_live_filters_posterior_is_what_the_band_draws_from(cardio, monkeypatch):
    """With the live twin started, its intervals become the band's log-normal posterior
    (median sqrt(lower upper), log sd from the interval's width at its level)."""
    import math

    from medtwin.twin import cardio_service, cardio_sync
    from medtwin.twin.cardio_sync import CardioEstimate, ParameterEstimate

    _, store, pid, _ = cardio
    base = {"R_sys [mmHg*s/mL]": 1.0, "T_ref [s]": 0.8}
    est = CardioEstimate(pid, True, None, 12, 0.9, {
        "R_sys [mmHg*s/mL]": ParameterEstimate("R_sys [mmHg*s/mL]", 1.3, 0.1, 1.1, 1.5, 1.0),
        "T_ref [s]": ParameterEstimate("T_ref [s]", 0.9, 0.02, 0.86, 0.94, 0.8)},
        {}, [], [], 0, base)
    monkeypatch.setattr(cardio_sync, "personalise_from_store", lambda s, p: est)
    post, _ = cardio_service.live_posterior(store, pid)
    z = 1.6448536269514722  # the 95th percentile of the standard normal (90% interval)
    r = {p.label: p for p in post.estimates()}
    assert r["R_sys [mmHg*s/mL]"].estimate == pytest.approx(math.sqrt(1.1 * 1.5), rel=1e-12)
    assert r["R_sys [mmHg*s/mL]"].log_sd == pytest.approx(math.log(1.5 / 1.1) / (2 * z))
    assert r["T_ref [s]"].estimate == pytest.approx(math.sqrt(0.86 * 0.94), rel=1e-12)
    # its 95% interval is wider than the filter's 90% one, around the same median
    assert r["T_ref [s]"].low < 0.86 and r["T_ref [s]"].high > 0.94
    assert "ensemble Kalman filter over 12" in post.method
    view = cardio_service.cardio_view(store, pid, horizon=20, draws=6)
    assert view.posterior.method == post.method
    assert {p.label for p in view.parameters} == set(base)
