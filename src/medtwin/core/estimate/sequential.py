"""What every sequential filter shares: set-up, the reading loop, late data, summaries, state.

A filter's vector is ``z = [model states, transformed learned parameters]``. Between readings
the samples move through the :class:`~medtwin.core.estimate.dynamics.Dynamics`; process noise
(``state_noise`` on named states, ``walk_sd`` on learned parameters, each an sd per square root
of the model's time unit) enters at the *start* of each interval, so the filters see the
discrete model ``x_k+1 = f(x_k + w_k)``, ``y_k = h(x_k) + v_k``.

Readings may come at any times (irregular), with some values missing (they are skipped), and
late (older than the filter's time). Late-data policy ``late=``:

- ``"refilter"`` (default): the filter keeps a checkpoint after every reading (the last
  ``history`` of them, random-number state included) and the readings since; a late reading
  restores the newest checkpoint at or before its time and re-runs every reading after it,
  the late one in its place. The result is exactly what in-order arrival would have given.
  A reading older than the oldest checkpoint is not assimilated and is listed in ``flags_``.
- ``"skip"``: a late reading is not assimilated and is listed in ``flags_``.

``state_dict()`` / ``load_state_dict()`` save and restore the posterior (without the
checkpoints): a twin stored between calls re-filters late data from a stored snapshot instead
(``medtwin.twin.cardio_sync`` does).
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.estimate.dynamics import Dynamics, ModelDynamics
from medtwin.core.estimate.observation import ObservationModel, Reading, check_observations
from medtwin.core.estimate.priors import LearnedParameter, check_learned
from medtwin.core.model import Model

log = logging.getLogger(__name__)

LATE_POLICIES = ("refilter", "skip")


class SequentialFilter(ABC):
    """Base of :class:`EnsembleKalmanFilter`, :class:`UnscentedKalmanFilter` and
    :class:`ParticleFilter` (see the module doc). Constructor arguments are only stored;
    ``assimilate`` returns ``self``; fitted attributes end in ``_``."""

    def __init__(
        self,
        dynamics: Dynamics | Model,
        base: Mapping[str, float] | np.ndarray,
        learn: Sequence[LearnedParameter],
        observations: Sequence[ObservationModel],
        *,
        t0: float = 0.0,
        initial_state: np.ndarray | None = None,
        initial_state_sd: Mapping[str, float] | None = None,
        state_noise: Mapping[str, float] | None = None,
        updated_states: Sequence[str] | None = None,
        state_bounds: Mapping[str, tuple[float, float]] | None = None,
        late: str = "refilter",
        history: int = 64,
        seed: int = 0,
    ) -> None:
        self.dynamics = dynamics
        self.base = base
        self.learn = learn
        self.observations = observations
        self.t0 = t0
        self.initial_state = initial_state
        self.initial_state_sd = initial_state_sd
        self.state_noise = state_noise
        self.updated_states = updated_states
        self.state_bounds = state_bounds
        self.late = late
        self.history = history
        self.seed = seed

    # --- set-up --------------------------------------------------------------------------
    def _setup(self) -> None:
        dyn = self.dynamics
        self._dyn: Dynamics = ModelDynamics(dyn) if isinstance(dyn, Model) else dyn
        model = self._dyn.model
        labels = tuple(model.parameter_labels)
        self._learn = tuple(self.learn)
        self._cols = check_learned(self._learn, labels)
        self._obs = tuple(self.observations)
        self._obs_index = check_observations(self._obs)
        if isinstance(self.base, Mapping):
            missing = [lab for lab in labels if lab not in self.base]
            if missing:
                raise ValidationError(f"base parameters lack {missing}", where="base")
            row = np.array([float(self.base[lab]) for lab in labels])
        else:
            row = np.asarray(self.base, dtype=float).reshape(-1)
            if row.size != len(labels):
                raise ValidationError(f"{row.size} base values for {len(labels)} parameters",
                                      where="base")
        if not np.all(np.isfinite(row)):
            raise ValidationError("base parameters must be finite", where="base")
        self._base = row
        names = self._dyn.state_names
        self._state_names = names
        self._ns = len(names)
        self._q = len(self._learn)

        def index(mapping: Mapping[str, Any] | Sequence[str] | None, what: str) -> list[int]:
            unknown = [k for k in (mapping or ()) if k not in names]
            if unknown:
                raise ValidationError(f"unknown state(s) {unknown}; states: {', '.join(names)}",
                                      where=what)
            return [names.index(k) for k in (mapping or ())]

        self._x_sd = np.zeros(self._ns)
        for i, k in zip(index(self.initial_state_sd, "initial_state_sd"),
                        (self.initial_state_sd or {}), strict=True):
            self._x_sd[i] = _nonneg(self.initial_state_sd[k], f"initial_state_sd[{k}]")
        self._noise = np.zeros(self._ns + self._q)
        for i, k in zip(index(self.state_noise, "state_noise"), (self.state_noise or {}),
                        strict=True):
            self._noise[i] = _nonneg(self.state_noise[k], f"state_noise[{k}]")
        self._noise[self._ns:] = [lp.walk_sd for lp in self._learn]
        upd = (list(range(self._ns)) if self.updated_states is None
               else index(self.updated_states, "updated_states"))
        self._updated = np.array(sorted(upd) + list(range(self._ns, self._ns + self._q)), int)
        self._bounds = [(names.index(k), float(lo), float(hi))
                        for k, (lo, hi) in (self.state_bounds or {}).items()
                        if index([k], "state_bounds")]
        if self.late not in LATE_POLICIES:
            raise ValidationError(f"unknown late-data policy {self.late!r}; use one of "
                                  f"{', '.join(LATE_POLICIES)}", where="late")
        if not isinstance(self.history, int) or self.history < 1:
            raise ValidationError(f"must be an int >= 1, got {self.history!r}", where="history")
        if self.initial_state is not None:
            x0 = np.asarray(self.initial_state, dtype=float).reshape(-1)
            if x0.size != self._ns or not np.all(np.isfinite(x0)):
                raise ValidationError(f"need {self._ns} finite values", where="initial_state")

    def _params(self, z: np.ndarray) -> np.ndarray:
        """Parameter rows ``(n, n_par)`` of samples ``z`` ``(n, nz)``."""
        p = np.repeat(self._base[None], z.shape[0], axis=0)
        for j, (lp, c) in enumerate(zip(self._learn, self._cols, strict=True)):
            p[:, c] = lp.inverse(z[:, self._ns + j])
        return np.ascontiguousarray(p)

    def _prior_samples(self, n: int, draws: np.ndarray) -> np.ndarray:
        """Samples ``(n, nz)`` from standard-normal ``draws`` ``(n, q + ns)``: parameters from
        their priors, states from the model's initial state (or ``initial_state``) of each
        sample's parameters plus ``initial_state_sd`` noise."""
        z = np.empty((n, self._ns + self._q))
        for j, lp in enumerate(self._learn):
            z[:, self._ns + j] = lp.prior_mean + lp.sd * draws[:, j]
        p = self._params(z)
        if self.initial_state is None:
            x, _ = self._dyn.initial(p)
        else:
            x = np.repeat(np.asarray(self.initial_state, dtype=float).reshape(1, -1), n, axis=0)
        z[:, :self._ns] = x + self._x_sd * draws[:, self._q:]
        self._clip(z)
        return z

    def _clip(self, z: np.ndarray) -> None:
        for i, lo, hi in self._bounds:
            np.clip(z[..., i], lo, hi, out=z[..., i])

    def _noise_draw(self, rng: np.random.Generator, n: int, span: float) -> np.ndarray:
        """Process noise ``(n, nz)`` over ``span`` time units."""
        if span <= 0 or not self._noise.any():
            return np.zeros((n, self._noise.size))
        return self._noise * math.sqrt(span) * rng.standard_normal((n, self._noise.size))

    # --- the filter's own parts -------------------------------------------------------------
    @abstractmethod
    def _init_state(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The prior posterior's arrays."""

    @abstractmethod
    def _step(self, span: float, t0: float, t1: float, reading: dict[str, float]) -> None:
        """Propagate ``self._s`` from ``t0`` to ``t1`` (``span`` = t1 - t0), then update it
        with the present values of a reading (may be empty)."""

    @abstractmethod
    def _weighted(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior samples ``(n, nz)`` and weights ``(n,)`` summing to 1."""

    # --- the reading loop ---------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Whether the prior has been drawn."""
        return hasattr(self, "_s")

    def start(self) -> SequentialFilter:
        """Draw the prior at ``t0`` (done by the first ``assimilate`` otherwise); returns self."""
        self._setup()
        self._rng = np.random.default_rng(np.random.SeedSequence(self.seed))
        self._s = self._init_state(self._rng)
        self.time_ = float(self.t0)
        self.n_readings_ = 0
        self.log_likelihood_ = 0.0
        self.flags_: list[dict[str, Any]] = []
        self._arrivals = 0
        self._log: list[Reading] = []
        self._checkpoints: list[tuple[float, Any]] = [(self.time_, self._checkpoint())]
        return self

    def assimilate(self, readings: Iterable[Reading]) -> SequentialFilter:
        """Bring the filter up to date with ``readings`` (any order); returns self.

        In time order each moves the samples to its time and updates them with its present
        values; an unknown observation name is a :class:`ValidationError` before any work.
        Late readings follow the ``late`` policy (module doc); ``flags_`` lists what was not
        assimilated in this call."""
        if not self.started:
            self.start()
        batch = []
        for r in readings:
            if not isinstance(r, Reading):
                raise ValidationError(f"expected a Reading, got {type(r).__name__}",
                                      where="readings")
            unknown = [k for k in r.values if k not in self._obs_index]
            if unknown:
                raise ValidationError(f"no observation model {unknown}; known: "
                                      f"{', '.join(self._obs_index)}",
                                      where=f"reading {r.source_id or r.time}")
            self._arrivals += 1
            batch.append(Reading(float(r.time), dict(r.values), r.source_id, self._arrivals))
        batch.sort(key=lambda r: (r.time, r.arrival))
        self.flags_ = []
        for r in batch:
            if r.time < self.time_:
                self._late(r)
            else:
                self._assimilate_one(r)
        return self

    def _assimilate_one(self, r: Reading) -> None:
        self._step(r.time - self.time_, self.time_, r.time, r.present())
        self.time_ = r.time
        self.n_readings_ += 1
        self._log.append(r)
        self._checkpoints.append((self.time_, self._checkpoint()))
        if len(self._checkpoints) > self.history:
            del self._checkpoints[0]
            oldest = self._checkpoints[0][0]
            self._log = [x for x in self._log if x.time > oldest]

    def _late(self, r: Reading) -> None:
        where = [i for i, (t, _) in enumerate(self._checkpoints) if t <= r.time]
        if self.late == "skip" or not where:
            why = ("late-data policy 'skip'" if self.late == "skip" else
                   f"older than the oldest checkpoint ({self._checkpoints[0][0]:g}); raise "
                   "history to re-filter further back")
            self._flag(r, f"reading at {r.time:g} is older than the filter ({self.time_:g}): "
                          f"not assimilated ({why})")
            return
        i = where[-1]
        t_cp, cp = self._checkpoints[i]
        replay = [x for x in self._log if x.time > t_cp] + [r]
        replay.sort(key=lambda x: (x.time, x.arrival))
        self._restore(cp)
        self._checkpoints = self._checkpoints[:i + 1]
        self._log = [x for x in self._log if x.time <= t_cp]
        self.time_ = t_cp
        log.info("late reading at %g (filter at %g): re-filtering %d reading(s) from the "
                 "checkpoint at %g", r.time, replay[-1].time, len(replay), t_cp)
        for x in replay:
            self._assimilate_one(x)

    def _flag(self, r: Reading, reason: str) -> None:
        log.warning("filter: %s", reason)
        self.flags_.append({"source_id": r.source_id, "time": r.time, "reason": reason})

    def _checkpoint(self) -> Any:
        return (copy.deepcopy(self._s), copy.deepcopy(self._rng.bit_generator.state),
                self.log_likelihood_, self.n_readings_)

    def _restore(self, cp: Any) -> None:
        s, rng, ll, n = cp
        self._s = copy.deepcopy(s)
        self._rng.bit_generator.state = copy.deepcopy(rng)
        self.log_likelihood_ = ll
        self.n_readings_ = n

    # --- the posterior ------------------------------------------------------------------------
    def _need_started(self) -> None:
        if not self.started:
            raise NotFoundError("the filter has not started; call start() or assimilate()")

    def _natural(self, z: np.ndarray) -> np.ndarray:
        out = z.copy()
        for j, lp in enumerate(self._learn):
            out[:, self._ns + j] = lp.inverse(z[:, self._ns + j])
        return out

    def parameter_summary(self, level: float = 0.9) -> pd.DataFrame:
        """Posterior of each learned parameter on its natural scale: ``mean``, ``sd`` and the
        central ``level`` interval ``lower``, ``upper`` (index: parameter label)."""
        self._need_started()
        if not 0 < level < 1:
            raise ValidationError(f"must be in (0, 1), got {level}", where="level")
        z, w = self._weighted()
        th = self._natural(z)[:, self._ns:]
        mean = w @ th
        sd = np.sqrt(np.maximum(w @ (th - mean) ** 2, 0.0))
        lo = [weighted_quantile(th[:, j], w, (1 - level) / 2) for j in range(self._q)]
        hi = [weighted_quantile(th[:, j], w, (1 + level) / 2) for j in range(self._q)]
        return pd.DataFrame({"mean": mean, "sd": sd, "lower": lo, "upper": hi},
                            index=[lp.label for lp in self._learn])

    @property
    def parameters_(self) -> dict[str, float]:
        """Posterior mean of each learned parameter (natural scale)."""
        return {k: float(v) for k, v in self.parameter_summary()["mean"].items()}

    @property
    def state_mean_(self) -> pd.Series:
        """Posterior mean of the model states."""
        self._need_started()
        z, w = self._weighted()
        return pd.Series(w @ z[:, :self._ns], index=list(self._state_names))

    @property
    def covariance_(self) -> pd.DataFrame:
        """Posterior covariance of ``z`` (states, then transformed parameters)."""
        self._need_started()
        z, w = self._weighted()
        d = z - w @ z
        names = list(self._state_names) + [f"z({lp.label})" for lp in self._learn]
        return pd.DataFrame((d * w[:, None]).T @ d, index=names, columns=names)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
        """``n`` equally weighted posterior draws: states ``(n, ns)``, memory ``(n, nm)`` and
        parameter rows ``(n, n_par)`` (for forecasts and what-ifs)."""
        self._need_started()
        z, m = self._draw_z(n, rng)
        return np.ascontiguousarray(z[:, :self._ns]), m, self._params(z)

    def _draw_z(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        z, w = self._weighted()
        idx = systematic_resample(w, n, rng)
        m = self._s["m"]
        return z[idx].copy(), np.ascontiguousarray(m[idx % m.shape[0]]).copy()

    def forecast(self, times: Sequence[float], *, level: float = 0.9, n_samples: int = 64
                 ) -> pd.DataFrame:
        """The outputs over future ``times`` (ascending, >= the filter's time): rows of
        ``time``, ``output``, ``mean``, ``lower``, ``upper`` (central ``level`` band) from
        ``n_samples`` posterior draws moved with the process noise. The draws have their own
        random stream (fixed by ``seed`` and the readings so far), so the same filter gives
        the same forecast; the filter is not changed."""
        self._need_started()
        ts = [float(t) for t in times]
        if not ts or any(b < a for a, b in zip([self.time_] + ts, ts, strict=False)):
            raise ValidationError("times must be ascending and >= the filter's time "
                                  f"{self.time_:g}", where="times")
        rng = np.random.default_rng(np.random.SeedSequence(self.seed,
                                                           spawn_key=(7, self.n_readings_)))
        z, m = self._draw_z(int(n_samples), rng)
        rows = []
        t = self.time_
        for t1 in ts:
            z += self._noise_draw(rng, z.shape[0], t1 - t)
            self._clip(z)
            x = np.ascontiguousarray(z[:, :self._ns])
            out = self._dyn.propagate(t, t1, x, m, self._params(z))
            z[:, :self._ns] = x
            t = t1
            for name, v in out.items():
                rows.append({"time": t1, "output": name, "mean": float(np.mean(v)),
                             "lower": float(np.quantile(v, (1 - level) / 2)),
                             "upper": float(np.quantile(v, (1 + level) / 2))})
        return pd.DataFrame(rows)

    # --- saving -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The posterior and counters as a JSON-ready dict (no checkpoints)."""
        self._need_started()
        st = self._rng.bit_generator.state
        return {
            "filter": type(self).__name__,
            "time": self.time_,
            "n_readings": self.n_readings_,
            "log_likelihood": self.log_likelihood_,
            "arrays": {k: np.asarray(v).tolist() for k, v in self._s.items()},
            "rng": {"bit_generator": st["bit_generator"],
                    "state": {k: str(v) for k, v in st["state"].items()},
                    "has_uint32": st["has_uint32"], "uinteger": str(st["uinteger"])},
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> SequentialFilter:
        """Continue from :meth:`state_dict` (same configuration); returns self."""
        if d.get("filter") != type(self).__name__:
            raise ValidationError(f"a state of {d.get('filter')!r}, not {type(self).__name__}",
                                  where="state_dict")
        self.start()
        self._s = {k: np.asarray(v, dtype=float) for k, v in d["arrays"].items()}
        r = d["rng"]
        self._rng.bit_generator.state = {
            "bit_generator": r["bit_generator"],
            "state": {k: int(v) for k, v in r["state"].items()},
            "has_uint32": int(r["has_uint32"]), "uinteger": int(r["uinteger"])}
        self.time_ = float(d["time"])
        self.n_readings_ = int(d["n_readings"])
        self.log_likelihood_ = float(d["log_likelihood"])
        self._checkpoints = [(self.time_, self._checkpoint())]
        return self


# --- helpers shared by the filters -------------------------------------------------------------
def _nonneg(v: float, where: str) -> float:
    f = float(v)
    if not (math.isfinite(f) and f >= 0):
        raise ValidationError(f"must be finite and >= 0, got {v}", where=where)
    return f


def standard_draws(rng: np.random.Generator, n: int, d: int, exact: bool) -> np.ndarray:
    """``(n, d)`` standard-normal draws; with ``exact`` (and ``n > d``) transformed so that
    their sample mean is 0 and sample covariance (``ddof=1``) the identity exactly."""
    e = rng.standard_normal((n, d))
    if not exact or d == 0:
        return e
    if n <= d:
        raise ValidationError(f"exact moments need more samples ({n}) than dimensions ({d})",
                              where="exact_moments")
    e -= e.mean(axis=0)
    c = np.cov(e, rowvar=False).reshape(d, d)
    return e @ np.linalg.inv(np.linalg.cholesky(c)).T


def weighted_quantile(v: np.ndarray, w: np.ndarray, q: float) -> float:
    """Quantile ``q`` of values ``v`` with weights ``w`` (interpolated on the weighted CDF)."""
    order = np.argsort(v)
    vs, ws = v[order], w[order]
    c = np.cumsum(ws) - 0.5 * ws
    c /= ws.sum()
    return float(np.interp(q, c, vs))


def systematic_resample(w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` systematic resamples of weights ``w`` (Kitagawa 1996)."""
    positions = (rng.random() + np.arange(n)) / n
    c = np.cumsum(w)
    c[-1] = 1.0
    return np.minimum(np.searchsorted(c, positions), len(w) - 1)
