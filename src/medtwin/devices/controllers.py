"""Insulin controllers for the whole cohort at once: basal-bolus, PID, and a registry by name.

A controller implements the glucose contract :class:`medtwin.models.glucose.loop.Controller`:
``sample_time``, ``reset(cohort)`` and ``__call__(obs) -> ControlAction``; the engine runs it
through :class:`~medtwin.models.glucose.loop.InsulinLoop`. The shipped ones also give
``compiled(cohort)``: a numba kernel doing the same arithmetic per subject, so the closed loop
runs compiled (a subclass that overrides ``__call__`` runs in Python). A user's own is a few
lines::

    class Fixed:
        sample_time = None                        # follow the sensor
        def reset(self, cohort): self.n = len(cohort)
        def __call__(self, obs):
            return ControlAction(basal=np.full(self.n, 0.02), bolus=np.zeros(self.n))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from medtwin.core.cohort import Cohort
from medtwin.core.controller import CONTROLLER_SIGNATURE, ControllerProgram
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.models.glucose.constants import INSULIN_PMOL_PER_UNIT
from medtwin.models.glucose.loop import ControlAction, ControllerInput
from medtwin.models.glucose.subjects import BW, CF, CR, U2SS


@njit(CONTROLLER_SIGNATURE, cache=True, nogil=True)
def basal_bolus_kernel(t, y, a, s, c, out) -> None:  # noqa: ANN001
    """:meth:`BasalBolus.__call__` for one subject; c = basal, CR, CF, target, threshold."""
    g = y[0]
    meal = a[0]
    correction = (g - c[3]) / c[2] if g > c[4] else 0.0
    out[0] = c[0]
    out[1] = meal / c[1] + correction if meal > 0 else 0.0


@njit(CONTROLLER_SIGNATURE, cache=True, nogil=True)
def pid_kernel(t, y, a, s, c, out) -> None:  # noqa: ANN001
    """:meth:`PID.__call__` for one subject; s = integral, last glucose, its time, seen-flag;
    c = basal, kp, ki, kd, target."""
    g = y[0]
    e = g - c[4]
    if s[3] == 0.0:
        h = 0.0
        de = 0.0
    else:
        h = t - s[2]
        de = (g - s[1]) / h if h > 0 else 0.0
    integral = s[0] + e * h
    raw = c[0] + c[1] * e + c[2] * integral + c[3] * de
    if not raw <= 0:
        s[0] = integral
    s[1] = g
    s[2] = t
    s[3] = 1.0
    out[0] = 0.0 if raw < 0.0 else raw  # np.maximum(raw, 0), NaN kept
    out[1] = 0.0


def basal_rate(cohort: Cohort) -> np.ndarray:
    """Each subject's steady-state basal insulin [U/min]: ``u2ss * BW / 6000`` (the peer's)."""
    return cohort.column(U2SS) * cohort.column(BW) / INSULIN_PMOL_PER_UNIT


@dataclass
class BasalBolus:
    """The clinic's basal-bolus therapy, as simglucose 0.2.11's ``BBController``.

    Basal ``u2ss * BW / 6000`` [U/min] all the time; when a meal is announced (the controller
    first sees it one sample after it was eaten), a bolus of ``meal / CR`` [U] plus, if sensor
    glucose > 150 mg/dL, ``(glucose - target) / CF``. CR and CF come from the cohort's
    ``CR [g/U]`` and ``CF [mg/dL/U]`` columns (simglucose's Quest.csv).
    """

    target: float = 140.0
    correction_above: float = 150.0
    sample_time: float | None = None
    _basal: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _cr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _cf: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def reset(self, cohort: Cohort) -> None:
        """Read basal, CR and CF of every subject."""
        self._basal = basal_rate(cohort)
        self._cr = cohort.column(CR)
        self._cf = cohort.column(CF)
        for name, v in (("CR", self._cr), ("CF", self._cf)):
            if not np.all(np.isfinite(v) & (v > 0)):
                i = int(np.flatnonzero(~(np.isfinite(v) & (v > 0)))[0])
                raise ValidationError(f"{name} must be > 0, got {v[i]}", where=cohort.ids[i])

    def __call__(self, obs: ControllerInput) -> ControlAction:
        """Basal always; bolus for the meal seen since the last call, with correction."""
        g = obs.glucose
        correction = np.where(g > self.correction_above, (g - self.target) / self._cf, 0.0)
        bolus = np.where(obs.meal > 0, obs.meal / self._cr + correction, 0.0)
        return ControlAction(basal=self._basal.copy(), bolus=bolus)

    def compiled(self, cohort: Cohort) -> ControllerProgram | None:
        """The same controller as a kernel (``None`` for a subclass with its own ``__call__``)."""
        if type(self).__call__ is not BasalBolus.__call__:
            return None
        n = len(cohort)
        const = np.column_stack([self._basal, self._cr, self._cf, np.full(n, self.target),
                                 np.full(n, self.correction_above)])
        return ControllerProgram(basal_bolus_kernel, np.zeros((n, 0)), const)


@dataclass
class PID:
    """A PID controller on sensor glucose around each subject's basal rate [U/min].

    ``basal = max(0, basal_ss + kp * e + ki * integral(e) + kd * de/dt)``, ``e = glucose -
    target`` [mg/dL]; gains in U/min per mg/dL (x min^-1 / x min). The integral is frozen while
    the output is clipped at zero (anti-windup). No meal boluses.
    """

    kp: float = 1e-4
    ki: float = 1e-7
    kd: float = 1e-3
    target: float = 120.0
    sample_time: float | None = None
    _basal: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _integral: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _last: np.ndarray | None = field(default=None, repr=False)
    _t_last: float = field(default=0.0, repr=False)

    def reset(self, cohort: Cohort) -> None:
        """Start with no integral and no previous reading."""
        self._basal = basal_rate(cohort)
        self._integral = np.zeros(len(cohort))
        self._last = None

    def __call__(self, obs: ControllerInput) -> ControlAction:
        """One PID update for every subject."""
        e = obs.glucose - self.target
        if self._last is None:
            h = 0.0
            de = np.zeros_like(e)
        else:
            h = obs.t - self._t_last
            de = (obs.glucose - self._last) / h if h > 0 else np.zeros_like(e)
        integral = self._integral + e * h
        raw = self._basal + self.kp * e + self.ki * integral + self.kd * de
        clipped = raw <= 0
        self._integral = np.where(clipped, self._integral, integral)
        self._last = obs.glucose.copy()
        self._t_last = obs.t
        return ControlAction(basal=np.maximum(raw, 0.0), bolus=np.zeros_like(e))

    def compiled(self, cohort: Cohort) -> ControllerProgram | None:
        """The same controller as a kernel (``None`` for a subclass with its own ``__call__``)."""
        if type(self).__call__ is not PID.__call__:
            return None
        n = len(cohort)
        state = np.zeros((n, 4))
        state[:, 0] = self._integral
        if self._last is not None:
            state[:, 1], state[:, 2], state[:, 3] = self._last, self._t_last, 1.0
        const = np.column_stack([self._basal, np.full(n, self.kp), np.full(n, self.ki),
                                 np.full(n, self.kd), np.full(n, self.target)])
        return ControllerProgram(pid_kernel, state, const)


CONTROLLERS: dict[str, Callable[..., object]] = {
    "basal-bolus": BasalBolus,
    "pid": PID,
}


def controller_names() -> list[str]:
    """Names accepted by :func:`make_controller`."""
    return sorted(CONTROLLERS)


def make_controller(name: str, **options: float) -> BasalBolus | PID:
    """A new controller by name (``"basal-bolus"``, ``"pid"``); :class:`NotFoundError` lists
    the known names."""
    key = str(name).lower()
    if key not in CONTROLLERS:
        raise NotFoundError(f"unknown controller {name!r}; known controllers: "
                            f"{', '.join(controller_names())}")
    return CONTROLLERS[key](**options)  # type: ignore[return-value]
