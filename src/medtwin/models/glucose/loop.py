"""The glucose twin's controller contract, as a configuration of the engine's general loop.

A glucose controller sees sensor glucose [mg/dL] and the meal announced since its last call
[g] (:class:`ControllerInput`) and asks for a basal rate [U/min] and a bolus [U]
(:class:`ControlAction`); an insulin pump (:class:`Pump`) rounds and clips both.
:class:`InsulinLoop` turns such a controller and pump into the engine's
:class:`~medtwin.core.controller.LoopController`: it reads the first sensor and the model's
meal announcement and writes two commands into the ``insulin`` input, ``basal`` (a rate) and
``bolus`` (an amount spread over one controller period, as simglucose 0.2.11 does). A
controller or pump that ships with medtwin also offers its compiled form, so the whole loop
runs compiled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from medtwin.core.controller import Command, ControllerProgram, LoopInput
from medtwin.core.devices import ActuatorProgram, Seeds
from medtwin.core.errors import SimulationError

if TYPE_CHECKING:
    from medtwin.core.cohort import Cohort

#: the model input the pump writes and the announcement the controller reads (UVA/Padova)
INSULIN_INPUT = "insulin"
MEAL_ANNOUNCEMENT = "meal [g]"


@dataclass(frozen=True)
class ControllerInput:
    """What a glucose controller sees at one sample time, for the whole cohort.

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
class Controller(Protocol):
    """A glucose controller for the whole cohort at once.

    ``sample_time`` [min] (``None``: the sensor's). ``reset(cohort)``: read what a clinic knows
    (``CR [g/U]``, ``CF [mg/dL/U]``, body weight) from the cohort. ``__call__(obs)`` returns a
    :class:`ControlAction`; every value must be finite and >= 0, or the simulation stops with
    a :class:`~medtwin.core.errors.SimulationError` naming the subject and time. A shipped
    controller also has ``compiled(cohort) -> ControllerProgram`` whose kernel writes
    ``commands[0]`` = basal and ``commands[1]`` = bolus from ``sensed[0]`` and
    ``announced[0]``.
    """

    sample_time: float | None

    def reset(self, cohort: Cohort) -> None: ...

    def __call__(self, obs: ControllerInput) -> ControlAction: ...


@runtime_checkable
class Pump(Protocol):
    """An insulin pump: ``basal(rate [U/min])`` and ``bolus(amount [U])`` -> deliverable, ``(n,)``;
    ``reset(n_subjects, seed)``. A shipped pump also has ``program(channel)`` giving the
    :class:`~medtwin.core.devices.ActuatorProgram` of ``"basal"`` or ``"bolus"``."""

    def reset(self, n_subjects: int, seed: int | None = None) -> None: ...

    def basal(self, rate: np.ndarray) -> np.ndarray: ...

    def bolus(self, amount: np.ndarray) -> np.ndarray: ...


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

    def program(self, channel: str) -> ActuatorProgram:
        """Pass-through."""
        return ActuatorProgram()


class PumpChannel:
    """One channel of a pump (``"basal"`` or ``"bolus"``) as an engine actuator."""

    def __init__(self, pump: Any, channel: str) -> None:
        self.pump = pump
        self.channel = channel

    def reset(self, n_subjects: int, seed: Seeds = None) -> None:
        """Reset the pump (once, on the basal channel)."""
        if self.channel == "basal":
            self.pump.reset(n_subjects, seed)

    def deliver(self, request: np.ndarray, period: float) -> np.ndarray:
        """What the pump delivers of the request."""
        return np.asarray(getattr(self.pump, self.channel)(request), dtype=float)

    def program(self) -> ActuatorProgram | None:
        """The pump's arithmetic for this channel, if it offers it."""
        make = getattr(self.pump, "program", None)
        return make(self.channel) if callable(make) else None


class InsulinLoop:
    """A glucose controller and pump in the engine's loop contract (see the module docstring)."""

    def __init__(self, controller: Any, pump: Any = None) -> None:
        for name in ("reset", "__call__"):
            if not callable(getattr(controller, name, None)):
                from medtwin.core.errors import ValidationError

                raise ValidationError(f"{type(controller).__name__} has no {name}(); a glucose "
                                      "controller needs sample_time, reset and __call__",
                                      where="controller")
        self.wrapped = controller
        self.pump = pump if pump is not None else NoPump()
        self.sample_time = getattr(controller, "sample_time", None)
        self.commands = (
            Command("basal", INSULIN_INPUT, "rate", "U/min", 0.0, PumpChannel(self.pump, "basal")),
            Command("bolus", INSULIN_INPUT, "amount", "U", 0.0, PumpChannel(self.pump, "bolus")),
        )

    def reset(self, cohort: Cohort) -> None:
        """Reset the wrapped controller."""
        self.wrapped.reset(cohort)

    def __call__(self, obs: LoopInput) -> Mapping[str, np.ndarray]:
        """Glucose from the first sensor, meal from the announcement; basal and bolus out."""
        n = len(obs.subjects)
        glucose = next(iter(obs.sensed.values())) if obs.sensed else np.full(n, np.nan)
        meal = obs.announced.get(MEAL_ANNOUNCEMENT, np.zeros(n))
        action = self.wrapped(ControllerInput(obs.t, glucose, meal, obs.subjects))
        if not isinstance(action, ControlAction):
            raise SimulationError(f"controller returned {type(action).__name__} at "
                                  f"t={obs.t:g} min; expected ControlAction")
        return {"basal": action.basal, "bolus": action.bolus}

    def compiled(self, cohort: Cohort) -> ControllerProgram | None:
        """The wrapped controller's compiled program (it reads the first sensor), if any."""
        make = getattr(self.wrapped, "compiled", None)
        return make(cohort) if callable(make) else None
