"""The SimPy engine: one replication of a :class:`~medtwin.ops.schema.Model`.

Lean by design: arrival times are generated up front with numpy (inverting the cumulative
rate of each stream), each arriving patient's first duration, patience and branch choice at
every activity come from per-patient numpy draws (repeat visits from numpy blocks), and the
per-patient process only requests, waits and logs into lists. KPIs are computed afterwards,
vectorised, from the logs (:mod:`medtwin.ops.kpis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import simpy

from medtwin.ops.schema import EXIT, Model
from medtwin.ops.streams import BLOCK, BlockDraw, stream_rng

_BLOCKER = -(2**31)  # priority of the roster's off-duty placeholders (served first)


class _Everything:
    """A set that holds everything (patients already in the unit draw in sequence)."""

    def __contains__(self, item: object) -> bool:
        return True


_ALL = _Everything()


@dataclass
class ActivityLog:
    """Per activity: one row per queue entry (patient, entered, started, duration, ended,
    and for those who gave up, when they left the queue)."""

    pid: list = field(default_factory=list)
    enter: list = field(default_factory=list)
    start: list = field(default_factory=list)
    dur: list = field(default_factory=list)
    end: list = field(default_factory=list)
    left: dict = field(default_factory=dict)  # row -> time a patient gave up queueing (LWBS)

    def arrays(self) -> dict[str, np.ndarray]:
        """The log as numpy arrays (ended = started + duration unless held longer)."""
        start = np.asarray(self.start, dtype=float)
        dur = np.asarray(self.dur, dtype=float)
        end = np.asarray(self.end, dtype=float) if self.end else start + dur
        left = np.full(start.size, np.nan)
        for k, t in self.left.items():
            left[k] = t
        return {"pid": np.asarray(self.pid, dtype=np.int64), "left": left,
                "enter": np.asarray(self.enter, dtype=float), "start": start, "dur": dur,
                "end": np.where(np.isnan(end), start + dur, end)}


@dataclass
class RepLog:
    """Everything one replication produced, as arrays (picklable, small)."""

    rep: int
    horizon: float
    arrival: np.ndarray
    exit: np.ndarray
    cls: np.ndarray
    lwbs: np.ndarray
    initial: np.ndarray
    activities: dict[str, dict[str, np.ndarray]]
    events: int = 0  # arrivals + service starts + service ends


@dataclass(frozen=True)
class Initial:
    """A patient already in the unit at time 0 (forecast from the census)."""

    klass: str
    step: str
    remaining: float
    elapsed: float


class _Act:
    __slots__ = ("kind", "res", "log", "draw", "hold", "patience", "balk", "next", "act",
                 "branch_u", "cum", "targets", "resname", "request", "releases", "own_draw",
                 "own_patience", "own_u", "key")


def _clock_offset(model: Model) -> float:
    return model.start_day * 24.0 + model.start_hour


def _cumulative_rate(stream: object, uph: float, horizon: float,
                     clock_offset_h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hour boundaries over [0, horizon] (model time), the rate in each piece (per model time
    unit) and the cumulative expected arrivals at each boundary."""
    first = math.floor(clock_offset_h) + 1
    last = clock_offset_h + horizon / uph
    inner = np.arange(first, math.ceil(last), dtype=float)
    edges = np.concatenate([[0.0], (inner - clock_offset_h) * uph, [horizon]])
    edges = np.unique(edges)
    mids = clock_offset_h + (edges[:-1] + np.diff(edges) / 2) / uph
    rate = np.asarray(stream.rate_at(mids), dtype=float) / uph
    cum = np.concatenate([[0.0], np.cumsum(rate * np.diff(edges))])
    return edges, rate, cum


