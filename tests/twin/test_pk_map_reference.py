"""MAP personalisation reproduces NONMEM's etas (and OFV) on mapbayr's model 001 reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.interop.nonmem import EventTable
from medtwin.twin.pk import PKTwin


def _mapbayr_table(reference) -> EventTable:
    table = EventTable.read_csv(reference / "pk" / "mapbayr_model001_data.csv")
    r = table.records
    # as mapbayr's test: drop the dosing rows at time 72 of the s2_sampling 1:2 subjects
    drop = r[(r["EVID"] == 1) & (r["TIME"] == 72) & r["s2_sampling"].isin([1, 2])]["LINE"]
    assert len(drop) == 4
    return table.drop_lines(drop)


@pytest.fixture(scope="module")
def fitted(reference):
    phi = pd.read_csv(reference / "pk" / "mapbayr_model001_nonmem.phi", sep=r"\s+", skiprows=1)
    return PKTwin("mapbayr-001").fit(_mapbayr_table(reference)), phi


def test_etas_match_nonmem_for_all_subjects(fitted):
    twin, phi = fitted
    expected = phi[["ETA(1)", "ETA(2)", "ETA(3)"]].to_numpy()
    assert list(twin.subjects_) == [str(i) for i in phi["ID"]]
    assert np.abs(twin.eta_ - expected).max() < 1e-4
    assert twin.converged_.all()


def test_ofv_and_individual_clearance_of_subject_1(fitted):
    twin, _ = fitted
    assert twin.ofv_[0] == pytest.approx(22.29351, abs=1e-4)
    assert twin.params_["CL [L/h]"].iloc[0] == pytest.approx(5.9975519, rel=1e-5)
    assert twin.params_["CL [L/h]"].iloc[1] == pytest.approx(3.4588236, rel=1e-5)


def test_nonmem_obj_and_etc_from_the_expected_information(fitted):
    """.phi OBJ = OFV + log|Omega| - log|C_i|, with C_i NONMEM's ETC."""
    twin, phi = fitted
    etc = phi[["ETC(1,1)", "ETC(2,1)", "ETC(2,2)", "ETC(3,1)", "ETC(3,2)", "ETC(3,3)"]]
    for i, row in enumerate(etc.to_numpy()):
        c = np.array([[row[0], row[1], row[3]], [row[1], row[2], row[4]],
                      [row[3], row[4], row[5]]])
        np.testing.assert_allclose(twin.cov_expected_[i], c, rtol=1e-4, atol=1e-7)
    obj = (twin.ofv_ + np.log(np.linalg.det(twin.model_.omega))
           - np.log(np.linalg.det(twin.cov_expected_)))
    np.testing.assert_allclose(obj, phi["OBJ"].to_numpy(), atol=1e-4)


def test_laplace_covariance_is_twice_the_inverse_hessian(fitted):
    from medtwin.core.estimate.map import hessian
    from medtwin.twin.pk import predictor

    twin, _ = fitted
    H = hessian(predictor(twin.model_, twin.data_), twin.eta_, twin.data_.observed,
                twin.model_.omega, twin.model_.error)
    np.testing.assert_allclose(twin.cov_, 2 * np.linalg.inv(H), rtol=1e-6)
    assert np.all(np.linalg.eigvalsh(twin.cov_) > 0)


def test_bad_start_and_restarts(reference):
    """From a corner of the bounds it still finds the mode; an unconverged run restarts."""
    from medtwin.core.estimate.map import map_estimate
    from medtwin.twin.pk import predictor

    twin = PKTwin("mapbayr-001").fit(_mapbayr_table(reference).select(["1"]))
    m = twin.model_
    predict = predictor(m, twin.data_)
    res = map_estimate(predict, twin.data_.observed, m.omega, m.error,
                       eta0=np.array([[1.38, -1.38, 1.38]]))
    np.testing.assert_allclose(res.eta, twin.eta_, atol=1e-6)
    short = map_estimate(predict, twin.data_.observed, m.omega, m.error,
                         eta0=np.array([[1.38, -1.38, 1.38]]), max_iter=1, restarts=0)
    assert not short.converged[0] and short.restarts[0] == 0
    retried = map_estimate(predict, twin.data_.observed, m.omega, m.error,
                           eta0=np.array([[1.38, -1.38, 1.38]]), max_iter=1, restarts=3)
    assert retried.restarts[0] >= 1
