"""Schedule: timed events per subject (meals, boluses, basal rates), turned into held inputs.

Times are minutes since the start of the simulation. A schedule is immutable: ``with_meal``
and friends return a new one. ``subject=None`` means every subject of the cohort.

Rendering follows simglucose 0.2.11 (``T1DPatient._announce_meal``): a meal is *announced* at
its time and queued; each input step the subject eats ``min(rate * dt, still to eat)`` grams,
so at 5 g/min a 50 g meal lasts 10 one-minute steps; meals that overlap queue up. A bolus is
delivered over the one input step that starts at its time; a basal rate holds from its time
until the next basal event of that subject.
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


@dataclass(frozen=True)
class Meal:
    """``grams`` of carbohydrate announced at ``time`` [min], eaten at ``rate`` [g/min]."""

    time: float
    grams: float
    rate: float = DEFAULT_EATING_RATE
    subject: str | None = None


@dataclass(frozen=True)
class Bolus:
    """``units`` [U] of insulin given at ``time`` [min], over one input step."""

    time: float
    units: float
    subject: str | None = None


@dataclass(frozen=True)
class BasalRate:
    """A basal insulin rate [U/min] that holds from ``time`` [min] on."""

    time: float
    rate: float
    subject: str | None = None


Event = Meal | Bolus | BasalRate


@dataclass(frozen=True)
class RenderedInputs:
    """A schedule on an input grid: ``u`` ``(n, k, n_inputs)`` rates and ``announced``
    ``(n, k)`` grams of meal announced at the start of each step."""

    u: np.ndarray
    announced: np.ndarray


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
        """Add a bolus of ``units`` [U] at ``time``."""
        return self.with_events(Bolus(float(time), float(units), subject))

    def with_basal(self, time: float, rate: float, *, subject: str | None = None) -> Schedule:
        """Add a basal rate [U/min] holding from ``time``."""
        return self.with_events(BasalRate(float(time), float(rate), subject))

    # --- checks and rendering ---------------------------------------------------------
    def validate(self, subjects: Sequence[str], t0: float, t_end: float, dt: float) -> None:
        """Refuse, before any work, events for unknown subjects, outside ``[t0, t_end)``, or
        off the input grid ``t0 + k * dt``."""
        known = set(subjects)
        for e in self._events:
            what = f"{type(e).__name__.lower()} at t={e.time:g} min" + (
                f" for {e.subject}" if e.subject else ""
            )
            if e.subject is not None and e.subject not in known:
                shown = ", ".join(list(subjects)[:10]) + (" ..." if len(known) > 10 else "")
                raise NotFoundError(f"{what}: unknown subject {e.subject!r}; cohort has {shown}")
            if not (t0 <= e.time < t_end):
                raise ValidationError(
                    f"is outside the simulated window [{t0:g}, {t_end:g}) min", where=what
                )
            k = (e.time - t0) / dt
            if abs(k - round(k)) > 1e-9 * max(1.0, abs(k)):
                raise ValidationError(
                    f"is not on the {dt:g}-min input grid; round it to a whole step", where=what
                )

    def render(
        self, model: Model, subjects: Sequence[str], t0: float, dt: float, n_steps: int
    ) -> RenderedInputs:
        """Held inputs ``(n, n_steps, n_inputs)`` on the grid ``t0 + k * dt``."""
        self.validate(subjects, t0, t0 + n_steps * dt, dt)
        n = len(subjects)
        row = {s: i for i, s in enumerate(subjects)}
        u = np.zeros((n, n_steps, len(model.inputs)))
        announced = np.zeros((n, n_steps))

        def targets(e: Event) -> Iterable[int]:
            return range(n) if e.subject is None else (row[e.subject],)

        def step_of(time: float) -> int:
            return int(round((time - t0) / dt))

        meals = [e for e in self._events if isinstance(e, Meal)]
        if meals:
            ci = _input(model, "meal")
            rate = np.zeros((n, n_steps))
            for e in meals:
                for i in targets(e):
                    announced[i, step_of(e.time)] += e.grams
                    rate[i, step_of(e.time)] = e.rate  # the newest meal sets the eating rate
            for i in np.flatnonzero(announced.any(axis=1)):
                planned = 0.0
                r = 0.0
                for j in range(n_steps):
                    planned += announced[i, j]
                    if rate[i, j] > 0:
                        r = rate[i, j]
                    if planned > 0:
                        eat = min(r * dt, planned)
                        planned = max(0.0, planned - eat)
                        u[i, j, ci] = eat / dt
        boluses = [e for e in self._events if isinstance(e, Bolus)]
        if boluses:
            ii = _input(model, "insulin")
            for e in boluses:
                for i in targets(e):
                    u[i, step_of(e.time), ii] += e.units / dt
        basals = sorted((e for e in self._events if isinstance(e, BasalRate)), key=lambda e: e.time)
        if basals:
            ii = _input(model, "insulin")
            level = np.zeros((n, n_steps))
            for e in basals:
                for i in targets(e):
                    level[i, step_of(e.time) :] = e.rate
            u[:, :, ii] += level
        return RenderedInputs(u, announced)


def _input(model: Model, role: str) -> int:
    try:
        return model.input_index(role)
    except KeyError:
        raise ValidationError(
            f"model {model.name!r} has no input with role {role!r}", where="schedule"
        ) from None


def _check_event(e: Event) -> None:
    what = f"{type(e).__name__.lower()} at t={getattr(e, 'time', '?')}"
    if not isinstance(e, Meal | Bolus | BasalRate):
        raise ValidationError(f"not a schedule event: {e!r}", where="schedule")
    if not math.isfinite(e.time):
        raise ValidationError("time must be finite", where=what)
    amount = e.grams if isinstance(e, Meal) else e.units if isinstance(e, Bolus) else e.rate
    if not math.isfinite(amount) or amount < 0:
        raise ValidationError(f"amount must be finite and >= 0, got {amount}", where=what)
    if isinstance(e, Meal) and not (math.isfinite(e.rate) and e.rate > 0):
        raise ValidationError(f"eating rate must be > 0 g/min, got {e.rate}", where=what)
