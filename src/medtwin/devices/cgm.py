"""CGM sensors (Dexcom, GuardianRT, Navigator) with seeded, reproducible noise, vectorised.

The error model is simglucose 0.2.11's (``simglucose/sensor/noise_gen.py``, ``sensor/cgm.py``,
MIT), after Breton & Kovatchev 2008 and Facchinetti et al. 2014:

1. on a 15-min grid, an AR(1) process ``e_j = PACF * (e_{j-1} + z_j)`` with ``z_j ~ N(0, 1)``
   and ``e_0 = z_0`` (the peer's recursion; stationary variance ``PACF^2 / (1 - PACF^2)``);
2. each value mapped to mg/dL by the Johnson SU transform ``xi + lambda sinh((e - gamma)/delta)``;
3. in batches of 10 grid intervals (150 min), the 11 grid values (the last value of the previous
   batch, then 10 new ones) are interpolated by a not-a-knot cubic spline (scipy ``interp1d``
   ``kind="cubic"``) to the sensor's sample times, dropping the first point; the stream of noise
   values is the concatenation of these batches;
4. a reading is taken only at multiples of the sample time (zero-order hold in between):
   ``clip(glucose + noise, min, max)``.

Each subject has its own stream. ``rng="pcg64"`` (default) gives subject ``i`` the generator
``numpy.random.Generator(PCG64(SeedSequence(seed, spawn_key=(i,))))`` or the SeedSequence the
caller hands in, so the stream depends only on the subject's seed, never on how a cohort is
chunked. ``rng="simglucose"`` reproduces the peer's stream exactly: ``RandomState(seed)`` (subject
``i`` of an int seed gets ``seed + i``), and the first noise value is drawn and dropped because
the peer's ``env.reset()`` measures twice at t = 0 and its controller sees the second reading.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.interpolate import interp1d

from medtwin.core.devices import SensorProgram, sample_indices
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.devices.catalogue import device_row, device_table

logger = logging.getLogger(__name__)

SENSOR_FILE = "cgm_sensors.csv"
#: Grid of the AR(1) noise process [min] and number of grid intervals generated per batch.
MODEL_SAMPLE_TIME = 15.0
PRECOMPUTE = 10

RngKind = Literal["pcg64", "simglucose"]
SeedLike = int | np.random.SeedSequence
Seeds = int | Sequence[SeedLike] | None


def sensor_names() -> list[str]:
    """Names of the CGM sensors shipped with medtwin."""
    return sorted(device_table(SENSOR_FILE).index)


def johnson_su_transform(
    e: np.ndarray, *, xi: float, lam: float, gamma: float, delta: float
) -> np.ndarray:
    """Johnson SU map of a normal variate to sensor error [mg/dL]: xi + lam sinh((e-gamma)/delta).

    If ``e ~ N(0, 1)`` the result follows ``scipy.stats.johnsonsu(gamma, delta, xi, lam)``.
    """
    return xi + lam * np.sinh((np.asarray(e, dtype=float) - gamma) / delta)


def ar1_peer(z: np.ndarray, pacf: float, e_prev: np.ndarray) -> np.ndarray:
    """The peer's AR(1) recursion ``e_j = pacf * (e_{j-1} + z_j)`` along the last axis of ``z``."""
    z = np.asarray(z, dtype=float)
    out = np.empty_like(z)
    e = np.asarray(e_prev, dtype=float)
    for j in range(z.shape[-1]):
        e = pacf * (e + z[..., j])
        out[..., j] = e
    return out


@dataclass(frozen=True)
class SensorSpec:
    """Parameters of one CGM model (units: mg/dL, min)."""

    name: str
    pacf: float
    gamma: float
    lam: float
    delta: float
    xi: float
    sample_time: float
    min: float
    max: float

    @classmethod
    def from_name(cls, name: str) -> SensorSpec:
        """The sensor called ``name`` (case-insensitive): Dexcom, GuardianRT or Navigator."""
        row = device_row(SENSOR_FILE, name, "sensor")
        return cls(
            name=str(row.name),
            pacf=float(row["PACF"]),
            gamma=float(row["gamma"]),
            lam=float(row["lambda [mg/dL]"]),
            delta=float(row["delta"]),
            xi=float(row["xi [mg/dL]"]),
            sample_time=float(row["sample_time [min]"]),
            min=float(row["min [mg/dL]"]),
            max=float(row["max [mg/dL]"]),
        )

    def transform(self, e: np.ndarray) -> np.ndarray:
        """This sensor's Johnson SU transform of AR(1) values ``e``."""
        return johnson_su_transform(e, xi=self.xi, lam=self.lam, gamma=self.gamma,
                                    delta=self.delta)


