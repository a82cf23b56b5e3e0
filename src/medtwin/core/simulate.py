"""simulate(): integrate a whole cohort at once, with devices and a controller in the loop."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from medtwin.core.cohort import Cohort
from medtwin.core.controller import (
    ControlAction,
    Controller,
    ControllerInput,
    IdealSensor,
    NoPump,
    Pump,
    Sensor,
)
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.model import Model
from medtwin.core.result import Result
from medtwin.core.schedule import Schedule
from medtwin.core.solvers import STATUS_TEXT, DormandPrince, Solver, Work

log = logging.getLogger(__name__)

#: how many input steps the solver is given at once when no controller is in the loop
_CHUNK = 1440


def simulate(
    model: Model,
    cohort: Cohort,
    schedule: Schedule | None,
    times: Sequence[float] | np.ndarray,
    *,
    solver: Solver | None = None,
    controller: Controller | None = None,
    sensor: Sensor | None = None,
    pump: Pump | None = None,
    input_step: float = 1.0,
    seed: int | None = None,
) -> Result:
    """Simulate every subject of ``cohort`` over ``times`` [min] and return a :class:`Result`.

    Inputs are held constant over input steps of ``input_step`` minutes (1 min, as
    simglucose); every event and every time in ``times`` must fall on that grid. With a
    ``controller``, the loop runs every ``controller.sample_time`` minutes (default: the
    sensor's) for the whole cohort at once; see :mod:`medtwin.core.controller` for the exact
    protocol. Everything is checked before any work: non-finite parameters, events of unknown
    subjects or outside ``[times[0], times[-1])``.
    """
    solver = solver or DormandPrince()
    dt = float(input_step)
    if not (math.isfinite(dt) and dt > 0):
        raise ValidationError(f"must be > 0, got {input_step}", where="input_step")
    t = np.asarray(times, dtype=float)
    if t.ndim != 1 or t.size < 2 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValidationError("need >= 2 finite, strictly increasing times [min]", where="times")
    t0 = float(t[0])
    k_of_t = (t - t0) / dt
    if np.any(np.abs(k_of_t - np.round(k_of_t)) > 1e-9 * np.maximum(1.0, k_of_t)):
        raise ValidationError(f"every time must lie on the {dt:g}-min input grid", where="times")
    rows = np.round(k_of_t).astype(np.int64)
    n_steps = int(rows[-1])

    p = cohort.parameters(model)  # refuses non-finite parameters
    n = len(cohort)
    schedule = schedule or Schedule()
    inputs = schedule.render(model, cohort.ids, t0, dt, n_steps)
    u = np.ascontiguousarray(inputs.u)

    sensed = model.output_index(model.sensed_output) if model.sensed_output else None
    if controller is not None and sensed is None:
        raise ValidationError(f"model {model.name!r} has no sensed output", where="controller")
    if sensor is None and controller is not None:
        sensor = IdealSensor()
    pump = pump or NoPump()

    x = model.initial_state(p)
    x = np.ascontiguousarray(x, dtype=float)
    m = np.ascontiguousarray(model.initial_memory(p), dtype=float)
    states = np.empty((n, n_steps + 1, x.shape[1]))
    states[:, 0] = x
    cgm = np.full((n, n_steps + 1), np.nan) if sensor is not None else None
    work = Work.new(n)

    if sensor is not None:
        sensor.reset(n, seed)
        g0 = model.observe(x[:, None, :], p)[:, 0, sensed]
        cgm[:, 0] = sensor.measure(t0, g0)

    if controller is None:
        for j0 in range(0, n_steps, _CHUNK):
            j1 = min(n_steps, j0 + _CHUNK)
            out = solver.advance(model, t0 + j0 * dt, dt, x, u[:, j0:j1], m, p, work)
            _check(work, cohort, solver)
            states[:, j0 + 1 : j1 + 1] = out
            if sensor is not None:
                g = model.observe(out, p)[..., sensed]
                for j in range(j1 - j0):
                    cgm[:, j0 + j + 1] = sensor.measure(t0 + (j0 + j + 1) * dt, g[:, j])
    else:
        _closed_loop(
            model, cohort, p, controller, sensor, pump, solver, work,
            t0, dt, n_steps, u, inputs.announced, x, m, states, cgm, sensed,
        )

    y = model.observe(states, p)
    u_rows = np.full((n, n_steps + 1, u.shape[2]), np.nan)
    u_rows[:, :n_steps] = u
    meal = np.zeros((n, n_steps + 1))
    meal[:, :n_steps] = inputs.announced
    blocks = [states, y, u_rows, meal[..., None]]
    names = [*model.state_labels, *(v.label for v in model.outputs),
             *(v.label for v in model.inputs), "meal [g]"]
    if cgm is not None:
        blocks.append(cgm[..., None])
        names.append("CGM [mg/dL]")
    values = np.concatenate([b[:, rows] for b in blocks], axis=2)
    meta = {
        "model": model.name,
        "model_version": model.version,
        "solver": repr(solver),
        "input_step [min]": dt,
        "controller": type(controller).__name__ if controller is not None else None,
        "sensor": type(sensor).__name__ if sensor is not None else None,
        "pump": type(pump).__name__,
        "seed": seed,
        "rhs_evaluations": int(work.nfev.sum()),
    }
    return Result(cohort.ids, t.copy(), tuple(names), values, meta)


def _closed_loop(
    model: Model,
    cohort: Cohort,
    p: np.ndarray,
    controller: Controller,
    sensor: Sensor,
    pump: Pump,
    solver: Solver,
    work: Work,
    t0: float,
    dt: float,
    n_steps: int,
    u: np.ndarray,
    announced: np.ndarray,
    x: np.ndarray,
    m: np.ndarray,
    states: np.ndarray,
    cgm: np.ndarray,
    sensed: int,
) -> None:
    """The device loop: sensor -> controller -> pump -> model, every controller period."""
    period = controller.sample_time if controller.sample_time is not None else sensor.sample_time
    q = period / dt
    if not (period > 0 and abs(q - round(q)) < 1e-9):
        raise ValidationError(
            f"controller period {period:g} min must be a whole number of {dt:g}-min input steps",
            where="controller.sample_time",
        )
    q = int(round(q))
    n = len(cohort)
    ins = model.input_index("insulin")
    controller.reset(cohort)
    seen = cgm[:, 0].copy()
    meal_seen = np.zeros(n)
    for j0 in range(0, n_steps, q):
        j1 = min(n_steps, j0 + q)
        t = t0 + j0 * dt
        action = controller(ControllerInput(t, seen.copy(), meal_seen.copy(), cohort.ids))
        basal, bolus = _checked_action(action, n, cohort, t)
        rate = np.asarray(pump.basal(basal), dtype=float) + np.asarray(
            pump.bolus(bolus), dtype=float
        ) / (q * dt)
        if rate.shape != (n,) or not np.all(np.isfinite(rate)) or np.any(rate < 0):
            raise SimulationError(f"pump delivered an invalid insulin rate at t={t:g} min: {rate}")
        u[:, j0:j1, ins] += rate[:, None]
        out = solver.advance(model, t, dt, x, u[:, j0:j1], m, p, work)
        _check(work, cohort, solver)
        states[:, j0 + 1 : j1 + 1] = out
        g = model.observe(out, p)[..., sensed]
        acc = np.zeros(n)
        for j in range(j1 - j0):
            r = sensor.measure(t0 + (j0 + j + 1) * dt, g[:, j])
            cgm[:, j0 + j + 1] = r
            acc += r
        seen = acc / (j1 - j0)  # the peer averages the readings over the period
        meal_seen = announced[:, j0:j1].sum(axis=1)


def _checked_action(
    action: ControlAction, n: int, cohort: Cohort, t: float
) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(action, ControlAction):
        raise SimulationError(
            f"controller returned {type(action).__name__} at t={t:g} min; expected ControlAction"
        )
    out = []
    for what, v in (("basal", action.basal), ("bolus", action.bolus)):
        a = np.asarray(v, dtype=float)
        if a.shape == ():
            a = np.full(n, float(a))
        if a.shape != (n,):
            raise SimulationError(
                f"controller {what} has shape {a.shape} at t={t:g} min; expected ({n},)"
            )
        bad = ~np.isfinite(a) | (a < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SimulationError(
                f"controller returned {what} = {a[i]} for subject {cohort.ids[i]!r} at "
                f"t={t:g} min (must be finite and >= 0); {int(bad.sum())} subject(s) affected"
            )
        out.append(a)
    return out[0], out[1]


def _check(work: Work, cohort: Cohort, solver: Solver) -> None:
    if not work.status.any():
        return
    bad = np.flatnonzero(work.status != 0)
    if bad.size:
        i = int(bad[0])
        raise SimulationError(
            f"{solver!r} failed for subject {cohort.ids[i]!r} at t={work.t_fail[i]:g} min: "
            f"{STATUS_TEXT.get(int(work.status[i]), 'unknown failure')}"
            + (f" ({bad.size} subjects failed)" if bad.size > 1 else "")
        )