def arrival_times(model: Model, seed: int, rep: int, horizon: float,
                  clock_offset_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times and class indices over [0, horizon), all streams merged.

    Each stream inverts its cumulative rate: the k-th point of a unit-rate Poisson process
    (stream ``arrivals:<name>``) becomes the k-th arrival, and its class comes from the k-th
    uniform of ``arrivals:<name>:class`` against the class mix taken in name order. So the
    same model gives the same arrivals whatever the order of its keys, and a changed profile
    moves arrivals in time without reshuffling the random numbers behind them (common random
    numbers across scenarios)."""
    arrivals, classes = arrivals_by_stream(model, seed, rep, horizon, clock_offset_h)
    if not arrivals:
        return np.empty(0), np.empty(0, dtype=np.int64)
    t = np.concatenate(arrivals)
    c = np.concatenate(classes)
    order = np.argsort(t, kind="stable")
    return t[order], c[order]


def arrivals_by_stream(model: Model, seed: int, rep: int, horizon: float,
                       clock_offset_h: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per arrival stream (model order): its arrival times and class indices."""
    class_index = {c: i for i, c in enumerate(model.classes)}
    uph = model.units_per_hour
    times, classes = [], []
    for stream in model.arrivals:
        edges, rate, cum = _cumulative_rate(stream, uph, horizon, clock_offset_h)
        total = float(cum[-1])
        rng = stream_rng(seed, rep, f"arrivals:{stream.name}")
        n = int(total + 6 * math.sqrt(total) + 20)
        e = np.cumsum(rng.exponential(1.0, n))
        while e.size and e[-1] < total:  # rare: top up
            e = np.concatenate([e, e[-1] + np.cumsum(rng.exponential(1.0, n))])
        e = e[e < total]
        piece = np.searchsorted(cum, e, side="right") - 1
        t = edges[piece] + (e - cum[piece]) / rate[piece]
        t = np.minimum(t, np.nextafter(horizon, 0))
        names = sorted(n for n, _ in stream.classes)
        probs = dict(stream.classes)
        p = np.asarray([probs[n] for n in names], dtype=float)
        cum_p = np.cumsum(p / p.sum())
        cum_p[-1] = 2.0
        u = stream_rng(seed, rep, f"arrivals:{stream.name}:class").uniform(size=t.size)
        pick = np.searchsorted(cum_p, u, side="right")
        times.append(t)
        classes.append(np.array([class_index[n] for n in names], dtype=np.int64)[pick])
    return times, classes


class Replication:
    """One run of a model with its own random streams; :meth:`run` returns a :class:`RepLog`."""

    def __init__(self, model: Model, seed: int, rep: int, *, horizon: float | None = None,
                 clock_offset_h: float | None = None,
                 initial: tuple[Initial, ...] = ()) -> None:
        self.model, self.seed, self.rep = model, seed, rep
        self.horizon = model.horizon if horizon is None else horizon
        self.offset = _clock_offset(model) if clock_offset_h is None else clock_offset_h
        self.initial = initial

    # --- building ---------------------------------------------------------------------
    def _build(self) -> None:
        m, env = self.model, self.env
        priorities = {}
        for c in m.classes.values():
            for s in c.steps:
                if s.kind == "activity":
                    priorities.setdefault(m.activities[s.target].resource, set()).add(c.priority)
        self.res = {}
        for r in m.resources.values():
            prio = r.roster is not None or len(priorities.get(r.name, ())) > 1
            self.res[r.name] = (simpy.PriorityResource if prio else simpy.Resource)(
                env, capacity=r.capacity)
            if r.roster is not None:
                env.process(self._roster(self.res[r.name], r.roster))
        self.logs = {a: ActivityLog() for a in m.activities}
        draws = {}
        own = {}
        for a in m.activities.values():
            draws[a.name] = self._draw(f"duration:{a.name}", a.duration)
            own[a.name] = self._own(f"duration:{a.name}", a.duration.sample)
        self.paths = {}
        for ci, c in enumerate(m.classes.values()):
            index = {s.id: i for i, s in enumerate(c.steps)}
            nodes = []
            for s in c.steps:
                n = _Act()
                n.kind = s.kind
                n.next = index.get(s.next[0][0], -1) if s.kind != "branch" else -1
                if s.kind == "activity":
                    a = m.activities[s.target]
                    n.act, n.resname = a.name, a.resource
                    n.res, n.log, n.draw, n.hold = self.res[a.resource], self.logs[a.name], \
                        draws[a.name], a.hold
                    n.patience = self._draw(f"patience:{a.name}", a.patience) \
                        if a.patience else None
                    n.own_draw = own[a.name]
                    n.own_patience = self._own(f"patience:{a.name}", a.patience.sample) \
                        if a.patience else None
                    n.key = a.name
                    n.balk = a.balk_at
                    n.releases = a.releases
                    n.request = partial(n.res.request, priority=c.priority) \
                        if isinstance(n.res, simpy.PriorityResource) else n.res.request
                elif s.kind == "release":
                    n.resname = s.target
                else:
                    rng = stream_rng(self.seed, self.rep, f"branch:{c.name}:{s.id}")
                    n.branch_u = BlockDraw(lambda rng=rng: rng.uniform(size=BLOCK))
                    n.own_u = self._own(f"branch:{c.name}:{s.id}",
                                        lambda rng, k: rng.uniform(size=k))
                    n.key = f"branch:{s.id}"
                    nxt = sorted(s.next)  # by target name: key order in YAML is no matter
                    probs = np.array([p for _, p in nxt])
                    n.cum = np.cumsum(probs / probs.sum()).tolist()
                    n.cum[-1] = 2.0
                    n.targets = [index[t] if t != EXIT else -1 for t, _ in nxt]
                nodes.append(n)
            self.paths[ci] = (nodes, c.priority, index)

    def _own(self, name: str, sample: object) -> list[float]:
        """One value per arriving patient, in arrival order: the k-th patient of arrival
        stream ``s`` gets the k-th value of stream ``<name>|<s>`` (common random numbers per
        patient, whatever the order in which patients reach the activity)."""
        parts = [np.asarray(sample(stream_rng(self.seed, self.rep, f"{name}|{st.name}"),
                                   len(t)), dtype=float)
                 for st, t in zip(self.model.arrivals, self._stream_times, strict=True)]
        if not parts:
            return []
        return np.concatenate(parts)[self._order].tolist()

    def _draw(self, name: str, dist: object) -> BlockDraw:
        rng = stream_rng(self.seed, self.rep, name)
        return BlockDraw(lambda: dist.sample(rng, BLOCK))

    def _roster(self, res: simpy.PriorityResource, roster: tuple[int, ...]) -> object:
        """Keep ``capacity - on duty`` placeholder requests on the resource, hour by hour."""
        env, uph, cap = self.env, self.model.units_per_hour, res.capacity
        blockers: list = []
        hour = math.floor(self.offset)
        while True:
            want = cap - roster[hour % len(roster)]
            while len(blockers) < want:
                blockers.append(res.request(priority=_BLOCKER))
            while len(blockers) > want:
                req = blockers.pop()
                if req.triggered:
                    res.release(req)
                else:
                    req.cancel()
            hour += 1
            yield env.timeout(max((hour - self.offset) * uph - env.now, 0.0))

    # --- processes --------------------------------------------------------------------
    def _patient(self, pid: int, c: int, i: int, first: float | None) -> object:
        env = self.env
        nodes = self.paths[c][0]
        held = None
        k_own = pid - self._offset_pid  # index among arriving patients (< 0: already in)
        used: set = set() if k_own >= 0 else _ALL  # first visits use the patient's own draws
        while i >= 0:
            n = nodes[i]
            if n.kind == "activity":
                res, log = n.res, n.log
                if n.balk is not None and len(res.queue) >= n.balk:
                    self.lwbs[pid] = True
                    break
                k = len(log.enter)
                log.pid.append(pid)
                log.enter.append(env.now)
                log.start.append(math.nan)
                log.dur.append(math.nan)
                if n.hold:
                    log.end.extend([math.nan] * (k + 1 - len(log.end)))
                req = n.request()
                if n.patience is None:
                    yield req
                else:
                    if ("p", n.key) in used:
                        wait_max = n.patience()
                    else:
                        wait_max = n.own_patience[k_own]
                        used.add(("p", n.key))
                    got = yield req | env.timeout(wait_max)
                    if req not in got:
                        req.cancel()
                        log.left[k] = env.now
                        self.lwbs[pid] = True
                        break
                now = env.now
                if first is None:
                    if n.key in used:
                        d = n.draw()
                    else:
                        d = n.own_draw[k_own]
                        used.add(n.key)
                else:
                    d, first = first, None
                log.start[k] = now
                log.dur[k] = d
                if n.releases and held:
                    self._let_go(held, n.releases)
                yield env.timeout(d)
                if n.hold:
                    if held is None:
                        held = []
                    held.append((n.resname, res, req, log, k))
                else:
                    res.release(req)
                i = n.next
            elif n.kind == "branch":
                if n.key in used:
                    u = n.branch_u()
                else:
                    u = n.own_u[k_own]
                    used.add(n.key)
                j = 0
                while u >= n.cum[j]:
                    j += 1
                i = n.targets[j]
            else:
                if held:
                    self._let_go(held, (n.resname,))
                i = n.next
        if held:
            for _, res, req, log, k in held:
                res.release(req)
                log.end[k] = env.now
        self.exit[pid] = env.now

    def _let_go(self, held: list, names: tuple[str, ...]) -> None:
        """Release the held units of the named resources."""
        for h in [h for h in held if h[0] in names]:
            h[1].release(h[2])
            h[3].end[h[4]] = self.env.now
            held.remove(h)

    # --- running ----------------------------------------------------------------------
    def run(self) -> RepLog:
        """Simulate to the horizon and return the logs."""
        self.env = env = simpy.Environment()
        per_stream, per_class = arrivals_by_stream(self.model, self.seed, self.rep,
                                                   self.horizon, self.offset)
        self._stream_times = per_stream
        times = np.concatenate(per_stream) if per_stream else np.empty(0)
        classes = np.concatenate(per_class) if per_class else np.empty(0, dtype=np.int64)
        self._order = np.argsort(times, kind="stable")
        times, classes = times[self._order], classes[self._order]
        self._build()
        self.arrival, self.exit, self.cls, self.lwbs, self.is_initial = [], [], [], [], []
        names = list(self.model.classes)
        for p in self.initial:
            pid = len(self.arrival)
            c = names.index(p.klass)
            self.arrival.append(-p.elapsed)
            self.exit.append(math.nan)
            self.cls.append(c)
            self.lwbs.append(False)
            self.is_initial.append(True)
            env.process(self._patient(pid, c, self.paths[c][2][p.step], p.remaining))
        self._offset_pid = len(self.arrival)
        env.process(self._source_from(times.tolist(), classes.tolist(), self._offset_pid))
        env.run(until=self.horizon)
        acts = {a: log.arrays() for a, log in self.logs.items()}
        # events: arrivals, service starts and service ends (patient state changes)
        events = len(self.arrival) + sum(
            int(np.sum(~np.isnan(a["start"]))) + int(np.sum(a["end"] <= self.horizon))
            for a in acts.values())
        return RepLog(rep=self.rep, horizon=self.horizon,
                      arrival=np.asarray(self.arrival, dtype=float),
                      exit=np.asarray(self.exit, dtype=float),
                      cls=np.asarray(self.cls, dtype=np.int64),
                      lwbs=np.asarray(self.lwbs, dtype=bool),
                      initial=np.asarray(self.is_initial, dtype=bool), activities=acts,
                      events=events)

    def _source_from(self, times: list[float], classes: list[int], first_pid: int) -> object:
        env = self.env
        arrival, exit_, cls, lwbs, init = (self.arrival, self.exit, self.cls, self.lwbs,
                                           self.is_initial)
        patient, process, timeout = self._patient, env.process, env.timeout
        pid = first_pid
        for t, c in zip(times, classes, strict=True):
            yield timeout(t - env.now)
            arrival.append(t)
            exit_.append(math.nan)
            cls.append(c)
            lwbs.append(False)
            init.append(False)
            process(patient(pid, c, 0, None))
            pid += 1


def run_replication(model: Model, seed: int, rep: int, **kwargs: object) -> RepLog:
    """Run replication ``rep`` of ``model`` with base ``seed`` (see :class:`Replication`)."""
    return Replication(model, seed, rep, **kwargs).run()
