"""Issue 12, findings 1 and 3 over MQTT, as the tester attacked: a heart rate dated 9999
must not silence the victim's alerts, impossible values are dead-lettered with the reason,
and a message reusing a stored source id never replaces the stored reading."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from medtwin.core.records import Observation, Patient
from medtwin.live.ingest import Ingester
from medtwin.live.sync import MonitorLoop
from medtwin.monitor.news2 import news2
from medtwin.monitor.vitals import latest_vitals
from medtwin.store.alerts import AlertStore

NOW = datetime.now(UTC).replace(microsecond=0)
SICK = {"rr": 27, "spo2": 89, "sbp": 86, "hr": 138, "temp": 34.8}


def _msg(value, t, sid, unit=None):
    body = {"value": value, "time": t.isoformat(), "id": sid}
    if unit:
        body["unit"] = unit
    return json.dumps(body)


def _run(store, broker, send, *, monitor=True):
    loop = MonitorLoop(store, broker=None).start() if monitor else None
    ing = Ingester(store, broker=broker.url, client_id=f"safety-{os.getpid()}",
                   on_stored=loop.on_stored if loop else None).start()
    try:
        send()
        assert ing.wait_idle(quiet=0.5, timeout=30)
    finally:
        ing.stop()
        if loop:
            loop.stop()
    return ing


def test_a_future_dated_heart_rate_does_not_silence_the_victims_alerts(store, broker,
                                                                        publisher):
    store.append([Patient(id=p, source_id=f"Patient/{p}") for p in ("victim", "control")])

    def send():
        publisher.send("medtwin/ward1/victim/badclock/hr",
                       _msg(60, datetime(9999, 1, 1, tzinfo=UTC), "x1"))
        for k in range(4):
            t = NOW - timedelta(minutes=45 - 15 * k)
            for pid in ("victim", "control"):
                for metric, value in SICK.items():
                    publisher.send(f"medtwin/ward1/{pid}/mon/{metric}",
                                   _msg(value, t, f"{pid}-{metric}-{k}"))

    ing = _run(store, broker, send)
    assert ing.stats.future_dated == 1
    alerts = AlertStore(store).all()
    rules = {p: sorted((a.rule, a.severity) for a in alerts if a.patient_id == p
                       and not a.rule.startswith("data-quality"))
             for p in ("victim", "control")}
    assert rules["control"] and rules["victim"] == rules["control"]  # the same alerts fired
    assert ("news2", 3) in rules["victim"]
    (dq,) = [a for a in alerts if a.rule.startswith("data-quality")]
    assert dq.patient_id == "victim" and "badclock" in dq.message
    # the stored bad reading is kept, flagged, and never the latest
    (bad,) = [o for o in store.timeline("victim", include_flagged=True)
              if o.time.year == 9999]
    assert bad.source_id == "badclock/x1"
    assert news2(latest_vitals(store, "victim")[0]).total == news2(
        latest_vitals(store, "control")[0]).total == 15


def test_impossible_values_are_dead_lettered_with_the_reason(store, broker, publisher):
    store.append([Patient(id="p1", source_id="Patient/p1")])

    def send():
        publisher.send("medtwin/ward1/p1/mon/hr", _msg(-5, NOW, "neg"))
        publisher.send("medtwin/ward1/p1/mon/hr", _msg(1e308, NOW, "huge"))
        publisher.send("medtwin/ward1/p1/mon/temp", _msg(104, NOW, "f", unit="[degF]"))

    ing = _run(store, broker, send, monitor=False)
    assert (ing.stats.stored, ing.stats.dead_lettered) == (1, 2)
    reasons = list(store.dead_letters()["reason"])
    assert sum("plausible range 10-300" in r for r in reasons) == 2
    (temp,) = store.timeline("p1")
    assert (temp.value, temp.unit) == (40.0, "Cel")


def test_a_fhir_observation_reusing_an_imported_id_does_not_replace_it(store, broker,
                                                                       publisher):
    imported = Observation(subject="p1", code="8867-4", time=NOW - timedelta(hours=2),
                           value=75.0, unit="/min", source_id="Observation/hr-ehr")
    store.append([Patient(id="p1", source_id="Patient/p1")], [imported])
    fhir = {"resourceType": "Observation", "id": "hr-ehr", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "effectiveDateTime": NOW.isoformat(),
            "valueQuantity": {"value": 250, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}
    cgm = {**fhir, "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
           "valueQuantity": {"value": 120, "unit": "mg/dL",
                             "system": "http://unitsofmeasure.org", "code": "mg/dL"}}

    def send():
        publisher.send("medtwin/ward1/p1/mon/hr", json.dumps(fhir))
        publisher.send("medtwin/ward1/p1/mon/cgm", json.dumps(cgm))

    ing = _run(store, broker, send)
    assert (ing.stats.stored, ing.stats.dead_lettered) == (0, 2)
    (hr,) = store.timeline("p1")
    assert (hr.value, hr.code) == (75.0, "8867-4")
    assert store.counts("p1") == {"observation": 1}  # no new version was written
    reasons = " ".join(store.dead_letters()["reason"])
    assert "append-only" in reasons and "code '8867-4'" in reasons
    assert not [a for a in AlertStore(store).all() if a.rule == "pulse-high"]  # not scored
