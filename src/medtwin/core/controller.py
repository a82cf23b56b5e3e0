"""The closed-loop contract: a controller reads named sensed signals and writes named inputs.

Everything is vectorised over the cohort: one call handles every subject at once, and every
array is shaped ``(n_subjects,)`` in the order of the cohort's rows. Times are minutes since
the start of the simulation (``times[0]``). How :func:`medtwin.core.simulate.simulate` drives
a :class:`LoopController`:

1. ``sensor.reset(n, seed)`` for every sensor (:mod:`medtwin.core.devices`), ``actuator.reset``,
   ``controller.reset(cohort)``.
2. Every sensor reads its model output at ``t0`` and after every input step; it draws a new
   reading on its own ``sample_time`` and holds the last one in between.
3. Every ``controller.sample_time`` minutes (default: the first sensor's) the controller gets
   a :class:`LoopInput`: per sensor label, the mean of the sensor's per-step readings over the
   last period (the ``t0`` reading at the first call), and per announcement label (the model's
   :attr:`~medtwin.core.model.Model.announcements`) the amount the schedule announced over the
   last period. It returns one array per :class:`Command` it declares.
4. Each command goes through its actuator (limits, increments) and is added to the model input
   it names, held over the next period (an ``"amount"`` command is spread over the period).

A controller that ships with medtwin also offers ``compiled(cohort)``: a
:class:`ControllerProgram` (a numba kernel plus per-subject state and constants) with which
the whole loop runs compiled, with no Python call per period. A plain-Python controller just
implements ``__call__``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from numba import types

from medtwin.core.devices import (  # re-exported: the engine's device contract
    Actuator,
    GenericSensor,
    IdealSensor,
    LimitedActuator,
    Sensor,
)
from medtwin.core.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from medtwin.core.cohort import Cohort

__all__ = [
    "CONTROLLER_SIGNATURE",
    "Actuator",
    "Command",
    "ControllerProgram",
    "GenericSensor",
    "IdealSensor",
    "LimitedActuator",
    "LoopController",
    "LoopInput",
    "Sensor",
    "is_loop_controller",
]

#: t, sensed, announced, state, constants, commands  (state and commands written in place)
CONTROLLER_SIGNATURE = types.void(
    types.float64,
    types.float64[::1],
    types.float64[::1],
    types.float64[::1],
    types.float64[::1],
    types.float64[::1],
)


@dataclass(frozen=True)
class LoopInput:
    """What a controller sees at one sample time, for the whole cohort.

    ``sensed[label]``: mean sensor reading over the last period, ``(n,)``; ``announced[label]``:
    amount announced over the last period, ``(n,)``; ``subjects``: ids in row order.
    """

    t: float
    sensed: Mapping[str, np.ndarray]
    announced: Mapping[str, np.ndarray]
    subjects: tuple[str, ...]

    def __getitem__(self, label: str) -> np.ndarray:
        """A sensed or announced signal by label (``"CGM [mg/dL]"``) or bare name."""
        for table in (self.sensed, self.announced):
            if label in table:
                return table[label]
        hits = [v for table in (self.sensed, self.announced) for k, v in table.items()
                if k.split(" [")[0] == label]
        if len(hits) == 1:
            return hits[0]
        known = ", ".join([*self.sensed, *self.announced])
        raise NotFoundError(f"no signal {label!r} in the loop; known: {known}")


@dataclass(frozen=True)
class Command:
    """One output of a controller: written to model input ``input`` (name or role).

    ``kind="rate"``: held over the next period in the input's unit; ``"amount"``: an amount
    (input unit x min) spread evenly over the controller period. ``minimum``: requests below it
    (or non-finite) stop the run with a typed error naming the subject and time. ``actuator``:
    the device between the request and the model (``None``: delivered as asked).
    """

    name: str
    input: str
    kind: Literal["rate", "amount"] = "rate"
    unit: str = ""
    minimum: float = -math.inf
    actuator: Actuator | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("rate", "amount"):
            raise ValidationError(f"kind must be 'rate' or 'amount', got {self.kind!r}",
                                  where=f"command {self.name}")


@dataclass(frozen=True)
class ControllerProgram:
    """A controller as the compiled loop runs it.

    ``kernel``: a numba function with :data:`CONTROLLER_SIGNATURE` acting on one subject:
    ``kernel(t, sensed, announced, state, constants, commands)`` with ``sensed`` in the order
    of ``reads`` (sensor labels), ``announced`` in the order of the model's announcements and
    ``commands`` in the order of the controller's ``commands``. ``state`` ``(n, n_state)`` is
    the initial state (copied, then updated by the kernel); ``constants`` ``(n, n_const)``.
    """

    kernel: Any
    state: np.ndarray
    constants: np.ndarray
    reads: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LoopController(Protocol):
    """A closed-loop controller for the whole cohort at once (see the module docstring).

    ``sample_time`` [min] (``None``: the first sensor's); ``commands``: what it writes;
    ``reset(cohort)`` once before a run; ``__call__(obs)`` -> ``{command name: (n,) array}``.
    """

    sample_time: float | None
    commands: tuple[Command, ...]

    def reset(self, cohort: Cohort) -> None: ...

    def __call__(self, obs: LoopInput) -> Mapping[str, np.ndarray]: ...


def is_loop_controller(controller: object) -> bool:
    """Whether ``controller`` declares its commands (the engine's own contract)."""
    commands = getattr(controller, "commands", None)
    return isinstance(commands, tuple) and all(isinstance(c, Command) for c in commands)
