"""The validated, immutable form of a hospital-unit model (what the engine runs).

A model file (YAML, see ``models/*.yaml``) is parsed and checked by :mod:`medtwin.ops.loader`
into these dataclasses; nothing here reads files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medtwin.ops.distributions import Distribution

EXIT = "exit"
UNITS_PER_HOUR = {"minutes": 60.0, "hours": 1.0}


@dataclass(frozen=True)
class Resource:
    """Beds, cubicles, staff: a fixed ``capacity`` or an hourly ``roster`` (24 or 168 counts)."""

    name: str
    capacity: int
    roster: tuple[int, ...] | None = None
    cost_per_hour: float = 0.0


@dataclass(frozen=True)
class Activity:
    """Something a patient waits for and then does on one unit of a resource.

    ``hold``: keep the resource after the activity (until a release step or exit), e.g. a
    cubicle held while waiting for a ward bed. ``releases``: resources held from earlier
    steps that are let go when this activity starts (the cubicle, once the bed is granted).
    ``patience``: time a patient waits before
    leaving without being seen (LWBS). ``balk_at``: leave at once if this many already queue.
    """

    name: str
    resource: str
    duration: Distribution
    hold: bool = False
    patience: Distribution | None = None
    balk_at: int | None = None
    releases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One node of a pathway: an activity, a probabilistic branch, or a release.

    ``next`` lists (target step id or ``exit``, probability); one entry for a plain sequence.
    """

    id: str
    kind: str  # "activity" | "branch" | "release"
    target: str  # activity name (activity) or resource name (release); "" for a branch
    next: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class PatientClass:
    """A patient class (e.g. triage category) with its priority (lower = sooner) and pathway."""

    name: str
    steps: tuple[Step, ...]
    priority: int = 0


@dataclass(frozen=True)
class ArrivalStream:
    """Non-stationary Poisson arrivals: hourly rates (1, 24 or 168 of them, cyclic, per hour
    of clock time), optional day-of-week multipliers, and the mix of patient classes.

    In the model file the rates are a number, a list, or an hourly CSV (``rates_csv``),
    optionally limited to an ``opening_hours`` table and multiplied by ``scale``; the loader
    resolves them to ``rates_per_hour``."""

    name: str
    rates_per_hour: tuple[float, ...]
    classes: tuple[tuple[str, float], ...]
    day_of_week: tuple[float, ...] | None = None

    def rate_at(self, hour_of_week: Any) -> Any:
        """Arrivals per hour at clock hour(s) of the week (0 = Monday 00:00)."""
        import numpy as np

        h = np.floor(np.asarray(hour_of_week, dtype=float)).astype(np.int64)
        rates = np.asarray(self.rates_per_hour)
        r = rates[h % len(rates)]
        if self.day_of_week is not None:
            r = r * np.asarray(self.day_of_week)[(h // 24) % 7]
        return r

    def max_rate(self) -> float:
        """Upper bound of the rate (for thinning)."""
        m = max(self.rates_per_hour)
        return m * (max(self.day_of_week) if self.day_of_week else 1.0)


@dataclass(frozen=True)
class Model:
    """A hospital unit: resources, activities, patient classes, arrivals, run settings, KPIs.

    Times are in ``time_unit`` (minutes or hours). The clock starts at ``start_hour`` on
    ``start_day`` (0 = Monday). ``targets`` maps a KPI suffix to a time-in-system limit, e.g.
    ``{"4h": 240}`` gives the KPI ``p_within_4h``.
    """

    name: str
    time_unit: str
    resources: dict[str, Resource]
    activities: dict[str, Activity]
    classes: dict[str, PatientClass]
    arrivals: tuple[ArrivalStream, ...]
    warm_up: float = 0.0
    length: float = 1440.0
    replications: int = 20
    start_hour: float = 0.0
    start_day: int = 0
    targets: dict[str, float] = field(default_factory=dict)
    census: dict[str, str] = field(default_factory=dict)
    description: str = ""
    file: str = "<model>"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def units_per_hour(self) -> float:
        """Model time units in one hour (60 for minutes)."""
        return UNITS_PER_HOUR[self.time_unit]

    @property
    def horizon(self) -> float:
        """Warm-up plus results-collection length."""
        return self.warm_up + self.length

    def cost_per_hour(self) -> float:
        """Staffing/resource cost of one hour at the modelled counts (mean over a roster)."""
        total = 0.0
        for r in self.resources.values():
            staffed = sum(r.roster) / len(r.roster) if r.roster else r.capacity
            total += r.cost_per_hour * staffed
        return total
