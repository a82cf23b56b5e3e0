"""Model averaging of MAP fits (mapbayr's compute_weights(); Uster et al. 2021)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import ValidationError
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.closed_form import DoseArrays
from medtwin.models.pk.spec import parse_model
from medtwin.twin.pk import PKTwin
from medtwin.twin.pk_averaging import average_models, model_weights


def _model(name, cl=4.0, v=70.0, ka=1.0, ka_eta=True, log_scale=False):
    """mapbayr's model 001 (1 compartment, oral) with other typical values."""
    params = {"CL": {"value": cl, "unit": "L/h", "eta": "ETA1"},
              "V": {"value": v, "unit": "L", "eta": "ETA2"},
              "KA": {"value": ka, "unit": "1/h", **({"eta": "ETA3"} if ka_eta else {})}}
    etas = ["ETA1", "ETA2"] + (["ETA3"] if ka_eta else [])
    return parse_model({
        "name": name, "structure": {"compartments": 1, "absorption": "first-order"},
        "units": {"time": "h", "amount": "mg", "concentration": "mg/L"},
        "parameters": params, "omega": {"etas": etas, "variance": [0.2] * len(etas)},
        "error": {"log_scale": True, "additive_sd": 0.2} if log_scale
        else {"proportional_var": 0.05}})


TRUE = _model("truth")
TIMES = np.array([0.5, 1, 2, 4, 6, 8, 12, 16, 24])


