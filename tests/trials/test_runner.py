"""In-silico trials on Dask: identical results whatever the chunking and the scheduler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.devices.pump import InsulinPump
from medtwin.models.glucose.loop import ControlAction
from medtwin.trials import runner as runner_module
from medtwin.trials.protocol import FixedMeals
from medtwin.trials.runner import Trial, load_cohort, run_trial

EIGHT = [f"adult#00{i}" for i in range(1, 9)]


@pytest.fixture(scope="module")
def cluster():
    """One process-based LocalCluster (2 workers) for the module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as lc, Client(lc) as client:
        yield lc, client


@pytest.fixture(scope="module")
def trial() -> Trial:
    return Trial(load_cohort("uva-padova", EIGHT), "pid", days=0.25, seed=7)


def _same(a, b) -> None:
    pd.testing.assert_frame_equal(a.table, b.table)
    np.testing.assert_array_equal(a.times, b.times)
    for name in a.traces:
        np.testing.assert_array_equal(a.traces[name], b.traces[name])


def test_chunk_size_and_scheduler_do_not_change_the_results(cluster, trial):
    lc, client = cluster
    runs = [run_trial(trial, client=client, chunk_size=size, progress=False)
            for size in (1, 7, len(EIGHT))]
    runs.append(run_trial(trial, scheduler=lc.scheduler_address, chunk_size=3, progress=False))
    runs.append(run_trial(trial, scheduler="serial", progress=False))
    for other in runs[1:]:
        _same(runs[0], other)
    r = runs[0]
    assert list(r.table.index) == EIGHT
    assert r.traces["BG [mg/dL]"].shape == (8, 72)  # 6 h every 5 min
    assert np.all(np.isfinite(r.traces["CGM [mg/dL]"]))
    assert r.meta["chunks"] == 8 and runs[1].meta["chunks"] == 2


def test_threaded_local_cluster_gives_the_same_results(trial):
    small = Trial(trial.cohort.select(EIGHT[:3]), "pid", days=0.25, seed=7)
    _same(run_trial(small, processes=False, chunk_size=2, progress=False),
          run_trial(small, scheduler="serial", progress=False))


def test_seed_changes_noise_and_meals_but_a_seed_is_reproducible(cluster, trial):
    client = cluster[1]
    one = Trial(trial.cohort.select(EIGHT[:2]), "basal-bolus", days=0.5, seed=1)
    again = run_trial(one, client=client, progress=False)
    _same(again, run_trial(one, client=client, progress=False))
    other = Trial(one.cohort, "basal-bolus", days=0.5, seed=2)
    assert not np.array_equal(run_trial(other, client=client).traces["CGM [mg/dL]"],
                              again.traces["CGM [mg/dL]"])


def test_reference_scenario_through_the_runner(cluster, reference):
    """The peer's noise-free run (adult#001, meals 50/70/80 g at 07/12/19 h, basal-bolus, 1-min
    ideal sensor) reproduces the README's summary: mean BG 142.9 mg/dL, 52.1 U of insulin."""
    ref = pd.read_csv(reference / "glucose" / "adult_001_noiseless_1min.csv").iloc[:-1]
    pump = InsulinPump.from_name("Insulet", convention="simglucose")
    t = Trial(load_cohort("uva-padova", ["adult#001"]), "basal-bolus", days=1, seed=1,
              meals=FixedMeals(), sensor=None, pump=pump, record_every=1)
    r = run_trial(t, client=cluster[1], progress=False)
    row = r.table.loc["adult#001"]
    assert row["mean [mg/dL]"] == pytest.approx(ref["BG"].mean(), abs=0.1)
    assert row["total insulin [U]"] == pytest.approx(ref["insulin"].sum(), abs=0.05)
    np.testing.assert_allclose(r.traces["BG [mg/dL]"][0], ref["BG"], atol=0.5)


def test_a_users_own_controller_is_a_few_lines():
    class ConstantBasal:
        sample_time = 5.0

        def reset(self, cohort) -> None:
            self.n = len(cohort)

        def __call__(self, obs) -> ControlAction:
            return ControlAction(basal=np.full(self.n, 0.02), bolus=np.zeros(self.n))

    t = Trial(load_cohort("uva-padova", ["child#001", "child#002"]), ConstantBasal, days=0.25,
              sensor="GuardianRT", pump="Cozmo")
    r = run_trial(t, scheduler="serial", progress=False)
    np.testing.assert_allclose(r.table["total insulin [U]"], 0.02 * 60 / 60 * 360, atol=1e-9)
    assert r.meta["controller"] == "ConstantBasal"


def test_report_from_a_result(tmp_path, cluster, trial):
    r = run_trial(Trial(trial.cohort.select(EIGHT[:2]), "pid", days=0.25, seed=7),
                  client=cluster[1], progress=False)
    out = r.write_report(str(tmp_path / "trial.html"))
    assert "adult#002" in out.read_text(encoding="utf-8")
    frame = r.traces_frame()
    assert list(frame.columns[:2]) == ["subject", "time [min]"] and len(frame) == 2 * 72


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(runner_module.sys.stderr, "isatty", lambda: False, raising=False)
    assert runner_module._progress_bar(3, True).disable
    monkeypatch.setattr(runner_module.sys.stderr, "isatty", lambda: True, raising=False)
    assert not runner_module._progress_bar(3, None).disable
    assert runner_module._progress_bar(3, False).disable


def test_bad_trials_say_what_to_fix(trial):
    cohort = trial.cohort
    with pytest.raises(NotFoundError, match="basal-bolus, pid"):
        Trial(cohort, "mpc")
    with pytest.raises(NotFoundError, match="uva-padova"):
        load_cohort("cambridge")
    with pytest.raises(NotFoundError, match="adult#001"):
        load_cohort("uva-padova", "elder#*")
    with pytest.raises(NotFoundError, match="Dexcom"):
        Trial(cohort, "pid", sensor="Libre")
    with pytest.raises(NotFoundError, match="Insulet"):
        Trial(cohort, "pid", pump="Omnipod")
    with pytest.raises(ValidationError, match="days"):
        Trial(cohort, "pid", days=0)
    with pytest.raises(ValidationError, match="seed"):
        Trial(cohort, "pid", seed=-3)
    with pytest.raises(ValidationError, match="at least one subject"):
        Trial(cohort.select([]), "pid")
    with pytest.raises(ValidationError, match="chunk_size"):
        run_trial(trial, scheduler="serial", chunk_size=0)
