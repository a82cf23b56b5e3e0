"""Schedule: timed events per subject on any model's inputs and states, turned into held inputs.

Times are in the model's time unit (minutes for the glucose models, hours for PK, seconds for
the heart) since the start of the simulation. A schedule is immutable: ``with_rate`` and
friends return a new one. ``subject=None`` means every subject of the cohort. An input is
named by its name or its role (:meth:`Model.input_index`), a state by its name.

The general events:

- :class:`InputRate` — a rate added to an input from ``time`` over ``duration`` (an infusion,
  a blood loss as a negative fluid rate); rates that overlap add up.
- :class:`InputLevel` — the input's base level from ``time`` until the next level of that
  input for that subject (a basal rate, a ventilator setting).
- :class:`InputBolus` — an amount delivered over the one input step that starts at ``time``.
- :class:`StateBolus` — an amount added to a state at ``time`` (an IV bolus or an oral dose
  into its depot, as PK doses are); the state at ``time`` is the state after it.
- :class:`Meal` — an amount *announced* at ``time`` and taken in at most ``rate`` per time
  unit, queued behind earlier ones (simglucose 0.2.11, ``T1DPatient._announce_meal``: each
  input step takes ``min(rate * dt, still to take)``, so at 5 g/min a 50 g meal lasts 10
  one-minute steps). :meth:`Schedule.with_meal`, :meth:`~Schedule.with_bolus` and
  :meth:`~Schedule.with_basal` are the glucose configuration: a meal on the ``"meal"`` input,
  an input bolus and a level on the ``"insulin"`` input.

Generic amounts may be negative (a haemorrhage); the configurations (meals, insulin) and the
PK dose helpers refuse negative amounts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.model import Model

#: simglucose's eating rate: a patient eats at most 5 g of carbohydrate per minute
DEFAULT_EATING_RATE = 5.0
#: the input roles of the glucose configuration (:meth:`Schedule.with_meal` and friends)
MEAL_INPUT, INSULIN_INPUT = "meal", "insulin"


@dataclass(frozen=True)
class Meal:
    """``grams`` announced at ``time`` and taken into input ``input`` at ``rate`` per time
    unit at most (default 5 g/min), queued behind earlier meals of the same subject."""

    time: float
    grams: float
    rate: float = DEFAULT_EATING_RATE
    subject: str | None = None
    input: str = MEAL_INPUT


@dataclass(frozen=True)
class InputRate:
    """``rate`` added to input ``input`` over ``[time, time + duration)`` (``inf``: to the end)."""

    time: float
    input: str
    rate: float
    duration: float = math.inf
    subject: str | None = None


@dataclass(frozen=True)
class InputLevel:
    """Input ``input``'s base level from ``time`` until that subject's next level of it."""

    time: float
    input: str
    level: float
    subject: str | None = None


@dataclass(frozen=True)
class InputBolus:
    """``amount`` into input ``input`` over the one input step starting at ``time``."""

    time: float
    input: str
    amount: float
    subject: str | None = None


@dataclass(frozen=True)
class StateBolus:
    """``amount`` added to state ``state`` at ``time`` (between input steps)."""

    time: float
    state: str
    amount: float
    subject: str | None = None


Event = Meal | InputRate | InputLevel | InputBolus | StateBolus
_EVENT_TYPES = (Meal, InputRate, InputLevel, InputBolus, StateBolus)


@dataclass(frozen=True)
class StateBoluses:
    """State boluses on the input grid, sorted by step: at the start of step ``step[b]``,
    ``amount[b]`` is added to state ``state[b]`` of subject row ``row[b]``."""

    step: np.ndarray
    row: np.ndarray
    state: np.ndarray
    amount: np.ndarray

    @property
    def steps(self) -> np.ndarray:
        """The distinct steps with a bolus, ascending."""
        return np.unique(self.step)

    def apply(self, x: np.ndarray, step: int) -> bool:
        """Add the boluses of ``step`` to states ``x`` ``(n, n_states)`` in place; True if any."""
        lo, hi = np.searchsorted(self.step, [step, step + 1])
        if lo == hi:
            return False
        np.add.at(x, (self.row[lo:hi], self.state[lo:hi]), self.amount[lo:hi])
        return True

    def chunks(self, n_steps: int, size: int) -> list[tuple[int, int]]:
        """``[j0, j1)`` runs of at most ``size`` steps covering ``[0, n_steps)``, each bolus
        step starting a run (so a solver never integrates across a bolus)."""
        cuts = sorted({0, n_steps, *range(0, n_steps, size),
                       *(int(s) for s in self.steps if 0 < s < n_steps)})
        return list(zip(cuts[:-1], cuts[1:], strict=True))


@dataclass(frozen=True)
class RenderedInputs:
    """A schedule on an input grid: ``u`` ``(n, k, n_inputs)`` held inputs, ``announced``
    ``(n, k)`` meal amounts announced at the start of each step, and the state boluses."""

    u: np.ndarray
    announced: np.ndarray
    boluses: StateBoluses


class Schedule:
    """An immutable collection of timed events."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self._events: tuple[Event, ...] = tuple(events)
        for e in self._events:
            _check_event(e)

    @property
    def events(self) -> tuple[Event, ...]:
        """All events, in the order given."""
        return self._events

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"Schedule({len(self._events)} events)"

    def with_events(self, *events: Event) -> Schedule:
        """A new schedule with ``events`` added."""
        return Schedule(self._events + tuple(events))

    # --- general events ---------------------------------------------------------------
    def with_rate(self, time: float, input: str, rate: float, *, duration: float = math.inf,
                  subject: str | None = None) -> Schedule:
        """Add ``rate`` to ``input`` (name or role) over ``duration`` from ``time``."""
        return self.with_events(InputRate(float(time), input, float(rate), float(duration),
                                          subject))

    def with_level(self, time: float, input: str, level: float, *,
                   subject: str | None = None) -> Schedule:
        """Set ``input``'s base level from ``time`` on."""
        return self.with_events(InputLevel(float(time), input, float(level), subject))

    def with_input_bolus(self, time: float, input: str, amount: float, *,
                         subject: str | None = None) -> Schedule:
        """Deliver ``amount`` through ``input`` over the input step starting at ``time``."""
        return self.with_events(InputBolus(float(time), input, float(amount), subject))

    def with_state_bolus(self, time: float, state: str, amount: float, *,
                         subject: str | None = None) -> Schedule:
        """Add ``amount`` to state ``state`` at ``time``."""
        return self.with_events(StateBolus(float(time), state, float(amount), subject))

    # --- the glucose configuration ----------------------------------------------------
    def with_meal(
        self,
        time: float,
        grams: float,
        *,
        subject: str | None = None,
        rate: float | None = None,
        duration: float | None = None,
    ) -> Schedule:
        """Add a meal, eaten at ``rate`` [g/min] or over ``duration`` [min] (default 5 g/min)."""
        if rate is not None and duration is not None:
            raise ValidationError("give a rate or a duration, not both", where="meal")
        if duration is not None:
            if not duration > 0:
                raise ValidationError(f"duration must be > 0, got {duration}", where="meal")
            rate = grams / duration if grams > 0 else DEFAULT_EATING_RATE
        return self.with_events(
            Meal(float(time), float(grams), DEFAULT_EATING_RATE if rate is None else rate, subject)
        )

    def with_bolus(self, time: float, units: float, *, subject: str | None = None) -> Schedule:
        """Add an insulin bolus of ``units`` [U] at ``time``, over one input step."""
        _non_negative(units, f"bolus at t={time:g}")
        return self.with_events(InputBolus(float(time), INSULIN_INPUT, float(units), subject))

    def with_basal(self, time: float, rate: float, *, subject: str | None = None) -> Schedule:
        """Add a basal insulin rate [U/min] holding from ``time``."""
        _non_negative(rate, f"basal at t={time:g}")
        return self.with_events(InputLevel(float(time), INSULIN_INPUT, float(rate), subject))

    # --- checks and rendering ---------------------------------------------------------
    def validate(self, subjects: Sequence[str], t0: float, t_end: float, dt: float, *,
                 unit: str = "min") -> None:
        """Refuse, before any work, events for unknown subjects, outside ``[t0, t_end)``, or
        off the input grid ``t0 + k * dt`` (``unit``: the time unit, for the messages)."""
        known = set(subjects)
        for e in self._events:
            what = _describe(e, unit)
            if e.subject is not None and e.subject not in known:
                shown = ", ".join(list(subjects)[:10]) + (" ..." if len(known) > 10 else "")
                raise NotFoundError(f"{what}: unknown subject {e.subject!r}; cohort has {shown}")
            if not (t0 <= e.time < t_end):
                raise ValidationError(
                    f"is outside the simulated window [{t0:g}, {t_end:g}) {unit}", where=what
                )
            ends = [e.time] + ([e.time + e.duration] if isinstance(e, InputRate)
                               and math.isfinite(e.duration) else [])
            for t in ends:
                k = (t - t0) / dt
                if abs(k - round(k)) > 1e-9 * max(1.0, abs(k)):
                    raise ValidationError(
                        f"{'ends' if t != e.time else 'is'} not on the {dt:g}-{unit} input grid; "
                        "round it to a whole step", where=what
                    )

    def render(
        self, model: Model, subjects: Sequence[str], t0: float, dt: float, n_steps: int
    ) -> RenderedInputs:
        """Held inputs ``(n, n_steps, n_inputs)`` on the grid ``t0 + k * dt``, the meals
        announced at each step and the state boluses (see :class:`RenderedInputs`)."""
        unit = getattr(model, "time_unit", "min")
        self.validate(subjects, t0, t0 + n_steps * dt, dt, unit=unit)
        n = len(subjects)
        row = {s: i for i, s in enumerate(subjects)}
        u = np.zeros((n, n_steps, len(model.inputs)))
        announced = np.zeros((n, n_steps))

        def targets(e: Event) -> Sequence[int]:
            return range(n) if e.subject is None else (row[e.subject],)

        def step_of(time: float) -> int:
            return int(round((time - t0) / dt))

        meals: dict[int, list[Meal]] = {}
        levels: dict[int, list[InputLevel]] = {}
        b_step: list[int] = []
        b_row: list[int] = []
        b_state: list[int] = []
        b_amount: list[float] = []
        for e in self._events:
            if isinstance(e, Meal):
                meals.setdefault(_input(model, e.input, unit, e), []).append(e)
            elif isinstance(e, InputLevel):
                levels.setdefault(_input(model, e.input, unit, e), []).append(e)
            elif isinstance(e, InputRate):
                ci = _input(model, e.input, unit, e)
                j1 = n_steps if not math.isfinite(e.duration) else min(
                    n_steps, step_of(e.time + e.duration))
                u[list(targets(e)), step_of(e.time):j1, ci] += e.rate
            elif isinstance(e, InputBolus):
                ci = _input(model, e.input, unit, e)
                u[list(targets(e)), step_of(e.time), ci] += e.amount / dt
            else:
                si = _state(model, e, unit)
                rows = list(targets(e))
                b_step += [step_of(e.time)] * len(rows)
                b_row += rows
                b_state += [si] * len(rows)
                b_amount += [e.amount] * len(rows)
        for ci, items in levels.items():
            level = np.zeros((n, n_steps))
            for e in sorted(items, key=lambda e: e.time):
                level[list(targets(e)), step_of(e.time):] = e.level
            u[:, :, ci] += level
        for ci, items in meals.items():
            planned_at = np.zeros((n, n_steps))
            rate = np.zeros((n, n_steps))
            for e in items:
                for i in targets(e):
                    planned_at[i, step_of(e.time)] += e.grams
                    rate[i, step_of(e.time)] = e.rate  # the newest meal sets the eating rate
            announced += planned_at
            for i in np.flatnonzero(planned_at.any(axis=1)):
                planned = 0.0
                r = 0.0
                for j in range(n_steps):
                    planned += planned_at[i, j]
                    if rate[i, j] > 0:
                        r = rate[i, j]
                    if planned > 0:
                        eat = min(r * dt, planned)
                        planned = max(0.0, planned - eat)
                        u[i, j, ci] += eat / dt
        order = np.argsort(np.asarray(b_step, dtype=np.int64), kind="stable")
        boluses = StateBoluses(np.asarray(b_step, dtype=np.int64)[order],
                               np.asarray(b_row, dtype=np.int64)[order],
                               np.asarray(b_state, dtype=np.int64)[order],
                               np.asarray(b_amount, dtype=float)[order])
        return RenderedInputs(u, announced, boluses)