def _interpolation_matrix(sample_time: float) -> np.ndarray:
    """Linear map from the 11 grid values of a batch to the batch's noise values (first dropped).

    A cubic spline is linear in its data, so interpolating the identity once gives the weights;
    ``W @ values`` equals ``interp1d(t15, values, kind="cubic")(t)[1:]`` up to rounding.
    """
    t15 = np.arange(PRECOMPUTE + 1) * MODEL_SAMPLE_TIME
    nsample = int(math.floor(PRECOMPUTE * MODEL_SAMPLE_TIME / sample_time)) + 1
    t = np.arange(nsample) * sample_time
    basis = interp1d(t15, np.eye(PRECOMPUTE + 1), kind="cubic", axis=0)(t)
    return np.ascontiguousarray(basis[1:])


def _check_seed(seed: object, where: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValidationError(f"a seed must be an int >= 0, got {seed!r}", where=where)
    if seed < 0:
        raise ValidationError(f"a seed must be >= 0, got {seed}; pass a non-negative int",
                              where=where)


def subject_generators(n_subjects: int, seed: Seeds, rng: RngKind = "pcg64") -> list:
    """One independent random generator per subject (see the module docstring for the rules)."""
    if rng not in ("pcg64", "simglucose"):
        raise ValidationError(f"unknown rng {rng!r}; use 'pcg64' or 'simglucose'", where="rng")
    if seed is None:
        seeds: list[SeedLike] = list(np.random.SeedSequence().spawn(n_subjects))
        logger.info("CGM noise seeded from fresh entropy: readings will not be reproducible")
    elif isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        _check_seed(seed, "seed")
        if rng == "simglucose":
            seeds = [int(seed) + i for i in range(n_subjects)]
        else:
            seeds = [np.random.SeedSequence(int(seed), spawn_key=(i,)) for i in range(n_subjects)]
    elif isinstance(seed, Sequence | np.ndarray):
        seeds = list(seed)
        if len(seeds) != n_subjects:
            raise ValidationError(f"{len(seeds)} seeds for {n_subjects} subjects; pass one "
                                  "seed per subject or a single int", where="seed")
        for i, s in enumerate(seeds):
            if not isinstance(s, np.random.SeedSequence):
                _check_seed(s, f"seed[{i}]")
    else:
        raise ValidationError(f"expected an int, a sequence of per-subject seeds or None, "
                              f"got {type(seed).__name__}", where="seed")
    gens = []
    for s in seeds:
        if rng == "simglucose":
            state = int(s.generate_state(1)[0]) if isinstance(s, np.random.SeedSequence) else int(s)
            gens.append(np.random.RandomState(state))
        else:
            ss = s if isinstance(s, np.random.SeedSequence) else np.random.SeedSequence(int(s))
            gens.append(np.random.Generator(np.random.PCG64(ss)))
    return gens


class CGMNoise:
    """The noise streams of a cohort: ``value(k)`` is the noise of sample ``k`` for each subject.

    Values are generated in batches of 150 min as the peer does, on demand, and kept only from
    the oldest sample still reachable, so memory does not grow with the length of a run.
    """

    def __init__(self, spec: SensorSpec, generators: Sequence, *, discard: int = 0) -> None:
        self.spec = spec
        self._gens = list(generators)
        self._W = _interpolation_matrix(spec.sample_time)
        n = len(self._gens)
        z0 = np.array([g.standard_normal() for g in self._gens], dtype=float)
        self._e = z0
        self._last15 = spec.transform(z0)
        self._buffer = np.empty((n, 0))
        self._start = -discard  # sample index of the buffer's first column
        self._produced = 0

    @property
    def n_subjects(self) -> int:
        """Number of subjects (streams)."""
        return len(self._gens)

    def _batch(self) -> np.ndarray:
        z = np.stack([g.standard_normal(PRECOMPUTE) for g in self._gens]) if self._gens else \
            np.empty((0, PRECOMPUTE))
        e = ar1_peer(z, self.spec.pacf, self._e)
        self._e = e[:, -1]
        grid = np.concatenate([self._last15[:, None], self.spec.transform(e)], axis=1)
        self._last15 = grid[:, -1]
        # accumulate knot by knot (not a BLAS matmul) so each subject's values are bit-identical
        # whatever the number of subjects in the batch, hence independent of chunking
        out = np.zeros((grid.shape[0], self._W.shape[0]))
        for m in range(grid.shape[1]):
            out += grid[:, m : m + 1] * self._W[None, :, m]
        return out

    def values(self, k0: int, k1: int) -> np.ndarray:
        """Noise of samples ``k0 .. k1-1`` (subjects x samples); ``k0`` may not go back in time."""
        if k0 < self._start:
            raise SimulationError(
                f"CGM noise for sample {k0} was already discarded (oldest kept: {self._start}); "
                "reset the sensor to start again"
            )
        end = self._start + self._buffer.shape[1]
        if k1 > end:
            parts = [self._buffer]
            while end < k1:
                b = self._batch()
                parts.append(b)
                end += b.shape[1]
            self._buffer = np.concatenate(parts, axis=1)
        drop = max(k0 - self._start, 0)
        if drop:
            self._buffer = self._buffer[:, drop:]
            self._start += drop
        return self._buffer[:, k0 - self._start:k1 - self._start].copy()

    def value(self, k: int) -> np.ndarray:
        """Noise of sample ``k`` for every subject."""
        return self.values(k, k + 1)[:, 0]


class CGMSensor:
    """A CGM model applied to a whole cohort: ``measure(t, glucose)`` returns every reading.

    ``t`` is the simulation time in minutes (0 at the start) and ``glucose`` the true
    subcutaneous glucose per subject [mg/dL]. A new reading is taken when ``t`` is a multiple of
    ``sample_time``; in between the last reading is held. Call ``reset(n_subjects, seed)`` first.
    As an engine sensor it reads the model's default sensed output (``reads``; subcutaneous
    glucose for UVA/Padova) into the column ``label`` (default: the model's, ``CGM [mg/dL]``).
    """

    def __init__(self, spec: SensorSpec, *, rng: RngKind = "pcg64", reads: str | None = None,
                 label: str | None = None) -> None:
        if rng not in ("pcg64", "simglucose"):
            raise ValidationError(f"unknown rng {rng!r}; use 'pcg64' or 'simglucose'",
                                  where="rng")
        self.spec = spec
        self.rng: RngKind = rng
        self.reads = reads
        self.label = label
        self._noise: CGMNoise | None = None
        self._last_k: int | None = None
        self._last: np.ndarray | None = None

    @classmethod
    def from_name(cls, name: str, *, rng: RngKind = "pcg64") -> CGMSensor:
        """The sensor ``name`` (Dexcom, GuardianRT, Navigator; case-insensitive)."""
        return cls(SensorSpec.from_name(name), rng=rng)

    @property
    def name(self) -> str:
        """Sensor model name."""
        return self.spec.name

    @property
    def sample_time(self) -> float:
        """Minutes between readings."""
        return self.spec.sample_time

    def reset(self, n_subjects: int, seed: Seeds = None) -> None:
        """Start fresh noise streams for ``n_subjects`` subjects (see the module docstring)."""
        if isinstance(n_subjects, bool) or not isinstance(n_subjects, int | np.integer) \
                or n_subjects < 1:
            raise ValidationError(f"must be an int >= 1, got {n_subjects!r}", where="n_subjects")
        gens = subject_generators(int(n_subjects), seed, self.rng)
        self._noise = CGMNoise(self.spec, gens, discard=1 if self.rng == "simglucose" else 0)
        self._last_k = None
        self._last = None

    def measure(self, t: float, glucose: np.ndarray) -> np.ndarray:
        """Readings at time ``t`` [min] for true glucose ``glucose`` [mg/dL], one per subject."""
        if self._noise is None:
            raise SimulationError("CGM sensor used before reset(n_subjects, seed)")
        g = np.asarray(glucose, dtype=float)
        if g.shape != (self._noise.n_subjects,):
            raise SimulationError(
                f"CGM sensor was reset for {self._noise.n_subjects} subjects but got glucose "
                f"shaped {g.shape}"
            )
        q = t / self.spec.sample_time
        k = round(q)
        on_sample = abs(q - k) < 1e-9
        if not on_sample:
            if self._last is not None:
                return self._last.copy()
            k = math.floor(q)
        if k == self._last_k and self._last is not None:
            return self._last.copy()
        reading = np.clip(g + self._noise.value(k), self.spec.min, self.spec.max)
        self._last_k, self._last = k, reading
        return reading.copy()

    def program(self, t0: float, dt: float, n_steps: int) -> SensorProgram:
        """This sensor for the compiled loop (after ``reset``): the same samples, noise stream
        and limits as :meth:`measure`."""
        if self._noise is None:
            raise SimulationError("CGM sensor used before reset(n_subjects, seed)")
        return SensorProgram(sample_indices(t0, dt, n_steps, self.spec.sample_time),
                             self._noise.values, self.spec.min, self.spec.max)

    def describe(self) -> pd.Series:
        """The sensor's parameters."""
        return pd.Series(self.spec.__dict__, name=self.spec.name)
