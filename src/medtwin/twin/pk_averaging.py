"""Model averaging of several population models' MAP fits of the same subjects.

When several published models could describe a patient, each is fitted to the same levels and
their predictions are averaged with per-subject weights from how well each fits (Uster et al.,
Clin Pharmacol Ther 109:175, 2021). The weights are mapbayr's ``compute_weights()``
(R/modelaveraging.R, mapbayr 0.10.2), for subject ``i`` and model ``m``:

    LL:  w_im ∝ exp(-OFV_im / 2)
    AIC: w_im ∝ exp(-OFV_im / 2 - k_m)        (= exp(-AIC_im / 2), AIC = OFV + 2 k)

normalised to sum to 1 over the models. ``OFV_im`` is the subject's MAP objective at its
estimate *including* the prior term ``eta' Omega^-1 eta`` (mapbayr takes the optimiser's final
value, what its ``compute_ofv()`` returns; medtwin's ``PKTwin.ofv_`` is the same quantity), and
``k_m`` is the number of estimated etas (mapbayr counts the ``ETA`` columns of its estimates).
The weights are computed with each subject's smallest OFV subtracted first, which leaves them
unchanged and keeps ``exp`` from underflowing. An averaged prediction is the weighted mean of
the models' predictions at the subject's MAP estimate (mapbayr's ``do_model_averaging()``).

Beyond mapbayr's own checks (the same subject IDs), the fits must use the same observations,
have converged, and have residual errors on the same scale: an OFV on log-transformed data is
a density of another quantity than one on the concentrations, so the two cannot weight each
other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.models.pk.closed_form import DoseArrays
from medtwin.twin.pk import PKTwin

SCHEMES = ("LL", "AIC")


@dataclass(frozen=True)
class ModelAverage:
    """Per-subject model weights (index ``ID``, one column per model) and, when times were
    given, the predictions: ``ID``, ``time``, one column per model and ``average``."""

    scheme: str
    weights: pd.DataFrame
    predictions: pd.DataFrame | None = None


def _named(twins: Mapping[str, PKTwin] | Sequence[PKTwin]) -> dict[str, PKTwin]:
    if isinstance(twins, Mapping):
        named = {str(k): v for k, v in twins.items()}
    else:
        named = {}
        for t in twins:
            base = str(getattr(getattr(t, "model_", None), "name", "model"))
            name, n = base, 2
            while name in named:
                name, n = f"{base}#{n}", n + 1
            named[name] = t
    if len(named) < 2:
        raise ValidationError(f"model averaging needs at least 2 fitted twins, got {len(named)}",
                              where="twins")
    return named


def _log_scale(twin: PKTwin) -> tuple[bool, ...]:
    err = twin.model_.error
    errors = getattr(err, "errors", (err,))
    return tuple(bool(e.log_scale) for e in errors)


def _check(named: dict[str, PKTwin]) -> None:
    """Same subjects, same observations, converged fits, comparable objectives."""
    first_name, first = next(iter(named.items()))
    for name, t in named.items():
        if not hasattr(t, "ofv_"):
            raise ValidationError("the twin is not fitted; call fit(events) first",
                                  where=f"model {name}")
        if tuple(t.subjects_) != tuple(first.subjects_):
            raise ValidationError(
                f"fits subjects {list(t.subjects_)} but model {first_name!r} fits "
                f"{list(first.subjects_)}; fit every model to the same event table",
                where=f"model {name}")
        a, b = t.data_.observed, first.data_.observed
        for i, s in enumerate(t.subjects_):
            qa, qb = a.mask[i] & ~a.blq[i], b.mask[i] & ~b.blq[i]
            if (qa.sum() != qb.sum() or a.blq[i].sum() != b.blq[i].sum()
                    or not np.allclose(np.sort(a.y[i][qa]), np.sort(b.y[i][qb]))):
                raise ValidationError(
                    f"subject {s!r} has other observations here than under model "
                    f"{first_name!r} (e.g. a different LLOQ); objectives of different data "
                    "cannot be compared: fit every model to the same observations",
                    where=f"model {name}")
        bad = [s for s, c in zip(t.subjects_, t.converged_, strict=True) if not c]
        if bad:
            raise ValidationError(
                f"the MAP fit did not converge for subject(s) {bad}, so its OFV is not a "
                "posterior mode's and cannot weight the model; refit with more iterations or "
                "resets (PKTwin(max_iter=..., restarts=...)) or leave the model out",
                where=f"model {name}")
        if _log_scale(t) != _log_scale(first):
            raise ValidationError(
                f"its residual error is on another scale (log vs linear) than model "
                f"{first_name!r}'s: their OFVs are densities of different quantities and "
                "cannot weight each other; average models with errors on the same scale",
                where=f"model {name}")


def model_weights(twins: Mapping[str, PKTwin] | Sequence[PKTwin], scheme: str = "LL"
                  ) -> pd.DataFrame:
    """Per-subject weights of each fitted model (rows ``ID``, columns the model names, each
    row summing to 1), by ``scheme`` ``"LL"`` or ``"AIC"`` (see the module docstring)."""
    if scheme not in SCHEMES:
        raise ValidationError(f"unknown weighting scheme {scheme!r}; use one of {SCHEMES}",
                              where="scheme")
    named = _named(twins)
    _check(named)
    first = next(iter(named.values()))
    ofv = np.column_stack([np.asarray(t.ofv_, float) for t in named.values()])  # (S, M)
    score = -0.5 * ofv
    if scheme == "AIC":
        k = np.array([t.eta_.shape[1] for t in named.values()], float)
        score = score - k[None, :]
    score = score - score.max(axis=1, keepdims=True)
    w = np.exp(score)
    w /= w.sum(axis=1, keepdims=True)
    return pd.DataFrame(w, columns=list(named), index=pd.Index(list(first.subjects_), name="ID"))


def average_models(
    twins: Mapping[str, PKTwin] | Sequence[PKTwin],
    times: np.ndarray | Sequence[float] | None = None,
    scheme: str = "LL",
    *,
    doses: Mapping[str, DoseArrays] | None = None,
) -> ModelAverage:
    """Weights of each model per subject and, at ``times``, each model's MAP prediction and
    their weighted average (with the fitted doses, or ``doses[subject]`` for a forecast)."""
    weights = model_weights(twins, scheme)
    if times is None:
        return ModelAverage(scheme, weights)
    t = np.asarray(times, float).ravel()
    if not (t.size and np.all(np.isfinite(t))):
        raise ValidationError("needs at least one finite time", where="times")
    named = _named(twins)
    frames = []
    for s in weights.index:
        d = None if doses is None else doses.get(s)
        pred = {m: np.asarray(tw.predict(t, s, d), float).reshape(-1, t.size)[0]
                for m, tw in named.items()}
        avg = sum(weights.at[s, m] * pred[m] for m in named)
        frames.append(pd.DataFrame({"ID": s, "time": t, **pred, "average": avg}))
    return ModelAverage(scheme, weights, pd.concat(frames, ignore_index=True))