def _describe(e: Event, unit: str = "min") -> str:
    at = f"at t={getattr(e, 'time', float('nan')):g} {unit}"
    if isinstance(e, Meal):
        what = f"meal {at}"
    elif isinstance(e, InputRate):
        what = f"rate on input {e.input!r} {at}"
    elif isinstance(e, InputLevel):
        what = f"level of input {e.input!r} {at}"
    elif isinstance(e, InputBolus):
        what = (f"bolus {at}" if e.input == INSULIN_INPUT
                else f"bolus through input {e.input!r} {at}")
    else:
        what = f"bolus into state {e.state!r} {at}"
    return what + (f" for {e.subject}" if e.subject else "")


def _input(model: Model, name: str, unit: str, e: Event) -> int:
    try:
        return model.input_index(name)
    except KeyError:
        known = ", ".join(f"{v.name} (role {v.role})" if v.role else v.name
                          for v in model.inputs) or "none"
        raise ValidationError(
            f"model {model.name!r} has no input named or with role {name!r}; inputs: {known}",
            where=_describe(e, unit),
        ) from None


def _state(model: Model, e: StateBolus, unit: str) -> int:
    for i, v in enumerate(model.states):
        if v.name == e.state or v.label == e.state:
            return i
    raise ValidationError(
        f"model {model.name!r} has no state {e.state!r}; states: "
        + ", ".join(v.name for v in model.states), where=_describe(e, unit))


