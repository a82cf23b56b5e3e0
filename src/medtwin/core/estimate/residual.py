"""Residual error models and the per-observation terms of the MAP / FOCE-I objectives.

Variance of an observation given its prediction ``f``:
``var = additive_sd**2 + (proportional_sd * f)**2`` (additive, proportional or combined).
With ``log_scale`` the data and predictions are compared as logarithms and
``var = additive_sd**2`` on that scale (exponential error). Below-LLOQ samples enter by the M3
method (Beal, J Pharmacokinet Pharmacodyn 28:481, 2001): ``-2 log Phi((LLOQ - f) / sd)``.

A prediction of exactly 0 (a sample at the time of an oral dose, before the first dose or
within a lag time) has no proportional variance. It is given the variance of a prediction of
1, ``additive_sd**2 + proportional_sd**2``, as mapbayr does: its ``h()`` (the derivative of
the prediction by epsilon that builds the variance) sets ``pred[pred == 0] <- 1`` "to avoid
division by zero for proportional error" (R/mapbayest_ofv_computation.R, commit 17a5c30,
mapbayr 0.10.2). NONMEM itself stops on a zero residual variance ("VAR-COV OF DATA FROM
INDIVIDUAL RECORD ESTIMATED TO BE SINGULAR", e.g. Y = F*EXP(ERR(1)) at F = 0; nmusers,
4 Oct 1996), which is why control streams guard it with ``IF (W.EQ.0) W = 1`` (there the sd
becomes 1, not mapbayr's ``sqrt(additive_sd**2 + proportional_sd**2)``; medtwin follows
mapbayr). A prediction that is 0 for every eta thus adds a constant to the objective and
does not move the estimate. Only an exact 0 is replaced; tiny predictions keep their own
(tiny, floored) variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from medtwin.core.errors import ValidationError

_TINY = 1e-12


def _nonzero(f: np.ndarray) -> np.ndarray:
    """``f`` with exact zeros replaced by 1 (mapbayr's ``h()``; the module docstring)."""
    f = np.asarray(f, float)
    return np.where(f == 0.0, 1.0, f)


@dataclass(frozen=True)
class ResidualError:
    """Additive and/or proportional residual error (standard deviations), or log-scale."""

    additive_sd: float = 0.0
    proportional_sd: float = 0.0
    log_scale: bool = False

    def __post_init__(self) -> None:
        for name in ("additive_sd", "proportional_sd"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValidationError(f"must be a finite number >= 0, got {v}",
                                      where=f"error.{name}")
        if self.additive_sd == 0 and self.proportional_sd == 0:
            raise ValidationError("needs an additive or a proportional part > 0", where="error")
        if self.log_scale and self.proportional_sd:
            raise ValidationError("a log-scale error has only an additive sd (on the log scale)",
                                  where="error")

    @property
    def kind(self) -> str:
        """``additive``, ``proportional``, ``combined`` or ``exponential``."""
        if self.log_scale:
            return "exponential"
        if self.additive_sd and self.proportional_sd:
            return "combined"
        return "additive" if self.additive_sd else "proportional"

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Put data or predictions on the scale the error lives on (log for log-scale)."""
        if self.log_scale:
            return np.log(np.maximum(values, _TINY))
        return np.asarray(values, float)

    def dtransform(self, f: np.ndarray) -> np.ndarray:
        """Derivative of :meth:`transform` at ``f``."""
        return 1.0 / np.maximum(f, _TINY) if self.log_scale else np.ones_like(f)

    def variance(self, f: np.ndarray) -> np.ndarray:
        """Variance on the error's scale, given the (untransformed) prediction ``f`` (a
        prediction of exactly 0 counts as 1: see the module docstring)."""
        v = self.additive_sd**2 + (self.proportional_sd * _nonzero(f)) ** 2
        return np.maximum(v, _TINY)

    def dvariance(self, f: np.ndarray) -> np.ndarray:
        """d variance / d f."""
        return 2.0 * self.proportional_sd**2 * f


@dataclass(frozen=True)
class ElementError:
    """Residual error given per observation (arrays broadcasting against the predictions):
    what :class:`ResidualErrors` selects for the observations of several kinds."""

    additive_sd: np.ndarray
    proportional_sd: np.ndarray
    log_scale: np.ndarray

    def transform(self, values: np.ndarray) -> np.ndarray:  # noqa: D102
        v = np.asarray(values, float)
        return np.where(self.log_scale, np.log(np.maximum(v, _TINY)), v)

    def dtransform(self, f: np.ndarray) -> np.ndarray:  # noqa: D102
        return np.where(self.log_scale, 1.0 / np.maximum(f, _TINY), 1.0)

    def variance(self, f: np.ndarray) -> np.ndarray:  # noqa: D102
        prop = np.where(self.log_scale, 0.0, self.proportional_sd)
        return np.maximum(self.additive_sd**2 + (prop * _nonzero(f)) ** 2, _TINY)

    def dvariance(self, f: np.ndarray) -> np.ndarray:  # noqa: D102
        return 2.0 * np.where(self.log_scale, 0.0, self.proportional_sd) ** 2 * f


@dataclass(frozen=True)
class ResidualErrors:
    """One residual error per observation kind (e.g. parent and metabolite), applied to each
    observation through its kind index (``ObservedData.kind``)."""

    errors: tuple[ResidualError, ...]
    names: tuple[str, ...] = ()

    def select(self, kind: np.ndarray) -> ElementError:
        """The error of each observation whose kind index is ``kind``."""
        k = np.asarray(kind, np.int64)
        pick = np.array([[e.additive_sd, e.proportional_sd, float(e.log_scale)]
                         for e in self.errors])[k]
        return ElementError(pick[..., 0], pick[..., 1], pick[..., 2] > 0)


AnyError = ResidualError | ResidualErrors


def error_for(error: AnyError, kind: np.ndarray | None) -> ResidualError | ElementError:
    """The error applying to observations of ``kind`` (one error: itself)."""
    if isinstance(error, ResidualError):
        return error
    if kind is None:
        if len(error.errors) != 1:
            raise ValidationError(f"{len(error.errors)} residual errors but the data say "
                                  "nothing about which observation is which", where="error")
        return error.errors[0]
    return error.select(kind)


def observation_terms(
    error: ResidualError | ElementError,
    y: np.ndarray,
    f: np.ndarray,
    mask: np.ndarray,
    blq: np.ndarray,
    lloq: np.ndarray,
) -> np.ndarray:
    """Objective contribution of each observation, 0 where ``mask`` is False.

    Quantified: ``log var + (y - f)^2 / var``; below LLOQ (``blq``): ``-2 log Phi((LLOQ - f)/sd)``.
    ``y``, ``blq``, ``lloq`` broadcast against ``f``.
    """
    var = error.variance(f)
    g = error.transform(f)
    quant = np.log(var) + (error.transform(y) - g) ** 2 / var
    z = (error.transform(lloq) - g) / np.sqrt(var)
    m3 = -2.0 * log_ndtr(z)
    return np.where(mask, np.where(blq, m3, quant), 0.0)


def observation_derivatives(
    error: ResidualError | ElementError,
    y: np.ndarray,
    f: np.ndarray,
    mask: np.ndarray,
    blq: np.ndarray,
    lloq: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """First derivative of each term by ``f``, and its expected (Fisher) curvature, both >= 0
    where masked out. Used for the gradient and a Gauss-Newton Hessian."""
    var = error.variance(f)
    dvar = error.dvariance(f)
    g = error.transform(f)
    dg = error.dtransform(f)
    r = error.transform(y) - g
    d_quant = dvar * (1.0 / var - r * r / var**2) - 2.0 * r * dg / var
    w_quant = 2.0 * (dg * dg / var + 0.5 * dvar * dvar / var**2)
    sd = np.sqrt(var)
    z = (error.transform(lloq) - g) / sd
    mills = np.exp(-0.5 * z * z - 0.5 * math.log(2 * math.pi) - log_ndtr(z))  # phi / Phi
    dz = -dg / sd - z * dvar / (2.0 * var)
    d_m3 = -2.0 * mills * dz
    w_m3 = 2.0 * mills * (z + mills) * dz * dz
    d = np.where(mask, np.where(blq, d_m3, d_quant), 0.0)
    w = np.where(mask, np.where(blq, w_m3, w_quant), 0.0)
    return d, w
