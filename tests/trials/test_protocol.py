"""Meal protocols: fixed meals, seeded random meals, per-subject streams."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.core.errors import ValidationError
from medtwin.trials.protocol import FixedMeals, RandomMeals, check_days, check_seed


def test_fixed_meals_repeat_daily_inside_the_window():
    p = FixedMeals.parse(["07:00=50", "12:00=70", "19:00=80"])
    t, g = p.meals(0, 2, seed=1)
    np.testing.assert_array_equal(t, [420, 720, 1140, 1860, 2160, 2580])
    np.testing.assert_array_equal(g, [50, 70, 80, 50, 70, 80])
    t, g = p.meals(0, 0.5, seed=1)  # 12 h: only breakfast
    np.testing.assert_array_equal(t, [420])
    shifted = FixedMeals.parse(["07:00=50"], start_minute=360)
    np.testing.assert_array_equal(shifted.meals(3, 1, 0)[0], [60])


def test_fixed_meals_reject_bad_specs():
    with pytest.raises(ValidationError, match="HH:MM"):
        FixedMeals.parse(["7h=50"])
    with pytest.raises(ValidationError, match=">= 0 g"):
        FixedMeals.parse(["07:00=-5"])
    with pytest.raises(ValidationError, match="within a day"):
        FixedMeals.parse(["25:00=5"])


def test_random_meals_are_seeded_per_subject_and_follow_the_peer_distributions():
    p = RandomMeals()
    a = p.meals(4, 3, seed=7)
    np.testing.assert_array_equal(a[0], p.meals(4, 3, seed=7)[0])
    np.testing.assert_array_equal(a[1], p.meals(4, 3, seed=7)[1])
    assert not np.array_equal(a[0], p.meals(5, 3, seed=7)[0])
    assert np.all(np.diff(a[0]) >= 0) and a[0].max() < 3 * 1440
    # many subject-days: breakfast (05:00-09:00) is eaten ~95% of days with ~45 g
    times, grams = [], []
    for i in range(300):
        t, g = p.meals(i, 1, seed=1)
        times.append(t)
        grams.append(g)
    t, g = np.concatenate(times), np.concatenate(grams)
    breakfast = (t >= 300) & (t < 540)
    assert breakfast.sum() / 300 == pytest.approx(0.95, abs=0.05)
    assert np.all(t == np.round(t)) and np.all(g == np.round(g)) and np.all(g > 0)
    big = g > 30  # main meals only (snacks are ~10 g)
    assert g[breakfast & big].mean() == pytest.approx(45, abs=2.5)


def test_seed_and_days_checks():
    assert check_seed(3) == 3
    for bad in (-1, 1.5, "7", True):
        with pytest.raises(ValidationError, match="seed"):
            check_seed(bad)
    for bad in (0, -2, float("nan"), "x"):
        with pytest.raises(ValidationError, match="days"):
            check_days(bad)