def _non_negative(amount: float, what: str) -> None:
    if not (math.isfinite(amount) and amount >= 0):
        raise ValidationError(f"amount must be finite and >= 0, got {amount}", where=what)


def _check_event(e: Event) -> None:
    if not isinstance(e, _EVENT_TYPES):
        raise ValidationError(f"not a schedule event: {e!r}", where="schedule")
    what = _describe(e)
    try:
        finite = math.isfinite(float(e.time))
    except (TypeError, ValueError):
        finite = False
    if not finite:
        raise ValidationError(f"time must be a finite number, got {e.time!r}", where=what)
    if isinstance(e, Meal):
        _non_negative(e.grams, what)
        if not (math.isfinite(e.rate) and e.rate > 0):
            raise ValidationError(f"eating rate must be > 0 g/min, got {e.rate}", where=what)
        return
    amount = (e.rate if isinstance(e, InputRate) else e.level if isinstance(e, InputLevel)
              else e.amount)
    if not math.isfinite(amount):
        raise ValidationError(f"amount must be finite, got {amount}", where=what)
    if isinstance(e, InputRate) and not (e.duration > 0):
        raise ValidationError(f"duration must be > 0, got {e.duration}", where=what)
    name = e.state if isinstance(e, StateBolus) else e.input
    if not (isinstance(name, str) and name):
        kind = "a state" if isinstance(e, StateBolus) else "an input"
        raise ValidationError(f"needs {kind} name, got {name!r}", where=what)
