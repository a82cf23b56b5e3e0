"""Devices in the loop: the Sensor, Pump and Controller interfaces, plus the trivial ones.

Everything is vectorised over the cohort: one call handles every subject at once, and every
array is shaped ``(n_subjects,)`` in the order of the cohort's rows. Times are minutes since
the start of the simulation (``times[0]``).

How :func:`medtwin.core.simulate.simulate` drives them (the conventions of simglucose 0.2.11,
``simglucose/simulation/env.py``):

1. ``sensor.reset(n, seed)``, ``pump.reset(n, seed)``, ``controller.reset(cohort)``.
2. ``sensor.measure(t0, g0)`` once at the start, then once after every input step (1 min):
   ``sensor.measure(t, g)`` with the true glucose ``g`` at ``t``. The sensor itself draws a new
   reading when ``t`` is a multiple of its ``sample_time`` and holds the last one otherwise.
3. Every ``controller.sample_time`` minutes the controller gets a :class:`ControllerInput`:
   the sensor reading (mean of the per-minute readings over the last period, as the peer
   records it; the t0 reading at the first call) and the grams of meal announced over the last
   period. It returns a :class:`ControlAction`.
4. The pump turns the request into what it can deliver: ``pump.basal(rate)`` and
   ``pump.bolus(units)``; the insulin input over the next period is
   ``basal + bolus / sample_time`` [U/min], held constant (the peer spreads a bolus over one
   controller period).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from medtwin.core.cohort import Cohort


@dataclass(frozen=True)
class ControllerInput:
    """What a controller sees at one sample time, for the whole cohort.

    ``t``: minutes since the start. ``glucose``: sensor glucose [mg/dL], shape ``(n,)``.
    ``meal``: carbohydrate announced since the last call [g], shape ``(n,)``.
    ``subjects``: the subject ids, in row order.
    """

    t: float
    glucose: np.ndarray
    meal: np.ndarray
    subjects: tuple[str, ...]


@dataclass(frozen=True)
class ControlAction:
    """A controller's request for the next period: ``basal`` [U/min] and ``bolus`` [U], ``(n,)``."""

    basal: np.ndarray
    bolus: np.ndarray


@runtime_checkable
class Sensor(Protocol):
    """A glucose sensor (CGM) for a whole cohort.

    ``sample_time`` [min]: how often it produces a new reading.
    ``reset(n_subjects, seed)``: start afresh for ``n_subjects``; the same seed gives the same
    noise. ``measure(t, glucose)``: ``t`` [min since start], ``glucose`` true subcutaneous
    glucose [mg/dL] shape ``(n,)`` -> reading [mg/dL] shape ``(n,)``; called at t0 and after
    every 1-min input step, in increasing ``t``.
    """

    sample_time: float

    def reset(self, n_subjects: int, seed: int | None = None) -> None: ...

    def measure(self, t: float, glucose: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Pump(Protocol):
    """An insulin pump for a whole cohort: rounds requests to its increments and clips them.

    ``basal(rate)``: requested basal [U/min], ``(n,)`` -> deliverable basal [U/min], ``(n,)``.
    ``bolus(amount)``: requested bolus [U], ``(n,)`` -> deliverable bolus [U], ``(n,)``.
    ``reset(n_subjects, seed)``: start afresh (a pump may hold no state).
    """

    def reset(self, n_subjects: int, seed: int | None = None) -> None: ...

    def basal(self, rate: np.ndarray) -> np.ndarray: ...

    def bolus(self, amount: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Controller(Protocol):
    """A closed-loop controller acting on sensor readings for the whole cohort at once.

    ``sample_time`` [min]: how often it is called (``None``: the sensor's sample time).
    ``reset(cohort)``: called once before a run; read what a clinic knows (e.g. the covariates
    ``CR [g/U]``, ``CF [mg/dL/U]``, body weight) from the cohort. ``__call__(obs)`` returns a
    :class:`ControlAction`; every value must be finite and >= 0, or the simulation stops with a
    :class:`~medtwin.core.errors.SimulationError` naming the subject and time.
    """

    sample_time: float | None

    def reset(self, cohort: Cohort) -> None: ...

    def __call__(self, obs: ControllerInput) -> ControlAction: ...


class IdealSensor:
    """A noise-free sensor: returns the true glucose it is given, every ``sample_time`` minutes."""

    def __init__(self, sample_time: float = 1.0) -> None:
        self.sample_time = float(sample_time)
        self._last: np.ndarray | None = None

    def reset(self, n_subjects: int, seed: int | None = None) -> None:
        """Forget the last reading."""
        self._last = None

    def measure(self, t: float, glucose: np.ndarray) -> np.ndarray:
        """The true glucose at each sample time, held in between (zero-order hold)."""
        if self._last is None or _on_grid(t, self.sample_time):
            self._last = np.array(glucose, dtype=float, copy=True)
        return self._last.copy()


class NoPump:
    """A pump with no limits and no increments: delivers exactly what is asked."""

    def reset(self, n_subjects: int, seed: int | None = None) -> None:
        """Nothing to reset."""

    def basal(self, rate: np.ndarray) -> np.ndarray:
        """The requested basal [U/min], unchanged."""
        return np.asarray(rate, dtype=float)

    def bolus(self, amount: np.ndarray) -> np.ndarray:
        """The requested bolus [U], unchanged."""
        return np.asarray(amount, dtype=float)


def _on_grid(t: float, step: float) -> bool:
    k = round(t / step)
    return abs(t - k * step) < 1e-9 * max(1.0, abs(t))
