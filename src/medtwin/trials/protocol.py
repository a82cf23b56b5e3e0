"""Meal protocols of an in-silico trial: fixed daily meals, or meals drawn per subject and day.

A protocol turns (subject, number of days, trial seed) into that subject's meals, as times in
minutes since the start of the trial and carbohydrate in grams. The random draws of a subject
come from ``SeedSequence(seed, spawn_key=(subject_index, MEAL_STREAM))``: they depend only on the
trial seed and the subject's position in the whole cohort, never on how the cohort is chunked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from scipy.stats import truncnorm

from medtwin.core.errors import ValidationError

#: Stream labels in a subject's spawn key, so meals and sensor noise never share random numbers.
MEAL_STREAM = 0
SENSOR_STREAM = 1


def subject_seed(seed: int, subject_index: int, stream: int) -> np.random.SeedSequence:
    """The random stream ``stream`` of subject ``subject_index`` (position in the whole cohort)."""
    check_seed(seed)
    return np.random.SeedSequence(int(seed), spawn_key=(int(subject_index), int(stream)))


def check_seed(seed: object) -> int:
    """``seed`` as an int, or :class:`ValidationError` if it is not an int >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValidationError(f"must be an int >= 0, got {seed!r}", where="seed")
    if seed < 0:
        raise ValidationError(f"must be >= 0, got {seed}; use a non-negative int", where="seed")
    return int(seed)


def check_days(days: object) -> float:
    """``days`` as a float, or :class:`ValidationError` unless it is a finite number > 0."""
    try:
        d = float(days)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"must be a number of days > 0, got {days!r}", where="days") from exc
    if not math.isfinite(d) or d <= 0:
        raise ValidationError(f"must be > 0, got {days!r}; simulate at least part of a day",
                              where="days")
    return d


@runtime_checkable
class MealProtocol(Protocol):
    """Anything that gives a subject's meals: ``(times [min since start], carbs [g])``."""

    def meals(self, subject_index: int, days: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Meal times [min since the start] (sorted) and sizes [g] for one subject."""
        ...


def _parse_clock(text: str) -> float:
    try:
        hh, mm = text.split(":")
        minute = int(hh) * 60 + int(mm)
    except ValueError as exc:
        raise ValidationError(f"meal time {text!r} is not HH:MM", where="meals") from exc
    if not 0 <= minute < 1440:
        raise ValidationError(f"meal time {text!r} is not within a day", where="meals")
    return float(minute)


@dataclass(frozen=True)
class FixedMeals:
    """The same meals every day: ``((minute of day, grams), ...)``; e.g. 07:00 50 g."""

    daily: tuple[tuple[float, float], ...] = ((420.0, 50.0), (720.0, 70.0), (1140.0, 80.0))
    start_minute: float = 0.0

    def __post_init__(self) -> None:
        for minute, grams in self.daily:
            if not (0 <= minute < 1440):
                raise ValidationError(f"meal at minute {minute} is outside 0..1439",
                                      where="meals")
            if not (math.isfinite(grams) and grams >= 0):
                raise ValidationError(f"meal of {grams} g must be finite and >= 0 g",
                                      where="meals")

    @classmethod
    def parse(cls, specs: Iterable[str], start_minute: float = 0.0) -> FixedMeals:
        """From strings ``"HH:MM=grams"``, e.g. ``["07:00=50", "12:00=70"]``."""
        daily = []
        for spec in specs:
            clock, _, grams = spec.partition("=")
            try:
                g = float(grams)
            except ValueError as exc:
                raise ValidationError(f"meal {spec!r} is not HH:MM=grams", where="meals") from exc
            daily.append((_parse_clock(clock.strip()), g))
        return cls(tuple(sorted(daily)), start_minute)

    def meals(self, subject_index: int, days: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Every daily meal that falls inside ``[0, days * 1440)`` minutes since the start."""
        horizon = check_days(days) * 1440.0
        times, grams = [], []
        for day in range(int(math.ceil(horizon / 1440.0)) + 1):
            for minute, g in self.daily:
                t = day * 1440.0 + minute - self.start_minute
                if 0 <= t < horizon:
                    times.append(t)
                    grams.append(g)
        order = np.argsort(times, kind="stable")
        return np.asarray(times, dtype=float)[order], np.asarray(grams, dtype=float)[order]


@dataclass(frozen=True)
class RandomMeal:
    """One candidate meal of a day: probability, time window and mean/sd, size mean/sd."""

    probability: float
    earliest: float  # min of day
    latest: float  # min of day
    time_mean: float  # min of day
    time_sd: float  # min
    grams_mean: float
    grams_sd: float


def _simglucose_meals() -> tuple[RandomMeal, ...]:
    """simglucose 0.2.11 ``RandomScenario``: breakfast, snack, lunch, snack, dinner, snack."""
    prob = [0.95, 0.3, 0.95, 0.3, 0.95, 0.3]
    lo = [5, 9, 10, 14, 16, 20]
    hi = [9, 10, 14, 16, 20, 23]
    mu = [7, 9.5, 12, 15, 18, 21.5]
    sd = [60, 30, 60, 30, 60, 30]
    g_mu = [45, 10, 70, 10, 80, 10]
    g_sd = [10, 5, 10, 5, 10, 5]
    return tuple(RandomMeal(p, a * 60.0, b * 60.0, m * 60.0, s, gm, gs)
                 for p, a, b, m, s, gm, gs in zip(prob, lo, hi, mu, sd, g_mu, g_sd, strict=True))


@dataclass(frozen=True)
class RandomMeals:
    """Meals drawn per subject and day, as simglucose's ``RandomScenario`` draws them.

    Each candidate meal is eaten with its probability, at a time from a normal distribution
    truncated to its window (rounded to the minute), with a size from a normal distribution
    (rounded to the gram, at least 0). The draws use numpy's PCG64, not the peer's RandomState,
    so they follow the same distributions, not the same numbers.
    """

    candidates: tuple[RandomMeal, ...] = field(default_factory=_simglucose_meals)
    start_minute: float = 0.0

    def meals(self, subject_index: int, days: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """This subject's meals over ``days`` from its own seeded stream."""
        horizon = check_days(days) * 1440.0
        rng = np.random.Generator(np.random.PCG64(subject_seed(seed, subject_index,
                                                               MEAL_STREAM)))
        times, grams = [], []
        for day in range(int(math.ceil((horizon + self.start_minute) / 1440.0))):
            for c in self.candidates:
                if rng.random() < c.probability:
                    a = (c.earliest - c.time_mean) / c.time_sd
                    b = (c.latest - c.time_mean) / c.time_sd
                    minute = float(np.round(truncnorm.rvs(a, b, loc=c.time_mean, scale=c.time_sd,
                                                          random_state=rng)))
                    g = max(float(np.round(rng.normal(c.grams_mean, c.grams_sd))), 0.0)
                    t = day * 1440.0 + minute - self.start_minute
                    if 0 <= t < horizon and g > 0:
                        times.append(t)
                        grams.append(g)
        order = np.argsort(times, kind="stable")
        return np.asarray(times, dtype=float)[order], np.asarray(grams, dtype=float)[order]
