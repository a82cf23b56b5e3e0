"""Insulin and meal records turned into the glucose twin's held inputs on a 1-min grid.

A :class:`InputPlan` keeps every known delivery (past or planned) as a *piece*: a start step
(whole minutes since the twin's origin), an amount and a maximum rate per step. Step ``s`` of a
piece delivers ``clip(amount - s * rate, 0, rate)``, which is how the engine's
:class:`~medtwin.core.schedule.Schedule` eats a meal at 5 g/min (simglucose's rule), and how a
bolus (all in one step) or an infusion over a duration (``amount / duration`` per step) is given.

Units are checked here, by name: meals in a mass unit (converted to g through
:mod:`medtwin.interop.units`), insulin in international units (``U``, ``[iU]``, ``[IU]``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from medtwin.core.errors import UnitError, ValidationError
from medtwin.core.records import Intervention, InterventionKind
from medtwin.core.schedule import DEFAULT_EATING_RATE
from medtwin.interop import units

#: insulin units accepted (UCUM writes the international unit ``[iU]``; ``U`` is common usage)
INSULIN_UNITS = {"U": 1.0, "[iU]": 1.0, "[IU]": 1.0, "IU": 1.0, "iU": 1.0,
                 "mU": 1e-3, "m[iU]": 1e-3, "m[IU]": 1e-3}
MEAL, INSULIN = 0, 1


@dataclass(frozen=True, slots=True)
class Piece:
    """One delivery: ``amount`` (g or U) from step ``start`` at most ``rate`` per 1-min step."""

    column: int  # MEAL or INSULIN
    start: int
    amount: float
    rate: float

    @property
    def end(self) -> int:
        """First step after the delivery."""
        return self.start + max(1, math.ceil(self.amount / self.rate - 1e-9))

    def to_list(self) -> list[float]:
        """JSON-ready form."""
        return [self.column, self.start, self.amount, self.rate]


def amount_in_model_units(rec: Intervention) -> float:
    """The amount of a meal in g or of insulin in U; :class:`UnitError` for any other unit."""
    if rec.kind == InterventionKind.MEAL:
        try:
            return units.convert(float(rec.amount), rec.unit, "g")
        except UnitError as exc:
            raise UnitError(f"meal amount in {rec.unit!r}: {exc.message}; give grams of "
                            "carbohydrate", where=f"Intervention[{rec.source_id}]") from exc
    if rec.kind == InterventionKind.INSULIN:
        factor = INSULIN_UNITS.get(rec.unit.strip())
        if factor is None:
            raise UnitError(f"insulin in {rec.unit!r}; give international units "
                            f"({', '.join(sorted(INSULIN_UNITS))})",
                            where=f"Intervention[{rec.source_id}]")
        return float(rec.amount) * factor
    raise ValidationError(f"the glucose twin takes meal and insulin interventions, not "
                          f"{rec.kind.value!r}", where=f"Intervention[{rec.source_id}]")


def piece_of(rec: Intervention, step: int) -> Piece:
    """The delivery of ``rec`` starting at grid step ``step``."""
    amount = amount_in_model_units(rec)
    minutes = rec.duration.total_seconds() / 60.0 if rec.duration is not None else 0.0
    if rec.kind == InterventionKind.MEAL:
        column = MEAL
        rate = amount / max(minutes, 1.0) if minutes > 0 else DEFAULT_EATING_RATE
    else:
        column = INSULIN
        rate = amount / max(round(minutes), 1)
    return Piece(column, int(step), amount, max(rate, 1e-12))


class InputPlan:
    """Every known delivery as pieces; renders held inputs ``(k, 2)`` [g/min, U/min]."""

    def __init__(self, pieces: Iterable[Piece] = ()) -> None:
        self.pieces: list[Piece] = list(pieces)

    def copy(self) -> InputPlan:
        """An independent copy (pieces are immutable)."""
        return InputPlan(self.pieces)

    def add(self, piece: Piece) -> None:
        """Add one delivery."""
        if piece.amount > 0:
            self.pieces.append(piece)

    def render(self, k0: int, k1: int) -> np.ndarray:
        """Inputs of steps ``k0 .. k1-1``: carbohydrate [g/min] and insulin [U/min]."""
        u = np.zeros((max(k1 - k0, 0), 2))
        for p in self.pieces:
            a, b = max(p.start, k0), min(p.end, k1)
            if a >= b:
                continue
            s = np.arange(a, b) - p.start
            u[a - k0:b - k0, p.column] += np.clip(p.amount - s * p.rate, 0.0, p.rate)
        return u

    def prune(self, k: int) -> None:
        """Forget deliveries that ended before step ``k``."""
        self.pieces = [p for p in self.pieces if p.end > k]

    def to_list(self) -> list[list[float]]:
        """JSON-ready form."""
        return [p.to_list() for p in self.pieces]

    @classmethod
    def from_list(cls, rows: Sequence[Sequence[float]]) -> InputPlan:
        """Rebuild from :meth:`to_list`."""
        return cls(Piece(int(c), int(s), float(a), float(r)) for c, s, a, r in rows)


def grid_step(t: datetime, origin: datetime) -> int:
    """The whole minute of the twin's grid nearest to ``t``."""
    return int(round((t - origin).total_seconds() / 60.0))
