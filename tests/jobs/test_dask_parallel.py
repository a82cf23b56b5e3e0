"""Long work on Dask gives the same numbers as serial: ops optimisation and FOCE-I."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtwin.ops.loader import load_model
from medtwin.ops.optimise import optimise


def test_optimise_on_dask_equals_serial_and_reports_progress(dask):
    model = load_model("mm2")
    seen: list[tuple[int, int]] = []
    serial = optimise(model, "wait:service<=5", {"servers": (1, 4)}, reps=4, seed=1)
    parallel = optimise(model, "wait:service<=5", {"servers": (1, 4)}, reps=4, seed=1,
                        client=dask,
                        on_progress=lambda d, t: seen.append((d, t)))
    pd.testing.assert_frame_equal(serial, parallel)
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1]  # from none to all candidates
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_focei_on_dask_equals_serial(reference, dask):
    from medtwin.models.pk.spec import load_model as load_pk
    from medtwin.twin.pk_population import fit_population, theoph_events

    frame = pd.read_csv(reference / "pk" / "theoph.csv")
    table = theoph_events(frame, dose="mg/kg")
    model = load_pk("theophylline-nlme")
    batches: list[int] = []
    serial = fit_population(model, table)
    parallel = fit_population(model, table, client=dask, on_batch=batches.append)
    np.testing.assert_array_equal(serial.estimator.x_, parallel.estimator.x_)
    np.testing.assert_array_equal(serial.estimator.se_, parallel.estimator.se_)
    assert serial.estimator.n_evaluations_ == parallel.estimator.n_evaluations_
    assert batches == list(range(1, len(batches) + 1)) and len(batches) > 3
