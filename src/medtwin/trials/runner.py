"""In-silico trials: cohort x meal protocol x controller x days -> outcomes, run in chunks on Dask.

The cohort is split into chunks of subjects; each chunk is one call of :func:`run_chunk`, which
builds that chunk's meal schedule, sensor, pump and controller and calls the engine's
``simulate``. Chunks run on a Dask ``distributed`` cluster: an in-process ``LocalCluster`` by
default, an existing one given by its scheduler address (``"tcp://host:8786"``) or a ``Client``,
or without Dask (``scheduler="serial"``). A subject's random streams (meals, sensor noise) come
from ``SeedSequence(seed, spawn_key=(subject position, stream))``, so every subject's outcome is
the same whatever the chunk size and wherever the chunk runs.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medtwin.core.cohort import Cohort
from medtwin.core.devices import SensorProgram
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.model import Model
from medtwin.core.schedule import Meal, Schedule
from medtwin.devices.cgm import CGMSensor
from medtwin.devices.pump import InsulinPump
from medtwin.trials.metrics import outcome_metrics
from medtwin.trials.protocol import (
    SENSOR_STREAM,
    MealProtocol,
    RandomMeals,
    check_days,
    check_seed,
    subject_seed,
)

if TYPE_CHECKING:
    from distributed import Client

    from medtwin.models.glucose.loop import Controller

logger = logging.getLogger(__name__)

#: How a trial names its controller: a registered name, or a zero-argument factory.
ControllerSpec = str | Callable[[], "Controller"]
SIM_STEP = 1.0  # min: the engine's input step (simglucose's 1-min patient step)
#: Glucose below this [mg/dL] is outside the model's physiological range (the peer stops a run
#: below 10 mg/dL); outcome metrics use this floor there and the table keeps the true minimum.
GLUCOSE_FLOOR = 1.0


def _default_model() -> Model:
    from medtwin.models.glucose.uva_padova import UVAPadova

    return UVAPadova()


def controller_names() -> list[str]:
    """Names of the controllers a trial can use by name."""
    from medtwin.devices import controllers

    return controllers.controller_names()


def make_controller(spec: ControllerSpec) -> Controller:
    """A fresh controller from a registered name or a zero-argument factory."""
    if callable(spec):
        return spec()
    from medtwin.devices import controllers

    return controllers.make_controller(spec)


def _uva_padova(subjects: str | Sequence[str] | None) -> Cohort:
    from medtwin.models.glucose.subjects import uva_padova_cohort

    return uva_padova_cohort(subjects)


#: Cohorts a trial can load by name: name -> loader(subjects pattern or list or None).
COHORTS: dict[str, Callable[[str | Sequence[str] | None], Cohort]] = {
    "uva-padova": _uva_padova,
}


def load_cohort(name: str, subjects: str | Sequence[str] | None = None) -> Cohort:
    """A named cohort (``"uva-padova"``), optionally narrowed to ``subjects`` (ids or a pattern
    such as ``"adult#*"``); :class:`NotFoundError` lists the known cohorts or subjects."""
    key = str(name).lower()
    if key not in COHORTS:
        raise NotFoundError(f"unknown cohort {name!r}; known cohorts: {', '.join(sorted(COHORTS))}")
    if isinstance(subjects, str) and "," in subjects:  # "adult#001, adult#002": a list
        subjects = [s.strip() for s in subjects.split(",") if s.strip()]
    return COHORTS[key](subjects)


@dataclass(frozen=True)
class Trial:
    """What to run: who, what they eat, who doses, for how long, with which devices and seed.

    ``controller``: a registered name (e.g. ``"pid"``, ``"basal-bolus"``) or a zero-argument
    factory returning a fresh controller (it is called once per chunk, on the worker).
    ``sensor``: a CGM name or ``None`` for a noise-free 1-min sensor; ``pump``: a pump name, an
    :class:`~medtwin.devices.pump.InsulinPump` (e.g. the simglucose convention) or ``None`` for
    an ideal pump. ``record_every`` [min] is the spacing of the returned traces;
    outcomes are computed from the 1-min trace of subcutaneous glucose (the peer's "BG").
    """

    cohort: Cohort
    controller: ControllerSpec
    days: float = 1.0
    seed: int = 0
    meals: MealProtocol = field(default_factory=RandomMeals)
    sensor: str | None = "Dexcom"
    pump: str | InsulinPump | None = "Insulet"
    record_every: float = 5.0
    model: Model = field(default_factory=_default_model)

    def __post_init__(self) -> None:
        if not isinstance(self.cohort, Cohort):
            raise ValidationError(f"expected a Cohort, got {type(self.cohort).__name__}",
                                  where="cohort")
        if len(self.cohort) == 0:
            raise ValidationError("the cohort is empty; select at least one subject",
                                  where="cohort")
        check_days(self.days)
        check_seed(self.seed)
        if self.sensor is not None:
            CGMSensor.from_name(self.sensor)
        if isinstance(self.pump, str):
            InsulinPump.from_name(self.pump)
        if isinstance(self.controller, str):
            known = controller_names()
            if self.controller.lower() not in known:
                raise NotFoundError(f"unknown controller {self.controller!r}; known controllers:"
                                    f" {', '.join(known)}")
        elif not callable(self.controller):
            raise ValidationError("give a controller name or a zero-argument factory",
                                  where="controller")
        if not isinstance(self.meals, MealProtocol):
            raise ValidationError("meals must have a .meals(subject_index, days, seed) method",
                                  where="meals")
        steps = self.record_every / SIM_STEP
        if not (self.record_every > 0 and abs(steps - round(steps)) < 1e-9):
            raise ValidationError(f"must be a positive multiple of {SIM_STEP:g} min, got "
                                  f"{self.record_every!r}", where="record_every")

    @property
    def n_steps(self) -> int:
        """Number of 1-min input steps."""
        return int(round(check_days(self.days) * 1440.0 / SIM_STEP))


@dataclass(frozen=True)
class ChunkResult:
    """Outcomes and traces of subjects ``start .. stop-1`` of a trial."""

    start: int
    stop: int
    table: pd.DataFrame
    times: np.ndarray
    traces: dict[str, np.ndarray]


@dataclass(frozen=True)
class TrialResult:
    """A finished trial: the outcome table (one row per subject) and the per-time traces.

    ``traces[name]`` is shaped subjects x ``times`` [min since start]: ``"BG [mg/dL]"`` (true
    subcutaneous glucose), ``"CGM [mg/dL]"``, ``"insulin [U/min]"`` and ``"CHO [g/min]"``.
    """

    table: pd.DataFrame
    times: np.ndarray
    traces: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def subjects(self) -> list[str]:
        """Subject ids, in cohort order."""
        return list(self.table.index)

    def traces_frame(self) -> pd.DataFrame:
        """The traces as a long table: subject, time [min], then one column per trace."""
        n, k = len(self.subjects), self.times.size
        df = pd.DataFrame({"subject": np.repeat(np.array(self.subjects, dtype=object), k),
                           "time [min]": np.tile(self.times, n)})
        for name, values in self.traces.items():
            df[name] = values.reshape(-1)
        return df

    def write_report(self, path: str, *, title: str | None = None) -> Any:
        """Write the HTML or PNG report (see :mod:`medtwin.trials.report`)."""
        from medtwin.trials.report import write_report

        return write_report(path, self.table, self.traces["BG [mg/dL]"], self.times,
                            title=title or f"In-silico trial: {self.meta.get('controller')}",
                            meta=self.meta)


class _SubjectSeededSensor:
    """Hands the wrapped CGM each subject's own noise stream, whatever seed ``simulate`` passes."""

    def __init__(self, sensor: CGMSensor, seeds: Sequence[np.random.SeedSequence]) -> None:
        self._sensor = sensor
        self._seeds = list(seeds)
        self.sample_time = sensor.sample_time
        self.reads = sensor.reads
        self.label = sensor.label

    def reset(self, n_subjects: int, seed: int | None = None) -> None:
        self._sensor.reset(n_subjects, self._seeds)

    def measure(self, t: float, glucose: np.ndarray) -> np.ndarray:
        return self._sensor.measure(t, glucose)

    def program(self, t0: float, dt: float, n_steps: int) -> SensorProgram:
        return self._sensor.program(t0, dt, n_steps)


def _chunk_schedule(trial: Trial, ids: Sequence[str], start: int) -> Schedule:
    events = []
    for offset, subject in enumerate(ids):
        times, grams = trial.meals.meals(start + offset, trial.days, trial.seed)
        for t, g in zip(times, grams, strict=True):
            if g > 0:
                events.append(Meal(float(round(t)), float(g), subject=subject))
    return Schedule(events)


def _limit_numba_threads() -> None:
    """On a Dask worker, keep numba to one thread: the cluster already uses every core."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    import numba

    numba.set_num_threads(1)


def run_chunk(trial: Trial, start: int, stop: int) -> ChunkResult:
    """Simulate subjects ``start .. stop-1`` of ``trial`` and compute their outcomes."""
    from medtwin.core.controller import IdealSensor
    from medtwin.core.simulate import simulate
    from medtwin.models.glucose.loop import NoPump

    _limit_numba_threads()
    ids = list(trial.cohort.ids[start:stop])
    cohort = trial.cohort.select(ids)
    schedule = _chunk_schedule(trial, ids, start)
    if trial.sensor is None:
        sensor: Any = IdealSensor(1.0)
    else:
        seeds = [subject_seed(trial.seed, i, SENSOR_STREAM) for i in range(start, stop)]
        sensor = _SubjectSeededSensor(CGMSensor.from_name(trial.sensor), seeds)
    pump: Any = (NoPump() if trial.pump is None else trial.pump
                 if isinstance(trial.pump, InsulinPump) else InsulinPump.from_name(trial.pump))
    controller = make_controller(trial.controller)
    times = np.arange(trial.n_steps + 1) * SIM_STEP
    result = simulate(trial.model, cohort, schedule, times, controller=controller,
                      sensor=sensor, pump=pump)
    bg = result["G_sc"][:, :-1]
    insulin = result["insulin"][:, :-1]
    low = bg.min(axis=1) < GLUCOSE_FLOOR
    if low.any():
        logger.warning(
            "glucose of %s fell below %g mg/dL (the model is outside its physiological range; "
            "the controller over-dosed): outcomes use %g mg/dL there, see 'min BG [mg/dL]'",
            [ids[i] for i in np.flatnonzero(low)], GLUCOSE_FLOOR, GLUCOSE_FLOOR,
        )
    table = outcome_metrics(np.maximum(bg, GLUCOSE_FLOOR), SIM_STEP, insulin=insulin,
                            subjects=ids)
    table.insert(0, "min BG [mg/dL]", bg.min(axis=1))
    every = int(round(trial.record_every / SIM_STEP))
    keep = slice(0, trial.n_steps, every)
    traces = {
        "BG [mg/dL]": np.ascontiguousarray(bg[:, keep]),
        "CGM [mg/dL]": np.ascontiguousarray(result["CGM"][:, :-1][:, keep]),
        "insulin [U/min]": np.ascontiguousarray(insulin[:, keep]),
        "CHO [g/min]": np.ascontiguousarray(result["CHO"][:, :-1][:, keep]),
    }
    return ChunkResult(start, stop, table, times[:-1][keep], traces)


def _chunks(n: int, chunk_size: int | None, n_workers: int) -> list[tuple[int, int]]:
    if chunk_size is None:
        chunk_size = max(1, math.ceil(n / max(1, 2 * n_workers)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValidationError(f"must be an int >= 1, got {chunk_size!r}", where="chunk_size")
    return [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]


@contextmanager
def _dask_client(
    scheduler: str | None, client: Client | None, processes: bool, n_workers: int
) -> Iterator[Client]:
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes,
                      dashboard_address=":0", silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as c:
        yield c


def _progress_bar(total: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    show = progress is not False and sys.stderr.isatty()
    return tqdm(total=total, unit="subject", desc="trial", disable=not show, file=sys.stderr)


def run_trial(
    trial: Trial,
    *,
    chunk_size: int | None = None,
    scheduler: str | None = None,
    client: Client | None = None,
    processes: bool = True,
    n_workers: int = 2,
    progress: bool | None = None,
) -> TrialResult:
    """Run ``trial`` in chunks of ``chunk_size`` subjects and gather the results in cohort order.

    ``scheduler``: ``None`` starts an in-process ``LocalCluster`` (``n_workers`` workers, worker
    processes unless ``processes=False``) for this run; ``"tcp://host:port"`` uses an existing
    cluster; ``"serial"`` runs the chunks one after another in this process, without Dask.
    ``client``: an open ``distributed.Client`` to use instead. ``progress``: a progress bar on
    stderr when it is a terminal (``False``: never). Default chunk size: the cohort split into
    twice as many chunks as workers.
    """
    if not isinstance(trial, Trial):
        raise ValidationError(f"expected a Trial, got {type(trial).__name__}", where="trial")
    n = len(trial.cohort)
    chunks = _chunks(n, chunk_size, n_workers)
    logger.info("trial: %d subjects x %g days in %d chunks", n, trial.days, len(chunks))
    results: list[ChunkResult] = []
    with _progress_bar(n, progress) as bar:
        if scheduler == "serial" and client is None:
            for a, b in chunks:
                results.append(run_chunk(trial, a, b))
                bar.update(b - a)
        else:
            from distributed import as_completed

            with _dask_client(scheduler, client, processes, n_workers) as c:
                futures = [c.submit(run_chunk, trial, a, b, pure=False) for a, b in chunks]
                for future in as_completed(futures):
                    r = future.result()
                    results.append(r)
                    bar.update(r.stop - r.start)
    return gather_chunks(trial, results)


def gather_chunks(trial: Trial, parts: Sequence[ChunkResult]) -> TrialResult:
    """One :class:`TrialResult` from chunks (any order) that cover the cohort exactly once."""
    if not parts:
        raise ValidationError("no chunk has run", where="trial")
    parts = sorted(parts, key=lambda r: r.start)
    covered = [(p.start, p.stop) for p in parts]
    if covered[0][0] != 0 or covered[-1][1] != len(trial.cohort) or any(
            a[1] != b[0] for a, b in zip(covered, covered[1:], strict=False)):
        raise ValidationError(f"chunks {covered} do not cover the {len(trial.cohort)} "
                              "subjects once", where="trial")
    table = pd.concat([p.table for p in parts])
    traces = {k: np.concatenate([p.traces[k] for p in parts]) for k in parts[0].traces}
    meta = {
        "model": f"{trial.model.name} {trial.model.version}",
        "controller": trial.controller if isinstance(trial.controller, str)
        else getattr(trial.controller, "__name__", type(trial.controller).__name__),
        "subjects": len(trial.cohort),
        "days": trial.days,
        "seed": trial.seed,
        "sensor": trial.sensor or "none (noise-free, 1 min)",
        "pump": getattr(trial.pump, "name", trial.pump) or "none (ideal)",
        "meals": type(trial.meals).__name__,
        "chunks": len(parts),
    }
    return TrialResult(table, parts[0].times, traces, meta)
