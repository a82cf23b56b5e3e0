"""What a sequential filter learns: a subset of a model's parameters, each with a prior and a
transform to an unbounded scale (where the filters work and the prior is Gaussian).

- ``identity``: ``z = theta``;
- ``log``: ``z = log(theta)`` (a positive parameter; ``value`` is the prior median);
- ``logit``: ``z = logit((theta - lower) / (upper - lower))`` (a bounded parameter).

``walk_sd`` lets the parameter drift as a random walk on the transformed scale (sd per square
root of the model's time unit), how a twin follows a patient who changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medtwin.core.errors import ValidationError

TRANSFORMS = ("identity", "log", "logit")


@dataclass(frozen=True)
class LearnedParameter:
    """One learned parameter: ``label`` (``"name [unit]"`` as the model declares it), prior
    centre ``value`` on the natural scale and prior ``sd`` on the transformed scale."""

    label: str
    value: float
    sd: float
    transform: str = "log"
    lower: float = 0.0
    upper: float = 1.0
    walk_sd: float = 0.0

    def __post_init__(self) -> None:
        where = f"learned parameter {self.label!r}"
        if self.transform not in TRANSFORMS:
            raise ValidationError(f"unknown transform {self.transform!r}; use one of "
                                  f"{', '.join(TRANSFORMS)}", where=where)
        for name in ("value", "sd", "walk_sd", "lower", "upper"):
            if not math.isfinite(getattr(self, name)):
                raise ValidationError(f"{name} must be finite, got {getattr(self, name)}",
                                      where=where)
        if self.sd <= 0 or self.walk_sd < 0:
            raise ValidationError(f"sd must be > 0 and walk_sd >= 0, got {self.sd}, "
                                  f"{self.walk_sd}", where=where)
        if self.transform == "log" and self.value <= 0:
            raise ValidationError(f"a log-transformed parameter needs value > 0, got "
                                  f"{self.value}", where=where)
        if self.transform == "logit" and not self.lower < self.value < self.upper:
            raise ValidationError(f"a logit-transformed parameter needs lower < value < upper, "
                                  f"got {self.lower} < {self.value} < {self.upper}", where=where)

    def forward(self, theta: np.ndarray | float) -> np.ndarray:
        """Natural scale -> transformed scale."""
        t = np.asarray(theta, dtype=float)
        if self.transform == "log":
            return np.log(t)
        if self.transform == "logit":
            u = (t - self.lower) / (self.upper - self.lower)
            return np.log(u) - np.log1p(-u)
        return t.copy()

    def inverse(self, z: np.ndarray | float) -> np.ndarray:
        """Transformed scale -> natural scale."""
        zz = np.asarray(z, dtype=float)
        if self.transform == "log":
            return np.exp(zz)
        if self.transform == "logit":
            return self.lower + (self.upper - self.lower) / (1.0 + np.exp(-zz))
        return zz.copy()

    @property
    def prior_mean(self) -> float:
        """Prior mean on the transformed scale."""
        return float(self.forward(self.value))


def check_learned(learn: tuple[LearnedParameter, ...], labels: tuple[str, ...]) -> list[int]:
    """Columns of the learned parameters among a model's ``labels`` (none: the filter
    estimates states only); unknown or repeated labels are :class:`ValidationError`."""
    seen: set[str] = set()
    cols = []
    for lp in learn:
        if lp.label not in labels:
            raise ValidationError(f"the model has no parameter {lp.label!r}; known: "
                                  f"{', '.join(labels)}", where="learn")
        if lp.label in seen:
            raise ValidationError(f"{lp.label!r} is learned twice", where="learn")
        seen.add(lp.label)
        cols.append(labels.index(lp.label))
    return cols
