"""Insulin pumps (Insulet, Cozmo): what a pump can actually deliver, vectorised over subjects.

A controller asks for a basal rate (U/min) and a bolus (U) per subject; the pump rounds each to
its increment and clips it to its limits. Limits and increments come from
``devices/data/insulin_pumps.csv`` (from simglucose 0.2.11, MIT).

Two conventions:

- ``"physical"`` (default): the numbers mean what the pump maker means: bolus increment and
  limits in U, basal increment and limits in U/h (so a basal request in U/min is converted to U/h,
  rounded to 0.05 U/h, clipped, and converted back).
- ``"simglucose"``: the peer's arithmetic in ``simglucose/actuator/pump.py``, reproduced exactly
  for comparisons with it: the request (U/min) is multiplied by 6000 (the peer's "pmol/min"),
  rounded to the increment there, divided back, then clipped to the limits taken as U/min. The
  rounding step is then 0.05 / 6000 U/min and the limits are far above any request, so this is
  almost a pass-through. The peer's bolus is a rate (U/min over one controller period); medtwin's
  is an amount (U), so this convention divides it by ``period`` (the controller period, min),
  applies the peer's arithmetic to that rate and multiplies back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from medtwin.core.devices import ActuatorProgram
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.devices.catalogue import device_row, device_table
from medtwin.models.glucose.constants import INSULIN_PMOL_PER_UNIT

PUMP_FILE = "insulin_pumps.csv"
#: simglucose's factor from U to "pmol" used inside its pump (1 U of insulin = 6000 pmol).
U_TO_PMOL = INSULIN_PMOL_PER_UNIT

Convention = Literal["physical", "simglucose"]


def pump_names() -> list[str]:
    """Names of the pumps shipped with medtwin."""
    return sorted(device_table(PUMP_FILE).index)


def _checked(values: np.ndarray | float, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(v)):
        idx = np.flatnonzero(~np.isfinite(np.atleast_1d(v)))
        raise SimulationError(f"pump asked for a non-finite {what} (subjects {idx.tolist()})")
    return v


@dataclass(frozen=True)
class InsulinPump:
    """One pump model, applied to whole cohorts at once (inputs are arrays over subjects)."""

    name: str
    min_bolus: float
    max_bolus: float
    inc_bolus: float
    min_basal: float
    max_basal: float
    inc_basal: float
    sample_time: float = 1.0
    convention: Convention = "physical"
    period: float = 1.0

    def __post_init__(self) -> None:
        if self.convention not in ("physical", "simglucose"):
            raise ValidationError(
                f"unknown convention {self.convention!r}; use 'physical' or 'simglucose'",
                where="pump.convention",
            )
        if not (0 <= self.min_bolus <= self.max_bolus and 0 <= self.min_basal <= self.max_basal):
            raise ValidationError("limits must satisfy 0 <= min <= max", where=f"pump {self.name}")
        if self.inc_bolus <= 0 or self.inc_basal <= 0:
            raise ValidationError("increments must be > 0", where=f"pump {self.name}")
        if not self.period > 0:
            raise ValidationError(f"must be > 0 minutes, got {self.period!r}", where="pump.period")

    @classmethod
    def from_name(
        cls, name: str, *, convention: Convention = "physical", period: float = 1.0
    ) -> InsulinPump:
        """The pump called ``name`` (case-insensitive), e.g. ``"Insulet"``, ``"Cozmo"``.

        ``period`` [min] matters only for ``convention="simglucose"`` (see the module docstring).
        """
        row = device_row(PUMP_FILE, name, "pump")
        return cls(
            name=str(row.name),
            min_bolus=float(row["min_bolus [U]"]),
            max_bolus=float(row["max_bolus [U]"]),
            inc_bolus=float(row["inc_bolus [U]"]),
            min_basal=float(row["min_basal [U/h]"]),
            max_basal=float(row["max_basal [U/h]"]),
            inc_basal=float(row["inc_basal [U/h]"]),
            sample_time=float(row["sample_time [min]"]),
            convention=convention,
            period=period,
        )

    def basal(self, rate: np.ndarray | float) -> np.ndarray:
        """Deliverable basal rate [U/min] for each requested rate [U/min]."""
        r = _checked(rate, "basal rate")
        if self.convention == "simglucose":
            return self._peer(r, self.inc_basal, self.min_basal, self.max_basal)
        per_hour = np.round(r * 60.0 / self.inc_basal) * self.inc_basal
        return np.clip(per_hour, self.min_basal, self.max_basal) / 60.0

    def bolus(self, amount: np.ndarray | float) -> np.ndarray:
        """Deliverable bolus [U] for each requested bolus [U]."""
        b = _checked(amount, "bolus")
        if self.convention == "simglucose":
            rate = b / self.period
            return self._peer(rate, self.inc_bolus, self.min_bolus, self.max_bolus) * self.period
        rounded = np.round(b / self.inc_bolus) * self.inc_bolus
        return np.clip(rounded, self.min_bolus, self.max_bolus)

    def reset(self, n_subjects: int, seed: int | None = None) -> None:
        """A pump holds no state; present so every device shares the same life cycle."""

    def program(self, channel: str) -> ActuatorProgram:
        """The arithmetic of :meth:`basal` (``"basal"``) or :meth:`bolus` (``"bolus"``) for the
        compiled loop."""
        if channel not in ("basal", "bolus"):
            raise ValidationError(f"unknown channel {channel!r}; use 'basal' or 'bolus'",
                                  where="pump channel")
        basal = channel == "basal"
        inc, lo, hi = ((self.inc_basal, self.min_basal, self.max_basal) if basal else
                       (self.inc_bolus, self.min_bolus, self.max_bolus))
        if self.convention == "simglucose":
            return ActuatorProgram(U_TO_PMOL, inc, lo, hi, clip_scaled=False,
                                   per_period=0.0 if basal else self.period)
        return ActuatorProgram(60.0 if basal else 1.0, inc, lo, hi, clip_scaled=True)

    @staticmethod
    def _peer(x: np.ndarray, inc: float, lo: float, hi: float) -> np.ndarray:
        pmol = np.round(x * U_TO_PMOL / inc) * inc
        return np.clip(pmol / U_TO_PMOL, lo, hi)

    def as_series(self) -> pd.Series:
        """The pump's parameters, named with their units."""
        return pd.Series(
            {
                "min_bolus [U]": self.min_bolus,
                "max_bolus [U]": self.max_bolus,
                "inc_bolus [U]": self.inc_bolus,
                "min_basal [U/h]": self.min_basal,
                "max_basal [U/h]": self.max_basal,
                "inc_basal [U/h]": self.inc_basal,
            },
            name=self.name,
        )
