"""One-call front for a type-1 diabetes scenario: subject + meals + controller + sensor + pump.

It composes the UVA/Padova model, a subject, a daily meal plan, devices and the solver with
simglucose-compatible defaults, and never mutates what it is given. It lives in ``devices``
(not ``models.glucose``) because it builds devices by name, and ``models`` may import only
``core``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from medtwin.core.controller import IdealSensor, Sensor
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.schedule import Meal, Schedule
from medtwin.core.simulate import simulate
from medtwin.devices.controllers import make_controller
from medtwin.models.glucose.loop import NoPump, Pump
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.models.glucose.uva_padova import UVAPadova

#: simglucose's default start time; only labels the clock column
DEFAULT_START = datetime(2018, 1, 1)


def parse_clock(value: str | float) -> float:
    """Minutes after midnight of ``"HH:MM"`` (or a number of minutes, returned as is)."""
    if isinstance(value, int | float):
        return float(value)
    try:
        hh, mm = str(value).strip().split(":")
        minutes = int(hh) * 60 + int(mm)
    except ValueError:
        raise ValidationError(f"expected HH:MM, got {value!r}", where="meal time") from None
    if not (0 <= int(hh) < 24 and 0 <= int(mm) < 60):
        raise ValidationError(f"not a time of day: {value!r}", where="meal time")
    return float(minutes)


def parse_meal(text: str) -> tuple[str, float]:
    """``"07:00=50"`` -> ``("07:00", 50.0)``; refuses anything else with a typed error."""
    time_part, sep, grams = str(text).partition("=")
    if not sep:
        raise ValidationError(f"expected HH:MM=GRAMS, got {text!r}", where="--meal")
    try:
        amount = float(grams)
    except ValueError:
        raise ValidationError(f"grams must be a number, got {grams!r}", where="--meal") from None
    parse_clock(time_part)
    return time_part.strip(), amount


def sensor_by_name(name: str | None) -> Sensor:
    """``None``/``"none"``: a noise-free 1-min sensor; else a CGM from ``devices.cgm``."""
    if name is None or str(name).lower() in ("none", "ideal"):
        return IdealSensor(1.0)
    from medtwin.devices.cgm import CGMSensor, sensor_names

    known = sensor_names()
    match = [k for k in known if k.lower() == str(name).lower()]
    if not match:
        raise NotFoundError(
            f"unknown sensor {name!r}; known sensors: none, {', '.join(known)}"
        )
    return CGMSensor.from_name(match[0])


def pump_by_name(name: str | None) -> Pump:
    """``None``/``"none"``: no limits; else a pump from ``devices.pump`` in the peer's units."""
    if name is None or str(name).lower() == "none":
        return NoPump()
    from medtwin.devices.pump import InsulinPump

    return InsulinPump.from_name(name, convention="simglucose")


def simulate_scenario(
    subject: str = "adult#001",
    meals: Sequence[tuple[str | float, float]] = (("07:00", 50), ("12:00", 70), ("19:00", 80)),
    *,
    controller: str = "basal-bolus",
    sensor: str | None = None,
    pump: str | None = "Insulet",
    seed: int | None = 1,
    days: int = 1,
    start: datetime = DEFAULT_START,
) -> pd.DataFrame:
    """Simulate one subject for ``days`` days from midnight; meals repeat every day.

    Returns one row per minute (``days * 1440 + 1`` rows): ``time`` (clock), ``minute``,
    ``BG`` (subcutaneous glucose x12/Vg, the peer's "BG") and ``G_plasma`` [mg/dL], ``CGM``
    (the sensor reading) [mg/dL], ``CHO`` eaten [g/min] and ``meal`` announced [g],
    ``insulin`` delivered over the following minute [U/min], then the 13 states.
    """
    if not (isinstance(days, int) and days >= 1):
        raise ValidationError(f"must be a whole number >= 1, got {days!r}", where="days")
    cohort = uva_padova_cohort([subject])
    ctrl = make_controller(controller)
    dev_sensor = sensor_by_name(sensor)
    dev_pump = pump_by_name(pump)
    events = []
    for when, grams in meals:
        minute = parse_clock(when)
        if grams < 0:
            raise ValidationError(f"meal at {when} is {grams} g; must be >= 0", where="meals")
        events += [Meal(d * 1440.0 + minute, float(grams)) for d in range(days)]
    times = np.arange(0.0, days * 1440 + 1.0)
    result = simulate(UVAPadova(), cohort, Schedule(events), times, controller=ctrl,
                      sensor=dev_sensor, pump=dev_pump, seed=seed)
    model = UVAPadova()
    df = pd.DataFrame({
        "time": [start + timedelta(minutes=float(m)) for m in times],
        "minute": times,
        "BG": result["G_sc"][0],
        "CGM": result["CGM"][0],
        "G_plasma": result["G_plasma"][0],
        "CHO": result["CHO"][0],
        "meal": result["meal"][0],
        "insulin": result["insulin"][0],
    })
    for label in model.state_labels:
        df[label] = result[label][0]
    df.attrs["meta"] = dict(result.meta, subject=subject)
    return df
