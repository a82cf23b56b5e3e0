"""Observation models and readings for the sequential filters.

An :class:`ObservationModel` maps the outputs a :class:`~medtwin.core.estimate.dynamics.Dynamics`
reports (name -> ``(n,)`` array) to one predicted value per sample, with a Gaussian
:class:`NoiseModel` (additive sd plus a coefficient of variation). A :class:`Reading` is what
arrives: a time in the model's unit and values by observation-model name; a value that is
missing (absent, None or NaN) is simply not used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from medtwin.core.errors import ValidationError

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class NoiseModel:
    """Gaussian reading error with variance ``sd^2 + (cv * predicted)^2``."""

    sd: float = 0.0
    cv: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sd) and math.isfinite(self.cv) and self.sd >= 0
                and self.cv >= 0 and (self.sd > 0 or self.cv > 0)):
            raise ValidationError(f"need sd >= 0 and cv >= 0, not both 0 (got {self.sd}, "
                                  f"{self.cv})", where="NoiseModel")

    def variance(self, predicted: np.ndarray | float) -> np.ndarray:
        """Reading variance at a predicted value (floored at 1e-12)."""
        p = np.asarray(predicted, dtype=float)
        return np.maximum(self.sd ** 2 + (self.cv * p) ** 2, 1e-12)

    def log_pdf(self, y: float, predicted: np.ndarray) -> np.ndarray:
        """Log density of reading ``y`` given each predicted value."""
        v = self.variance(predicted)
        return -0.5 * (np.log(2.0 * math.pi * v) + (y - predicted) ** 2 / v)


@dataclass(frozen=True)
class ObservationModel:
    """A measured quantity: ``function`` is an output name or a function of the outputs
    (``Mapping[str, (n,) array] -> (n,) array``), read with ``noise``."""

    name: str
    function: str | Callable[[Outputs], np.ndarray]
    noise: NoiseModel

    def __post_init__(self) -> None:
        if not self.name:
            raise ValidationError("an observation model needs a name", where="ObservationModel")

    def predict(self, outputs: Outputs) -> np.ndarray:
        """Predicted (noise-free) value per sample ``(n,)``."""
        if isinstance(self.function, str):
            if self.function not in outputs:
                raise ValidationError(f"no output {self.function!r}; the dynamics report "
                                      f"{', '.join(outputs)}", where=f"observation {self.name!r}")
            return np.asarray(outputs[self.function], dtype=float)
        return np.asarray(self.function(outputs), dtype=float)


@dataclass(frozen=True)
class Reading:
    """Values observed at ``time`` (model time unit), by observation-model name."""

    time: float
    values: Mapping[str, float | None]
    source_id: str | None = None
    #: order of arrival, set by the filter (ties at equal times keep arrival order)
    arrival: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.time)):
            raise ValidationError(f"time must be finite, got {self.time}",
                                  where=f"reading {self.source_id or ''}".strip())

    def present(self) -> dict[str, float]:
        """The values that are there (missing ones dropped)."""
        out = {}
        for k, v in self.values.items():
            if v is None:
                continue
            f = float(v)
            if math.isfinite(f):
                out[k] = f
        return out


def check_observations(observations: tuple[ObservationModel, ...]) -> dict[str, int]:
    """Name -> index of each observation model; duplicates are errors."""
    if not observations:
        raise ValidationError("give at least one observation model", where="observations")
    index: dict[str, int] = {}
    for i, o in enumerate(observations):
        if o.name in index:
            raise ValidationError(f"observation {o.name!r} is defined twice",
                                  where="observations")
        index[o.name] = i
    return index
