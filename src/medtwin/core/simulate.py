"""simulate(): integrate a whole cohort at once, with sensors, a controller and actuators in
the loop. It knows no particular physiology: inputs, outputs, announcements and sensed
signals are the ones the model and the devices declare (see :mod:`medtwin.core.controller`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtwin.core.cohort import Cohort
from medtwin.core.controller import (
    Command,
    IdealSensor,
    LoopController,
    LoopInput,
    Sensor,
    is_loop_controller,
)
from medtwin.core.devices import Actuator
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.loop import BAD_COMMAND, LoopCommand, LoopSensor, run_compiled
from medtwin.core.model import Model
from medtwin.core.result import Result
from medtwin.core.schedule import Schedule
from medtwin.core.solvers import STATUS_TEXT, DormandPrince, Solver, Work

log = logging.getLogger(__name__)

#: how many input steps the solver is given at once when no controller is in the loop
_CHUNK = 1440


@dataclass(frozen=True)
class _BoundSensor:
    device: Sensor
    output: int
    label: str


@dataclass(frozen=True)
class _BoundCommand:
    command: Command
    input: int
    actuator: Actuator | None


def simulate(
    model: Model,
    cohort: Cohort,
    schedule: Schedule | None,
    times: Sequence[float] | np.ndarray,
    *,
    solver: Solver | None = None,
    controller: Any = None,
    sensor: Sensor | None = None,
    sensors: Sequence[Sensor] = (),
    pump: Any = None,
    actuators: Mapping[str, Actuator] | None = None,
    input_step: float = 1.0,
    seed: int | None = None,
    compiled: bool | None = None,
) -> Result:
    """Simulate every subject of ``cohort`` over ``times`` [min] and return a :class:`Result`.

    Inputs are held constant over input steps of ``input_step`` minutes; every event and every
    time in ``times`` must fall on that grid. ``sensor``/``sensors`` read model outputs (their
    readings become result columns named by the sensors); a ``controller`` (a
    :class:`~medtwin.core.controller.LoopController`, or a controller of the model's own
    contract, which the model adapts, with its ``pump``) runs every ``sample_time`` minutes
    (default: the first sensor's); ``actuators`` (by command name) override the commands' own.
    ``compiled``: ``None`` runs the compiled loop when every part offers it, ``True`` insists,
    ``False`` runs the Python loop. Everything is checked before any work.
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
    u = np.ascontiguousarray(inputs.u, dtype=float)
    announced = _announcements(model, inputs, n, n_steps)

    if controller is not None and not is_loop_controller(controller):
        controller = model.adapt_controller(controller, pump=pump)
    elif pump is not None:
        raise ValidationError("pump= is for a controller of the model's own contract; give a "
                              "loop controller's devices as actuators=", where="pump")
    devices = [*([sensor] if sensor is not None else []), *sensors]
    if not devices and controller is not None:
        devices = list(getattr(controller, "default_sensors", ()))
        if not devices and model.sensed_output is not None:
            devices = [IdealSensor()]
    bound = _bind_sensors(model, devices)
    commands = _bind_commands(model, controller, actuators) if controller is not None else []

    x = np.ascontiguousarray(model.initial_state(p), dtype=float)
    m = np.ascontiguousarray(model.initial_memory(p), dtype=float)
    states = np.empty((n, n_steps + 1, x.shape[1]))
    states[:, 0] = x
    readings = np.full((n, n_steps + 1, len(bound)), np.nan)
    work = Work.new(n)
    for b in bound:
        check_step = getattr(b.device, "check_step", None)
        if check_step is not None:  # a delay off the input grid: refused on either loop
            check_step(dt)
        b.device.reset(n, seed)
    for c in commands:
        if c.actuator is not None:
            c.actuator.reset(n, seed)

    ran_compiled = False
    if controller is None:
        _open_loop(model, p, solver, work, cohort, t0, dt, n_steps, u, x, m, states, readings,
                   bound, getattr(inputs, "boluses", None))
    else:
        if getattr(inputs, "boluses", None) is not None and inputs.boluses.step.size:
            raise ValidationError("state boluses are not yet supported with a controller in "
                                  "the loop; give them as input boluses", where="schedule")
        q = _period_steps(controller, bound, dt)
        controller.reset(cohort)
        plan = _compiled_plan(model, cohort, solver, controller, bound, commands, compiled,
                              t0, dt, n_steps)
        if plan is not None:
            ran_compiled = True
            kind, settings, program, reads = plan
            badcmd, badval = run_compiled(
                model, p, x, m, u, announced, kind, settings, work, t0, dt, n_steps, q,
                program, reads,
                [LoopCommand(c.command.name, c.input, c.command.kind == "amount",
                             c.command.minimum, _actuator_program(c.actuator)) for c in commands],
                [LoopSensor(b.output, b.device.program(t0, dt, n_steps)) for b in bound],
                states, readings,
            )
            _check_compiled(work, cohort, solver, commands, badcmd, badval, t0, q * dt)
        else:
            _closed_loop(model, cohort, p, controller, bound, commands, solver, work, t0, dt,
                         n_steps, q, u, announced, x, m, states, readings)

    y = model.observe(states, p)
    u_rows = np.full((n, n_steps + 1, u.shape[2]), np.nan)
    u_rows[:, :n_steps] = u
    ann_rows = np.zeros((n, n_steps + 1, announced.shape[2]))
    ann_rows[:, :n_steps] = announced
    blocks = [states, y, u_rows, ann_rows, readings]
    names = [*model.state_labels, *(v.label for v in model.outputs),
             *(v.label for v in model.inputs), *(v.label for v in model.announcements),
             *(b.label for b in bound)]
    every = rows.size == n_steps + 1  # every input step is asked for: no gather needed
    values = np.empty((n, rows.size, len(names)))
    col = 0
    for blk in blocks:
        values[:, :, col : col + blk.shape[2]] = blk if every else blk[:, rows]
        col += blk.shape[2]
    wrapped = getattr(controller, "wrapped", controller)
    meta = {
        "model": model.name,
        "model_version": model.version,
        "solver": repr(solver),
        "input_step [min]": dt,
        "controller": type(wrapped).__name__ if controller is not None else None,
        "sensor": type(bound[0].device).__name__ if bound else None,
        "sensors": [b.label for b in bound],
        "pump": type(pump).__name__ if pump is not None else None,
        "compiled_loop": ran_compiled,
        "seed": seed,
        "rhs_evaluations": int(work.nfev.sum()),
    }
    return Result(cohort.ids, t.copy(), tuple(names), values, meta)


def _announcements(model: Model, inputs: Any, n: int, n_steps: int) -> np.ndarray:
    """The schedule's announced amounts per step ``(n, n_steps, n_announcements)``."""
    out = np.zeros((n, n_steps, len(model.announcements)))
    rendered = getattr(inputs, "announced", None)
    for a, v in enumerate(model.announcements):
        if isinstance(rendered, Mapping):
            arr = rendered.get(v.role, rendered.get(v.name))
        else:
            arr = rendered if a == 0 else None
        if arr is not None:
            out[:, :, a] = np.asarray(arr, dtype=float).reshape(n, n_steps)
    return out


def _bind_sensors(model: Model, devices: Sequence[Sensor]) -> list[_BoundSensor]:
    bound: list[_BoundSensor] = []
    for i, dev in enumerate(devices):
        if not isinstance(dev, Sensor):
            raise ValidationError(f"{type(dev).__name__} is not a sensor (needs sample_time, "
                                  "reset and measure)", where=f"sensors[{i}]")
        reads = getattr(dev, "reads", None) or model.sensed_output
        if reads is None:
            raise ValidationError(f"model {model.name!r} has no default sensed output; give "
                                  "the sensor reads=<output name>", where=f"sensors[{i}]")
        try:
            k = model.output_index(reads)
        except KeyError:
            raise ValidationError(
                f"model {model.name!r} has no output {reads!r}; outputs: "
                f"{', '.join(v.name for v in model.outputs)}", where=f"sensors[{i}].reads",
            ) from None
        out = model.outputs[k]
        label = getattr(dev, "label", None) or (
            model.sensor_label if reads == model.sensed_output and model.sensor_label else
            f"{out.name} sensor [{out.unit}]")
        if any(b.label == label for b in bound):
            raise ValidationError(f"two sensors are labelled {label!r}; give each a label=",
                                  where=f"sensors[{i}].label")
        bound.append(_BoundSensor(dev, k, label))
    return bound


def _bind_commands(
    model: Model, controller: LoopController, actuators: Mapping[str, Actuator] | None
) -> list[_BoundCommand]:
    actuators = dict(actuators or {})
    names = {c.name for c in controller.commands}
    unknown = set(actuators) - names
    if unknown:
        raise ValidationError(f"no command {sorted(unknown)[0]!r}; the controller writes "
                              f"{', '.join(sorted(names)) or 'nothing'}", where="actuators")
    out = []
    for c in controller.commands:
        try:
            k = model.input_index(c.input)
        except KeyError:
            raise ValidationError(
                f"model {model.name!r} has no input {c.input!r}; inputs: "
                f"{', '.join(v.name for v in model.inputs)}", where=f"command {c.name}",
            ) from None
        out.append(_BoundCommand(c, k, actuators.get(c.name, c.actuator)))
    return out


def _period_steps(controller: LoopController, bound: list[_BoundSensor], dt: float) -> int:
    period = controller.sample_time
    if period is None:
        if not bound:
            raise ValidationError("the controller has no sample_time and there is no sensor "
                                  "to follow", where="controller.sample_time")
        period = bound[0].device.sample_time
    q = period / dt
    if not (period > 0 and abs(q - round(q)) < 1e-9):
        raise ValidationError(
            f"controller period {period:g} min must be a whole number of {dt:g}-min input steps",
            where="controller.sample_time",
        )
    return int(round(q))


def _actuator_program(actuator: Actuator | None) -> Any:
    make = getattr(actuator, "program", None)
    return make() if callable(make) else None


def _compiled_plan(
    model: Model,
    cohort: Cohort,
    solver: Solver,
    controller: LoopController,
    bound: list[_BoundSensor],
    commands: list[_BoundCommand],
    wanted: bool | None,
    t0: float,
    dt: float,
    n_steps: int,
) -> tuple[int, np.ndarray, Any, np.ndarray] | None:
    """What the compiled loop needs, or ``None`` (with the reason if it was asked for)."""
    if wanted is False:
        return None
    missing = []
    spec = solver.compiled()
    if spec is None:
        missing.append(f"solver {solver.name} has no compiled step")
    if model.output_kernel is None:
        missing.append(f"model {model.name!r} has no output_kernel")
    program = None
    make = getattr(controller, "compiled", None)
    if make is not None:
        program = make(cohort)
    if program is None:
        missing.append(f"controller {type(controller).__name__} has no compiled program")
    for b in bound:
        if not callable(getattr(b.device, "program", None)):
            missing.append(f"sensor {b.label} has no program")
    for c in commands:
        if c.actuator is not None and _actuator_program(c.actuator) is None:
            missing.append(f"the actuator of {c.command.name!r} has no program")
    reads = None
    if program is not None:
        labels = [b.label for b in bound]
        absent = [r for r in program.reads if r not in labels]
        if absent:
            missing.append(f"controller reads {absent[0]!r} but no sensor gives it")
        elif program.reads:
            reads = np.array([labels.index(r) for r in program.reads], dtype=np.int64)
        else:  # no names: the sensors in order
            reads = np.arange(len(bound), dtype=np.int64)
    if missing:
        if wanted:
            raise ValidationError("; ".join(missing), where="compiled")
        log.debug("closed loop runs in Python: %s", "; ".join(missing))
        return None
    return spec[0], spec[1], program, reads  # type: ignore[index]


def _open_loop(model: Model, p: np.ndarray, solver: Solver, work: Work, cohort: Cohort,
               t0: float, dt: float, n_steps: int, u: np.ndarray, x: np.ndarray, m: np.ndarray,
               states: np.ndarray, readings: np.ndarray, bound: list[_BoundSensor],
               boluses: Any = None) -> None:
    """No controller: integrate in chunks; sensors read every step; the schedule's state
    boluses are added between input steps (a chunk starts at each)."""
    if bound:
        y0 = model.observe(x[:, None, :], p)[:, 0]
        for s, b in enumerate(bound):
            readings[:, 0, s] = b.device.measure(t0, y0[:, b.output])
    chunks = (boluses.chunks(n_steps, _CHUNK) if boluses is not None else
              [(j0, min(n_steps, j0 + _CHUNK)) for j0 in range(0, n_steps, _CHUNK)])
    for j0, j1 in chunks:
        if boluses is not None and boluses.apply(x, j0):
            states[:, j0] = x  # the state at a bolus time is the state after it
        out = solver.advance(model, t0 + j0 * dt, dt, x, u[:, j0:j1], m, p, work)
        _check(work, cohort, solver)
        states[:, j0 + 1 : j1 + 1] = out
        if bound:
            y = model.observe(out, p)
            for s, b in enumerate(bound):
                for j in range(j1 - j0):
                    readings[:, j0 + j + 1, s] = b.device.measure(t0 + (j0 + j + 1) * dt,
                                                                  y[:, j, b.output])


def _closed_loop(
    model: Model,
    cohort: Cohort,
    p: np.ndarray,
    controller: LoopController,
    bound: list[_BoundSensor],
    commands: list[_BoundCommand],
    solver: Solver,
    work: Work,
    t0: float,
    dt: float,
    n_steps: int,
    q: int,
    u: np.ndarray,
    announced: np.ndarray,
    x: np.ndarray,
    m: np.ndarray,
    states: np.ndarray,
    readings: np.ndarray,
) -> None:
    """The loop in Python: sensors -> controller -> actuators -> model, every period."""
    n = len(cohort)
    labels = [b.label for b in bound]
    ann_labels = [v.label for v in model.announcements]
    if bound:
        y0 = model.observe(x[:, None, :], p)[:, 0]
        for s, b in enumerate(bound):
            readings[:, 0, s] = b.device.measure(t0, y0[:, b.output])
    seen = readings[:, 0].copy()
    ann_seen = np.zeros((n, len(ann_labels)))
    for j0 in range(0, n_steps, q):
        j1 = min(n_steps, j0 + q)
        t = t0 + j0 * dt
        obs = LoopInput(t, {lab: seen[:, s].copy() for s, lab in enumerate(labels)},
                        {lab: ann_seen[:, a].copy() for a, lab in enumerate(ann_labels)},
                        cohort.ids)
        requested = controller(obs)
        if not isinstance(requested, Mapping):
            raise SimulationError(f"controller returned {type(requested).__name__} at t={t:g} "
                                  "min; expected a mapping of command name to values")
        rate: dict[int, np.ndarray] = {}
        for c in commands:
            v = _checked_command(requested, c.command, n, cohort, t)
            d = v if c.actuator is None else np.asarray(c.actuator.deliver(v, q * dt), float)
            if d.shape != (n,) or not np.all(np.isfinite(d)):
                raise SimulationError(f"actuator of {c.command.name!r} delivered an invalid "
                                      f"value at t={t:g} min: {d}")
            if c.command.kind == "amount":
                d = d / (q * dt)
            rate[c.input] = rate[c.input] + d if c.input in rate else d
        for k, r in rate.items():
            u[:, j0:j1, k] += r[:, None]
        out = solver.advance(model, t, dt, x, u[:, j0:j1], m, p, work)
        _check(work, cohort, solver)
        states[:, j0 + 1 : j1 + 1] = out
        if bound:
            y = model.observe(out, p)
            for s, b in enumerate(bound):
                acc = np.zeros(n)
                for j in range(j1 - j0):
                    r = b.device.measure(t0 + (j0 + j + 1) * dt, y[:, j, b.output])
                    readings[:, j0 + j + 1, s] = r
                    acc += r
                seen[:, s] = acc / (j1 - j0)  # the mean of the readings over the period
        ann_seen = announced[:, j0:j1].sum(axis=1)


def _checked_command(requested: Mapping[str, Any], command: Command, n: int, cohort: Cohort,
                     t: float) -> np.ndarray:
    if command.name not in requested:
        raise SimulationError(f"controller gave no {command.name!r} at t={t:g} min")
    a = np.asarray(requested[command.name], dtype=float)
    if a.shape == ():
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise SimulationError(
            f"controller {command.name} has shape {a.shape} at t={t:g} min; expected ({n},)"
        )
    bad = ~np.isfinite(a) | (a < command.minimum)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SimulationError(_bad_command_text(command, a[i], cohort.ids[i], t, int(bad.sum())))
    return a


def _bad_command_text(command: Command, value: float, subject: str, t: float,
                      count: int) -> str:
    bound = "" if command.minimum == -math.inf else f" and >= {command.minimum:g}"
    return (f"controller returned {command.name} = {value} for subject {subject!r} at "
            f"t={t:g} min (must be finite{bound}); {count} subject(s) affected")


def _check_compiled(work: Work, cohort: Cohort, solver: Solver, commands: list[_BoundCommand],
                    badcmd: np.ndarray, badval: np.ndarray, t0: float, period: float) -> None:
    """Report what the Python loop would: subjects run to their own failure here, while the
    Python loop stops the cohort at the end of the first controller period in which one
    failed. So the earliest failure decides; for a solver failure, the subjects whose solver
    failed within that same period are the ones reported (lowest index named, and counted)."""
    if not work.status.any():
        return
    failed = np.flatnonzero(work.status != 0)
    first = failed[np.argmin(work.t_fail[failed])]
    if work.status[first] == BAD_COMMAND:
        t = float(work.t_fail[first])
        same = failed[(work.status[failed] == BAD_COMMAND) & (work.t_fail[failed] == t)]
        raise SimulationError(_bad_command_text(commands[int(badcmd[first])].command,
                                                float(badval[first]), cohort.ids[first], t,
                                                same.size))
    k = max(np.ceil((work.t_fail[first] - t0) / period) - 1.0, 0.0)  # its period's index
    start = t0 + k * period
    in_period = failed[(work.status[failed] != BAD_COMMAND) & (work.t_fail[failed] > start)
                       & (work.t_fail[failed] <= start + period)]
    status = np.zeros_like(work.status)
    status[in_period] = work.status[in_period]
    _check(Work(work.h, status, work.t_fail, work.nfev), cohort, solver)


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
