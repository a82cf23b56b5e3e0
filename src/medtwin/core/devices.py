"""Device models in the loop: sensors over any model output, actuators over any model input.

A **sensor** reads one model output (``reads``; default the model's ``sensed_output``) and
produces a reading labelled ``label`` (a result column, e.g. ``"CGM [mg/dL]"``):
``reset(n_subjects, seed)``, then ``measure(t, value)`` at ``t0`` and after every input step,
in increasing ``t``; it takes a new reading on its ``sample_time`` grid and holds the last one
in between. :class:`GenericSensor` adds white noise, a delay, quantisation and limits.

An **actuator** turns a controller's request into what a device delivers:
``deliver(request, period)`` (limits, increments). :class:`LimitedActuator` rounds and clips.

Devices that ship with medtwin also describe themselves as plain numbers
(:class:`SensorProgram`, :class:`ActuatorProgram`) so the compiled loop runs them without a
Python call per step; their ``measure``/``deliver`` implement the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from medtwin.core.errors import SimulationError, ValidationError

Seeds = int | Sequence[int | np.random.SeedSequence] | None


@runtime_checkable
class Sensor(Protocol):
    """A sensor for a whole cohort (see the module docstring).

    ``sample_time`` [min]; ``reset(n_subjects, seed)``: start afresh (the same seed gives the
    same noise); ``measure(t, value)``: ``value`` ``(n,)`` of the output it reads at ``t``
    [min since start] -> reading ``(n,)``. Optional attributes: ``reads`` (output name),
    ``label`` (result column) and ``program(t0, dt, n_steps)`` (see :class:`SensorProgram`).
    """

    sample_time: float

    def reset(self, n_subjects: int, seed: Seeds = None) -> None: ...

    def measure(self, t: float, value: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Actuator(Protocol):
    """A device between a controller and the model: ``deliver(request, period) -> delivered``.

    ``request`` ``(n,)`` in the command's unit; ``period`` [min] is the controller period (an
    amount is spread over it). ``reset(n_subjects, seed)`` starts afresh.
    """

    def reset(self, n_subjects: int, seed: Seeds = None) -> None: ...

    def deliver(self, request: np.ndarray, period: float) -> np.ndarray: ...


@dataclass(frozen=True)
class SensorProgram:
    """A sensor as numbers for the compiled loop, valid after ``reset``.

    A reading at a sample is ``clip(quantise(value(t - delay) + noise[k]), lo, hi)``, where
    ``sample[j]`` is the sample index ``k`` read at time ``t0 + j * dt`` (``-1``: hold the last
    reading) and ``noise(k0, k1)`` the ``(n, k1 - k0)`` additive noise of samples ``k0 .. k1-1``
    (``None``: no noise). ``quantum`` 0 means no quantisation; ``delay`` is in input steps.
    """

    sample: np.ndarray
    noise: Callable[[int, int], np.ndarray] | None = None
    lo: float = -math.inf
    hi: float = math.inf
    quantum: float = 0.0
    delay: int = 0


@dataclass(frozen=True)
class ActuatorProgram:
    """An actuator as numbers: ``clip(round(r * scale / inc) * inc, lo, hi) / scale`` when
    ``clip_scaled`` (limits in the scaled unit), else ``clip(round(r * scale / inc) * inc /
    scale, lo, hi)``; ``inc`` 0 means no rounding, just the clip. ``per_period`` > 0 [min]: the
    request is an amount, rounded as a rate over that many minutes, then turned back."""

    scale: float = 1.0
    inc: float = 0.0
    lo: float = -math.inf
    hi: float = math.inf
    clip_scaled: bool = False
    per_period: float = 0.0

    def apply(self, request: np.ndarray, period: float) -> np.ndarray:
        """The same arithmetic as the compiled loop, on arrays."""
        r = np.asarray(request, dtype=float)
        if self.per_period > 0:
            r = r / self.per_period
        if self.inc > 0:
            r = np.round(r * self.scale / self.inc) * self.inc
            r = np.clip(r, self.lo, self.hi) / self.scale if self.clip_scaled else \
                np.clip(r / self.scale, self.lo, self.hi)
        else:
            r = np.clip(r, self.lo, self.hi)
        return r * self.per_period if self.per_period > 0 else r


def sample_indices(
    t0: float, dt: float, n_steps: int, sample_time: float, *, tol: float = 1e-9
) -> np.ndarray:
    """Sample index read at each time ``t0 + j * dt`` (``j = 0 .. n_steps``), ``-1`` to hold.

    A new reading is taken when ``t / sample_time`` is within ``tol`` of a whole number ``k``
    (not taken already), and at the first time in any case (``floor(t / sample_time)``).
    """
    t = t0 + np.arange(n_steps + 1) * dt
    q = t / sample_time
    k = np.round(q)
    on = np.abs(q - k) < tol
    out = np.where(on, k, -1).astype(np.int64)
    if out[0] < 0:
        out[0] = math.floor(q[0])
    taken = np.flatnonzero(out >= 0)  # a sample index already read is held
    again = taken[1:][out[taken[1:]] == out[taken[:-1]]]
    out[again] = -1
    return out


def _check_n(n_subjects: object) -> int:
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, int | np.integer) \
            or n_subjects < 1:
        raise ValidationError(f"must be an int >= 1, got {n_subjects!r}", where="n_subjects")
    return int(n_subjects)


class GenericSensor:
    """A sensor over any output: Gaussian white noise, a delay, quantisation and limits.

    ``reads``: output name (``None``: the model's ``sensed_output``); ``label``: result column
    (``None``: the model's choice). ``noise_sd`` in the output's unit (subject ``i`` of an int
    seed draws from ``SeedSequence(seed, spawn_key=(i,))``); ``delay`` [min] (a multiple of the
    input step); ``quantum`` (0: none); readings clipped to ``[lo, hi]``.
    """

    def __init__(
        self,
        sample_time: float = 1.0,
        *,
        reads: str | None = None,
        label: str | None = None,
        noise_sd: float = 0.0,
        delay: float = 0.0,
        quantum: float = 0.0,
        lo: float = -math.inf,
        hi: float = math.inf,
    ) -> None:
        for name, v in (("sample_time", sample_time), ("noise_sd", noise_sd), ("delay", delay),
                        ("quantum", quantum)):
            if not (math.isfinite(v) and v >= 0) or (name == "sample_time" and v <= 0):
                bound = "> 0" if name == "sample_time" else ">= 0"
                raise ValidationError(f"must be finite and {bound}, got {v!r}",
                                      where=f"sensor.{name}")
        if not lo < hi:
            raise ValidationError(f"need lo < hi, got [{lo}, {hi}]", where="sensor limits")
        self.sample_time = float(sample_time)
        self.reads = reads
        self.label = label
        self.noise_sd = float(noise_sd)
        self.delay = float(delay)
        self.quantum = float(quantum)
        self.lo, self.hi = float(lo), float(hi)
        self._gens: list[np.random.Generator] = []
        self._ready = False
        self._n = 0
        self._cache = np.zeros((0, 0))
        self._cache_k0 = 0
        self._last_k: int | None = None
        self._last: np.ndarray | None = None
        self._history: list[tuple[float, np.ndarray]] = []

    def reset(self, n_subjects: int, seed: Seeds = None) -> None:
        """Start afresh: forget readings and history, seed the noise of each subject."""
        n = _check_n(n_subjects)
        self._n = n
        self._ready = True
        self._cache = np.zeros((n, 0))
        self._cache_k0 = 0
        self._last_k = None
        self._last = None
        self._history = []
        if self.noise_sd == 0.0:
            return
        if seed is None:
            seqs = np.random.SeedSequence().spawn(n)
        elif isinstance(seed, int | np.integer) and not isinstance(seed, bool):
            if seed < 0:
                raise ValidationError(f"a seed must be >= 0, got {seed}", where="seed")
            seqs = [np.random.SeedSequence(int(seed), spawn_key=(i,)) for i in range(n)]
        else:
            seqs = [s if isinstance(s, np.random.SeedSequence) else np.random.SeedSequence(int(s))
                    for s in seed]
            if len(seqs) != n:
                raise ValidationError(f"{len(seqs)} seeds for {n} subjects", where="seed")
        self._gens = [np.random.Generator(np.random.PCG64(s)) for s in seqs]

    def noise(self, k0: int, k1: int) -> np.ndarray:
        """White noise of samples ``k0 .. k1-1``, ``(n, k1 - k0)``; generated once, in order."""
        if self.noise_sd == 0.0:
            return np.zeros((self._n, max(k1 - k0, 0)))
        end = self._cache_k0 + self._cache.shape[1]
        if k0 < self._cache_k0:
            raise SimulationError("sensor noise already discarded; reset the sensor")
        if k1 > end:
            new = np.stack([g.standard_normal(k1 - end) for g in self._gens]) * self.noise_sd
            self._cache = np.concatenate([self._cache, new], axis=1)
        drop = k0 - self._cache_k0
        if drop > 0:
            self._cache = self._cache[:, drop:]
            self._cache_k0 = k0
        return self._cache[:, k0 - self._cache_k0 : k1 - self._cache_k0].copy()

    def _reading(self, value: np.ndarray, k: int) -> np.ndarray:
        v = value + self.noise(k, k + 1)[:, 0] if self.noise_sd > 0 else value.copy()
        if self.quantum > 0:
            v = np.round(v / self.quantum) * self.quantum
        return np.clip(v, self.lo, self.hi)

    def measure(self, t: float, value: np.ndarray) -> np.ndarray:
        """The reading at ``t`` of the output value ``value`` (the delayed value is used)."""
        if not self._ready:
            raise SimulationError("sensor used before reset(n_subjects, seed)")
        v = np.array(value, dtype=float, copy=True)
        if v.shape != (self._n,):
            raise SimulationError(f"sensor was reset for {self._n} subjects but got a value "
                                  f"shaped {v.shape}")
        if self.delay > 0:  # the value ``delay`` minutes ago (the first value before that)
            self._history.append((t, v))
            cut = t - self.delay + 1e-9
            idx = max((i for i, h in enumerate(self._history) if h[0] <= cut), default=0)
            v = self._history[idx][1]
            self._history = self._history[idx:]
        q = t / self.sample_time
        k = round(q)
        if abs(q - k) >= 1e-9:
            if self._last is not None:
                return self._last.copy()
            k = math.floor(q)
        if k == self._last_k and self._last is not None:
            return self._last.copy()
        self._last_k, self._last = k, self._reading(v, k)
        return self._last.copy()

    def check_step(self, dt: float) -> int:
        """The delay in input steps of ``dt``; a delay off that grid is refused (both loops,
        so the Python loop never rounds what the compiled loop would refuse)."""
        steps = self.delay / dt
        if abs(steps - round(steps)) > 1e-9:
            raise ValidationError(f"delay {self.delay:g} min is not a whole number of "
                                  f"{dt:g}-min input steps", where="sensor.delay")
        return int(round(steps))

    def program(self, t0: float, dt: float, n_steps: int) -> SensorProgram:
        """This sensor for the compiled loop (after ``reset``)."""
        steps = self.check_step(dt)
        return SensorProgram(
            sample_indices(t0, dt, n_steps, self.sample_time),
            self.noise if self.noise_sd > 0 else None,
            self.lo, self.hi, self.quantum, steps,
        )


class IdealSensor(GenericSensor):
    """A noise-free sensor: the true value at each sample time, held in between."""

    def __init__(self, sample_time: float = 1.0, *, reads: str | None = None,
                 label: str | None = None) -> None:
        super().__init__(sample_time, reads=reads, label=label)

    def reset(self, n_subjects: int, seed: Seeds = None) -> None:
        """Forget the last reading (no noise, so the seed is not used)."""
        super().reset(n_subjects, 0)

    def measure(self, t: float, value: np.ndarray) -> np.ndarray:
        """The true value at each sample time (zero-order hold in between)."""
        if not self._ready:  # measuring without reset: size the sensor on first use
            self.reset(len(np.atleast_1d(value)))
        return super().measure(t, value)


class LimitedActuator:
    """An actuator that rounds to ``increment`` (0: no rounding) and clips to ``[lo, hi]``."""

    def __init__(self, increment: float = 0.0, lo: float = -math.inf,
                 hi: float = math.inf) -> None:
        if not (math.isfinite(increment) and increment >= 0):
            raise ValidationError(f"must be >= 0, got {increment!r}", where="actuator.increment")
        if not lo <= hi:
            raise ValidationError(f"need lo <= hi, got [{lo}, {hi}]", where="actuator limits")
        self._program = ActuatorProgram(1.0, float(increment), float(lo), float(hi))

    def reset(self, n_subjects: int, seed: Seeds = None) -> None:
        """Nothing to reset."""

    def deliver(self, request: np.ndarray, period: float) -> np.ndarray:
        """The deliverable value of each request."""
        return self._program.apply(request, period)

    def program(self) -> ActuatorProgram:
        """This actuator for the compiled loop."""
        return self._program
