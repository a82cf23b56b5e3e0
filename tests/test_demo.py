"""``medtwin demo``'s mix of patients and care teams, and its live CGMs' starting points."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from medtwin.demo import _last_cgm, care_teams, demo_kinds, run_demo
from medtwin.store.event_store import EventStore
from medtwin.ui.twins import patient_kind


def test_the_demo_has_one_vancomycin_patient_and_several_with_diabetes():
    assert Counter(demo_kinds(6)) == {"vancomycin": 1, "deteriorating": 2, "t1d": 2,
                                      "stable": 1}
    assert demo_kinds(2) == ["deteriorating", "t1d"]
    big = Counter(demo_kinds(100))
    assert big["vancomycin"] == 1 and big["t1d"] == big["deteriorating"] == 33


def test_each_care_team_gets_a_share_of_every_kind():
    kinds = dict(zip("abcdef", demo_kinds(6), strict=True))
    teams = care_teams(kinds)
    assert sorted(teams["north"] + teams["south"]) == list("abcdef")
    assert len(teams["north"]) == len(teams["south"]) == 3
    for team in teams.values():
        assert {kinds[p] for p in team} >= {"deteriorating", "t1d"}


def test_the_demo_store_has_its_mix_and_live_cgms_continue_from_the_history(tmp_path):
    db = str(tmp_path / "demo.sqlite")
    start = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)
    run_demo(db, n_patients=4, start=start)
    with EventStore.open(db) as store:
        kinds = {p: patient_kind(store, p) for p in store.patients()["id"]}
        assert Counter(kinds.values()) == {"vancomycin": 1, "deteriorating": 1, "t1d": 1,
                                           "stable": 1}
        t1d = [p for p, k in kinds.items() if k == "t1d"]
        last = _last_cgm(store, t1d + [p for p, k in kinds.items() if k == "stable"])
        assert list(last) == t1d  # only patients with a CGM have a CGM to continue
        cgm = store.timeline_frame(t1d[0], kinds=["observation"], codes=["99504-3"])
        assert last[t1d[0]] == cgm.sort_values("time")["value"].iloc[-1]
