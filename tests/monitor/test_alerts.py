"""Alerts: raised once, escalated, resolved, acknowledged; never an alert storm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.errors import NotFoundError
from medtwin.core.records import Observation, Patient
from medtwin.live.sync import MonitorLoop
from medtwin.store.alerts import AlertStore

T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)


def test_dedup_escalation_resolution_and_ack(store):
    a = AlertStore(store)
    first = a.raise_alert("p1", "news2", 1, "NEWS2 3", {}, T0)
    assert first is not None
    assert a.raise_alert("p1", "news2", 1, "NEWS2 3 again", {}, T0) is None  # no storm
    assert a.raise_alert("p1", "news2", 1, "lower or equal", {}, T0) is None
    worse = a.raise_alert("p1", "news2", 3, "NEWS2 8", {"total": 8}, T0)
    assert worse is not None and worse.id != first.id
    assert [x.id for x in a.active("p1")] == [worse.id]  # the old one was resolved
    acked = a.acknowledge(worse.id, "dr.who")
    assert acked.acknowledged_by == "dr.who" and not acked.resolved
    assert a.resolve("p1", "news2") == 1 and a.active("p1") == []
    again = a.raise_alert("p1", "news2", 1, "back", {}, T0)
    assert again is not None  # after resolution the same rule may fire again
    assert len(a.all("p1")) == 3
    with pytest.raises(NotFoundError, match="no alert 999"):
        a.acknowledge(999, "x")


def _vitals(pid, t, *, rr, spo2, hr, sbp, temp, n):
    codes = {"9279-1": (rr, "/min"), "59408-5": (spo2, "%"), "8867-4": (hr, "/min"),
             "8480-6": (sbp, "mm[Hg]"), "8310-5": (temp, "Cel"), "3151-8": (0.0, "L/min")}
    obs = [Observation(subject=pid, code=c, time=t, value=v, unit=u, source_id=f"{c}-{n}")
           for c, (v, u) in codes.items()]
    obs.append(Observation(subject=pid, code="67775-7", time=t, value=None, unit=None,
                           value_code="248234008", value_text="Alert", source_id=f"acvpu-{n}"))
    return obs


def test_monitor_raises_each_rule_once_and_resolves_on_recovery(store):
    store.append([Patient(id="p1", source_id="Patient/p1")])
    seen = []
    loop = MonitorLoop(store, broker=None, on_alert=seen.append)
    store.append([], _vitals("p1", T0, rr=16, spo2=97, hr=70, sbp=120, temp=37.0, n=0))
    assert loop.check("p1") == []
    for k in range(1, 4):  # the same bad state three times: one alert per rule
        store.append([], _vitals("p1", T0 + timedelta(minutes=10 * k), rr=26, spo2=89, hr=135,
                                 sbp=88, temp=39.5, n=k))
        loop.check("p1")
    rules = sorted(a.rule for a in seen)
    assert rules == ["news2", "news2-rising", "pulse-high", "rr-high", "sbp-low", "spo2-low"]
    news = next(a for a in seen if a.rule == "news2")
    assert news.severity == 3 and news.detail["total"] >= 7
    said = {a.rule: a.message for a in seen}  # issue 17: as a clinician would say it
    assert said["rr-high"] == "Respiratory rate 26 /min, at or above the alert limit of 25 /min"
    assert said["spo2-low"] == "SpO2 89%, below the alert limit of 90%"
    assert said["sbp-low"] == "Systolic BP 88 mmHg, at or below the alert limit of 90 mmHg"
    assert said["pulse-high"] == "Pulse 135 /min, above the alert limit of 130 /min"
    store.append([], _vitals("p1", T0 + timedelta(hours=1), rr=16, spo2=97, hr=70, sbp=120,
                             temp=37.0, n=9))
    loop.check("p1")
    assert len(AlertStore(store).active("p1")) == 6  # clear, but not yet for 30 min
    store.append([], _vitals("p1", T0 + timedelta(hours=1, minutes=30), rr=16, spo2=97, hr=70,
                             sbp=120, temp=37.0, n=10))
    loop.check("p1")
    assert AlertStore(store).active("p1") == []
    assert len(seen) == 6  # and nothing was raised again on the way down
