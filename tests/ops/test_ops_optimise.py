"""Optimisation finds the cheapest resource mix meeting a target, checked against Erlang C."""

from __future__ import annotations

import math

import pytest

from medtwin.core.errors import ValidationError
from medtwin.core.yamlio import load_yaml
from medtwin.ops.loader import load_model, parse_model
from medtwin.ops.optimise import Target, candidate_model, optimise

MM = """
name: mmc
time_unit: hours
run: {warm_up: 100, length: 3000, replications: 10}
resources:
  servers: {capacity: 3, cost_per_hour: 10}
activities:
  service: {resource: servers, duration: {dist: exponential, mean: 1}}
classes: {customer: {pathway: [service]}}
arrivals: [{name: p, rate_per_hour: 2.7, class: customer}]
"""


def wq(c, lam=2.7, mu=1.0):
    a = lam / mu
    top = a**c / math.factorial(c) / (1 - a / c)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top) / (c * mu - lam)


def test_cheapest_server_count_meeting_a_wait_target_matches_erlang_c():
    model = parse_model(load_yaml(MM), "<mm>")
    assert wq(3) > 0.5 > wq(4)  # the analytic answer is 4 servers
    table = optimise(model, "wait:service<=0.5", {"servers": (3, 7)}, reps=8, seed=3, extra=1)
    best = table[table.best].iloc[0]
    assert best.servers == 4 and best.cost_per_day == pytest.approx(4 * 10 * 24)
    assert best.confidence >= 0.95
    failed = table[(table.servers == 3)].iloc[0]
    assert not failed.meets and failed.confidence < 0.05
    assert table.cost_per_day.is_monotonic_increasing
    assert table.attrs["target"] == "wait:service<=0.5"


def test_roster_candidates_shift_every_hour_and_cost_follows():
    m = load_model("ed_inpatient")
    c = candidate_model(m, {"ed_doctors": 1})
    base = m.resources["ed_doctors"].roster
    assert c.resources["ed_doctors"].roster == tuple(k + 1 for k in base)
    assert c.cost_per_hour() == pytest.approx(m.cost_per_hour() + 90)


def test_target_parsing_and_errors():
    t = Target.parse("p_within_4h>=0.95")
    assert (t.kpi, t.op, t.value) == ("p_within_4h", ">=", 0.95)
    with pytest.raises(ValidationError):
        Target.parse("p_within_4h is high")
    model = parse_model(load_yaml(MM), "<mm>")
    with pytest.raises(ValidationError, match="unknown KPI"):
        optimise(model, "nonsense>=1", {"servers": (4, 4)}, reps=2)
    with pytest.raises(ValidationError, match="unknown resource"):
        optimise(model, "wait:service<=1", {"nurses": (1, 2)}, reps=2)
