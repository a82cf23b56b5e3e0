"""The Nelson treatment-centre model (YAML) against the treat-sim 3.0.0 reference (README).

treat-sim 3.0.0 conventions, followed by the model file and :mod:`medtwin.ops.kpis`:

* results collection period 1140 min from 06:00, **no warm-up** (the model starts empty);
* a wait is the mean over patients whose wait was observed (service started before 1140);
* utilisation = sum of the sampled service durations of services *started* in the period
  (full durations, even past the end) / (1140 x number of units)  -> ``util:<resource>``;
* total time counts patients who left before 1140; throughput counts them; arrivals counts all;
* lognormals are given by the mean and variance of the variable; examination is
  Normal(16, sqrt 3) with values below 0.5 set to 0.5 (sim-tools ``minimum``); trauma
  treatment has its own lognormal (30, 4) (the 3.0.0 fix).

The reference is itself the mean of 20 treat-sim replications, so the fair 95% check of
"same model" compares two independent means: the reference must lie within
mean +/- t * sqrt(s^2/n + s^2/20), s being our replication sd (with n = 20 this is the CI
half-width times sqrt 2). ``python -m medtwin.ops.compare`` prints both that and the plain CI.
"""

from __future__ import annotations

import pytest

from medtwin.ops.compare import NELSON_REFERENCE, compare_nelson


@pytest.fixture(scope="module")
def table20():
    return compare_nelson(reps=20, seed=0)


def test_every_wait_and_utilisation_agrees_with_treat_sim(table20):
    waits_utils = table20[table20.index.str.startswith(("wait:", "util:"))]
    assert len(waits_utils) == 12
    bad = waits_utils[~waits_utils["agrees"]]
    assert bad.empty, bad.to_string()


def test_counts_and_total_times_agree(table20):
    rest = table20.loc[["arrivals", "throughput", "time_in_system:non_trauma",
                        "time_in_system:trauma"]]
    assert rest["agrees"].all(), rest.to_string()


def test_more_replications_still_agree():
    """With 100 replications the interval is tighter; a biased model would drift out."""
    t = compare_nelson(reps=100, seed=1)
    assert t["agrees"].all(), t[~t["agrees"]].to_string()
    assert (t["half_width_2sample"] < t["half_width_2sample_20"]).all()


def test_reference_table_is_the_readme():
    assert NELSON_REFERENCE["wait:registration"] == 104.69
    assert NELSON_REFERENCE["util:trauma_cubicles"] == 0.52
    assert len(NELSON_REFERENCE) == 16