def _data(times, eta=(0.3, -0.2, 0.1), seed=3, subjects=("1", "2")):
    """Levels simulated from ``TRUE`` with proportional noise (sd 0.05), 100 mg at 0."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in subjects:
        tv = TRUE.typical_values({}, 1)
        p = TRUE.individual(tv, np.array(eta, float)[None, None, :])
        d = DoseArrays.empty(1, 1)
        d.time[0, 0], d.amt[0, 0], d.route[0, 0] = 0.0, 100.0, 0
        c = TRUE.predict(p, d, np.asarray(times, float)[None])[0, 0]
        c = c * (1 + 0.05 * rng.standard_normal(c.size))
        rows.append(f"{s},0,1,100,1,.,1")
        rows += [f"{s},{t:g},0,0,2,{y:.6g},0" for t, y in zip(times, c, strict=True)]
    text = "ID,TIME,EVID,AMT,CMT,DV,MDV\n" + "\n".join(rows) + "\n"
    return EventTable.from_frame(pd.read_csv(io.StringIO(text), dtype=str,
                                             keep_default_na=False))


@pytest.fixture(scope="module")
def fits():
    table = _data(TIMES[[1, 4, 7]])
    return {"A": PKTwin(_model("A")).fit(table),
            "B": PKTwin(_model("B", cl=6.0)).fit(table),
            "C": PKTwin(_model("C", ka=2.0, ka_eta=False)).fit(table)}


def test_weights_are_mapbayrs_formulas_from_the_ofvs(fits):
    ofv = np.column_stack([fits[m].ofv_ for m in "ABC"])
    assert all(f.converged_.all() for f in fits.values())
    ll = np.exp(-0.5 * ofv)
    ll /= ll.sum(axis=1, keepdims=True)
    aic = np.exp(-0.5 * ofv - np.array([3, 3, 2]))
    aic /= aic.sum(axis=1, keepdims=True)
    w_ll = model_weights(fits, "LL")
    w_aic = model_weights(fits, "AIC")
    assert list(w_ll.columns) == ["A", "B", "C"] and list(w_ll.index) == ["1", "2"]
    np.testing.assert_allclose(w_ll.to_numpy(), ll, rtol=1e-12)
    np.testing.assert_allclose(w_aic.to_numpy(), aic, rtol=1e-12)
    # the one-eta-fewer model C gains by e^1 relative to the others under AIC
    ratio = (w_aic["C"] / w_aic["A"]) / (w_ll["C"] / w_ll["A"])
    np.testing.assert_allclose(ratio, math.e, rtol=1e-12)
    # a list of twins is named by model name
    assert list(model_weights(list(fits.values())).columns) == ["A", "B", "C"]


def test_averaged_prediction_is_the_weighted_mean(fits):
    t = np.array([1.0, 5.0, 30.0])
    avg = average_models(fits, t, "AIC")
    w = avg.weights
    for s in ("1", "2"):
        rows = avg.predictions[avg.predictions["ID"] == s]
        expect = sum(w.at[s, m] * fits[m].predict(t, s)[0] for m in "ABC")
        np.testing.assert_allclose(rows["average"].to_numpy(), expect, rtol=1e-12)
        np.testing.assert_allclose(rows["B"].to_numpy(), fits["B"].predict(t, s)[0])
    # a forecast under other doses
    d = DoseArrays.empty(1, 2)
    d.time[0], d.amt[0], d.route[0] = [0.0, 24.0], [100.0, 200.0], [0, 0]
    fc = average_models(fits, t + 24, doses={"1": d, "2": d}).predictions
    one = fc[fc["ID"] == "1"]
    np.testing.assert_allclose(one["A"].to_numpy(), fits["A"].predict(t + 24, "1", d)[0])


def test_the_data_generating_model_takes_the_weight_as_data_grow():
    """B absorbs 5x slower than the truth, with no eta to adapt: one sample cannot tell the
    models apart, three mostly can, nine leave A with all the weight under both schemes
    (B's fit of the absorption phase keeps getting worse), and the average becomes A's."""
    w_ll, w_aic = [], []
    for times in (TIMES[[4]], TIMES[[1, 4, 7]], TIMES):
        table = _data(times)
        fits = {"A": PKTwin(_model("A")).fit(table),
                "B": PKTwin(_model("B", ka=0.2, ka_eta=False)).fit(table)}
        w_ll.append(model_weights(fits, "LL")["A"].to_numpy())
        w_aic.append(model_weights(fits, "AIC")["A"].to_numpy())
    w_ll, w_aic = np.array(w_ll), np.array(w_aic)
    assert np.all(np.diff(w_ll, axis=0) > 0) and np.all(np.diff(w_aic, axis=0) > 0)
    assert w_ll[0].max() < 0.6  # one sample: no clear winner
    assert w_ll[-1].min() > 1 - 1e-7 and w_aic[-1].min() > 1 - 2e-7
    avg = average_models(fits, TIMES, "AIC").predictions
    np.testing.assert_allclose(avg["average"], avg["A"], rtol=1e-6)
    assert np.abs(avg["B"] / avg["A"] - 1).max() > 0.2  # and B's prediction is far off


def test_fits_that_cannot_be_compared_are_refused(fits):
    table = _data(TIMES[[1, 4, 7]])
    one = PKTwin(_model("A")).fit(table.select(["1"]))
    with pytest.raises(ValidationError, match="same event table"):
        model_weights({"A": fits["A"], "one": one})
    other = PKTwin(_model("A")).fit(_data(TIMES[[1, 4, 7]], seed=4))
    with pytest.raises(ValidationError, match="other observations"):
        model_weights({"A": fits["A"], "other": other})
    short = PKTwin(_model("B", cl=6.0), max_iter=1, restarts=0).fit(table)
    assert not short.converged_.all()
    with pytest.raises(ValidationError, match="did not converge") as exc:
        model_weights({"A": fits["A"], "short": short})
    assert exc.value.where == "model short"
    logs = PKTwin(_model("L", log_scale=True)).fit(table)
    with pytest.raises(ValidationError, match="scale"):
        model_weights({"A": fits["A"], "L": logs})
    with pytest.raises(ValidationError, match="scheme"):
        model_weights(fits, "BIC")
    with pytest.raises(ValidationError, match="at least 2"):
        model_weights({"A": fits["A"]})
