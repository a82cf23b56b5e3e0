"""Duration distributions of a model file, validated and sampled in numpy blocks.

Parameterisations follow the usual DES conventions: a lognormal is given by the mean and
variance (or sd) *of the variable itself* (as in sim-tools/treat-sim), a gamma by mean and
variance (or shape and scale), a truncated normal by mean, variance and a lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from medtwin.core.filecontext import Where, mapping, need, number, unknown_keys

KINDS = ("exponential", "lognormal", "truncated_normal", "gamma", "weibull", "uniform",
         "fixed", "empirical")


@dataclass(frozen=True)
class Distribution:
    """A validated distribution: ``kind`` and its canonical parameters."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    # --- sampling -----------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` values (a block) from ``rng``."""
        p, k = self.params, self.kind
        if k == "exponential":
            return rng.exponential(p["mean"], n)
        if k == "lognormal":
            return rng.lognormal(p["mu"], p["sigma"], n)
        if k == "truncated_normal":
            x = rng.normal(p["mean"], p["sd"], n)
            low, high = p.get("lower", -np.inf), p.get("upper", np.inf)
            if p.get("method", "resample") == "clip":
                return np.clip(x, low, high)
            bad = (x < low) | (x > high)
            while bad.any():  # resample out-of-range values (a true truncated normal)
                x[bad] = rng.normal(p["mean"], p["sd"], int(bad.sum()))
                bad = (x < low) | (x > high)
            return x
        if k == "gamma":
            return rng.gamma(p["shape"], p["scale"], n)
        if k == "weibull":
            return p["scale"] * rng.weibull(p["shape"], n)
        if k == "uniform":
            return rng.uniform(p["low"], p["high"], n)
        if k == "fixed":
            return np.full(n, p["value"], dtype=float)
        values = np.asarray(p["values"], dtype=float)
        return rng.choice(values, n, p=p.get("probabilities"))

    def mean(self) -> float:
        """The mean of the distribution (the truncated normal's untruncated mean)."""
        p, k = self.params, self.kind
        if k in ("exponential", "truncated_normal"):
            return float(p["mean"])
        if k == "lognormal":
            return math.exp(p["mu"] + p["sigma"] ** 2 / 2)
        if k == "gamma":
            return p["shape"] * p["scale"]
        if k == "weibull":
            return p["scale"] * math.gamma(1 + 1 / p["shape"])
        if k == "uniform":
            return (p["low"] + p["high"]) / 2
        if k == "fixed":
            return float(p["value"])
        return float(np.average(p["values"], weights=p.get("probabilities")))

    def scipy(self) -> Any:
        """The matching frozen scipy.stats distribution (None for empirical)."""
        p, k = self.params, self.kind
        if k == "exponential":
            return stats.expon(scale=p["mean"])
        if k == "lognormal":
            return stats.lognorm(p["sigma"], scale=math.exp(p["mu"]))
        if k == "truncated_normal":
            lo, hi = p.get("lower", -np.inf), p.get("upper", np.inf)
            return stats.truncnorm((lo - p["mean"]) / p["sd"], (hi - p["mean"]) / p["sd"],
                                   loc=p["mean"], scale=p["sd"])
        if k == "gamma":
            return stats.gamma(p["shape"], scale=p["scale"])
        if k == "weibull":
            return stats.weibull_min(p["shape"], scale=p["scale"])
        if k == "uniform":
            return stats.uniform(p["low"], p["high"] - p["low"])
        return None

    def remaining(self, rng: np.random.Generator, elapsed: np.ndarray) -> np.ndarray:
        """Remaining durations given time already spent: draws of X - a given X > a."""
        elapsed = np.asarray(elapsed, dtype=float)
        if elapsed.size == 0:
            return elapsed.copy()
        if self.kind == "fixed":
            return np.maximum(self.params["value"] - elapsed, 0.0)
        if self.kind == "empirical":
            values = np.sort(np.asarray(self.params["values"], dtype=float))
            out = np.empty_like(elapsed)
            for i, a in enumerate(elapsed):
                later = values[values > a]
                out[i] = (rng.choice(later) - a) if later.size else 0.0
            return out
        d = self.scipy()
        u = rng.uniform(size=elapsed.shape)
        sf = d.sf(elapsed)
        x = d.isf(np.maximum(u * sf, 1e-300))
        x = np.where(sf > 1e-12, x, elapsed)  # beyond the support's tail: leaves at once
        return np.maximum(x - elapsed, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The file form (what a user would write)."""
        p, k = self.params, self.kind
        if k == "lognormal":
            m = self.mean()
            var = (math.exp(p["sigma"] ** 2) - 1) * m * m
            return {"dist": k, "mean": _r(m), "variance": _r(var)}
        if k == "truncated_normal":
            out = {"dist": k, "mean": _r(p["mean"]), "sd": _r(p["sd"])}
            for key in ("lower", "upper", "method"):
                if key in p:
                    out[key] = p[key]
            return out
        return {"dist": k, **{key: (_r(v) if isinstance(v, float) else v) for key, v in p.items()}}


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def lognormal_from_moments(mean: float, variance: float) -> tuple[float, float]:
    """(mu, sigma) of the underlying normal for a lognormal with this mean and variance."""
    sigma2 = math.log(1 + variance / mean**2)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def _spread(w: Where, what: str) -> float:
    """Variance from 'variance' or 'sd' (one of them, positive)."""
    d = w.value
    if "variance" in d and "sd" in d:
        w.fail(f"{what} gives both variance and sd", "keep one of 'variance' or 'sd'")
    if "variance" in d:
        return number(w.child("variance"), positive=True)
    if "sd" in d:
        return number(w.child("sd"), positive=True) ** 2
    w.fail(f"{what} needs a spread", "add 'variance:' (of the variable) or 'sd:'")


def parse_distribution(w: Where) -> Distribution:
    """Validate the distribution at ``w`` (a mapping with ``dist:``) and build it."""
    d = mapping(w, "a distribution")
    kind = need(w, "dist", "a distribution").value
    if kind not in KINDS:
        w.child("dist").fail(f"unknown distribution '{kind}'", f"use one of {list(KINDS)}")
    if kind == "exponential":
        unknown_keys(w, {"dist", "mean", "rate"})
        if "rate" in d:
            return Distribution(kind, {"mean": 1 / number(w.child("rate"), positive=True)})
        return Distribution(kind, {"mean": number(need(w, "mean", "exponential"),
                                                  positive=True)})
    if kind == "lognormal":
        unknown_keys(w, {"dist", "mean", "variance", "sd"})
        m = number(need(w, "mean", "lognormal"), positive=True)
        mu, sigma = lognormal_from_moments(m, _spread(w, "lognormal"))
        return Distribution(kind, {"mu": mu, "sigma": sigma})
    if kind == "truncated_normal":
        unknown_keys(w, {"dist", "mean", "variance", "sd", "lower", "upper", "method"})
        m = number(need(w, "mean", "truncated_normal"))
        p: dict[str, Any] = {"mean": m, "sd": math.sqrt(_spread(w, "truncated_normal"))}
        for key in ("lower", "upper"):
            if key in d:
                p[key] = number(w.child(key))
        if p.get("lower", -np.inf) >= p.get("upper", np.inf):
            w.child("upper").fail("upper bound is not above the lower bound",
                                  "make 'upper' greater than 'lower'")
        if "lower" not in p:
            w.fail("a duration needs a lower bound", "add 'lower:' (e.g. 0 or 0.5)")
        if p["lower"] < 0:
            w.child("lower").fail("a duration cannot be negative", "use 'lower: 0' or more")
        method = d.get("method", "resample")
        if method not in ("resample", "clip"):
            w.child("method").fail(f"unknown method '{method}'", "use 'resample' (a true "
                                   "truncated normal) or 'clip' (values below lower are set "
                                   "to lower, as sim-tools does)")
        p["method"] = method
        if method == "resample" and stats.norm.sf((p["lower"] - m) / p["sd"]) < 1e-6:
            w.fail("almost all of this normal lies below its lower bound",
                   "raise the mean or lower the bound")
        return Distribution(kind, p)
    if kind == "gamma":
        unknown_keys(w, {"dist", "mean", "variance", "sd", "shape", "scale"})
        if "shape" in d:
            return Distribution(kind, {"shape": number(w.child("shape"), positive=True),
                                       "scale": number(need(w, "scale", "gamma"),
                                                       positive=True)})
        m = number(need(w, "mean", "gamma"), positive=True)
        v = _spread(w, "gamma")
        return Distribution(kind, {"shape": m * m / v, "scale": v / m})
    if kind == "weibull":
        unknown_keys(w, {"dist", "shape", "scale"})
        return Distribution(kind, {"shape": number(need(w, "shape", "weibull"), positive=True),
                                   "scale": number(need(w, "scale", "weibull"), positive=True)})
    if kind == "uniform":
        unknown_keys(w, {"dist", "low", "high"})
        low = number(need(w, "low", "uniform"), nonneg=True)
        high = number(need(w, "high", "uniform"))
        if high <= low:
            w.child("high").fail("'high' must exceed 'low'", "swap or widen the bounds")
        return Distribution(kind, {"low": low, "high": high})
    if kind == "fixed":
        unknown_keys(w, {"dist", "value"})
        return Distribution(kind, {"value": number(need(w, "value", "fixed"), nonneg=True)})
    unknown_keys(w, {"dist", "values", "probabilities"})
    vw = need(w, "values", "empirical")
    if not isinstance(vw.value, list) or not vw.value:
        vw.fail("'values' must be a non-empty list", "list observed durations, e.g. [3, 5, 8]")
    values = [number(vw.child(i), nonneg=True) for i in range(len(vw.value))]
    p = {"values": values}
    if "probabilities" in d:
        pw = w.child("probabilities")
        if not isinstance(pw.value, list) or len(pw.value) != len(values):
            pw.fail("'probabilities' must list one probability per value",
                    f"give {len(values)} probabilities")
        probs = [number(pw.child(i), nonneg=True) for i in range(len(values))]
        if abs(sum(probs) - 1) > 1e-6:
            pw.fail(f"probabilities sum to {sum(probs):.6g}, not 1", "rescale them to sum to 1")
        p["probabilities"] = probs
    return Distribution(kind, p)
