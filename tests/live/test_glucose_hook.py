"""Glucose in the monitor loop: the CGM trend warns of a low before it happens, and the
glucose twin, told of an insulin overdose, predicts the low from the model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from medtwin.core.records import Intervention, Observation, Patient
from medtwin.core.schedule import Schedule
from medtwin.core.simulate import simulate
from medtwin.devices.controllers import basal_rate
from medtwin.live.sync import GlucoseHook, MonitorLoop
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.models.glucose.uva_padova import UVAPadova
from medtwin.store.alerts import AlertStore
from medtwin.twin.glucose_sync import GlucoseSync

T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)


def _cgm(pid, i, value):
    return Observation(subject=pid, code="99504-3", time=T0 + timedelta(minutes=5 * i),
                       value=value, unit="mg/dL", source_id=f"cgm-{pid}-{i}")


def test_cgm_trend_warns_before_the_low(store):
    store.append([Patient(id=p, source_id=f"Patient/{p}") for p in ("fall", "steady")])
    loop = MonitorLoop(store, broker=None)
    falling = [138.0] * 6 + [130, 121, 112, 104, 97, 91, 86, 82, 78, 74, 69, 65]
    first_warning = None
    for i, v in enumerate(falling):
        store.append([], [_cgm("fall", i, v), _cgm("steady", i, 138.0)])
        new = loop.check("fall") + loop.check("steady")
        if first_warning is None and any(a.rule == "glucose-low-soon" for a in new):
            first_warning = v
    assert first_warning is not None and first_warning >= 90  # warned > 20 mg/dL before 70
    rules = {a.rule: a.severity for a in AlertStore(store).active("fall")}
    assert rules["glucose-low"] == 2 and rules["glucose-low-soon"] == 2
    assert AlertStore(store).all("steady") == []


def test_the_twin_predicts_the_low_of_an_insulin_overdose(store):
    """adult#001 on basal gets a 15 U bolus without a meal at 08:30; the readings are the
    simulated truth. The twin, told of the bolus, predicts the low before glucose reaches it."""
    cohort = uva_padova_cohort(["adult#001"])
    sched = Schedule().with_basal(0.0, float(basal_rate(cohort)[0])).with_bolus(30.0, 15.0)
    times = np.arange(0.0, 241.0)
    truth = simulate(UVAPadova(), cohort, sched, times)["G_sc [mg/dL]"][0]
    hypo_at = int(np.argmax(truth < 70))
    assert 60 < hypo_at < 240, "the overdose should bring glucose below 70 within 4 h"
    store.append([Patient(id="p1", source_id="Patient/p1")],
                 [Intervention("p1", "insulin", T0 + timedelta(minutes=30), 15.0, "U", "bolus")])
    sync = GlucoseSync(store, subject_of={"p1": "adult#001"})
    loop = MonitorLoop(store, broker=None, hooks=[GlucoseHook(sync)])
    warned_at = None
    for k in range(0, 241, 5):
        store.append([], [Observation("p1", "99504-3", T0 + timedelta(minutes=k),
                                      float(truth[k]), "mg/dL", f"cgm-{k}")])
        if any(a.rule == "hypo-predicted" for a in loop.check("p1")) and warned_at is None:
            warned_at = k
    assert warned_at is not None and hypo_at - warned_at >= 15, (warned_at, hypo_at)
