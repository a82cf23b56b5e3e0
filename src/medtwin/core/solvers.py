"""Swappable ODE solvers that integrate a whole cohort over a run of input steps.

Every solver implements :meth:`Solver.advance`: integrate ``k`` consecutive input steps of
length ``dt`` (inputs held constant over each step, the model's memory updated at the start of
each), for every subject, and return the states at the end of each step. The explicit solvers
run one compiled loop over subjects (numba, ``nogil``; split over threads when the work is
large) calling the model's numba kernel; the stiff fallback hands the flattened cohort to SciPy.

- :class:`DormandPrince` — adaptive explicit RK 5(4) with error control (the method of
  scipy's ``RK45`` and Fortran ``dopri5``, which simglucose uses), step size carried over.
- :class:`RK4` — classical fixed-step Runge-Kutta, ``substeps`` steps per input step.
- :class:`ScipyStiff` — ``scipy.integrate.solve_ivp`` with ``BDF``, ``Radau`` or ``LSODA``.
"""

# ruff: noqa: ANN001, ANN202  (compiled loops: their types are the explicit numba signatures)
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numba import njit, types

from medtwin.core.errors import ValidationError
from medtwin.core.model import (
    MemoryKernelType,
    Model,
    RhsKernelType,
    _batch_rhs,
    kernel_handle,
)

#: status codes written per subject by the compiled loops
OK, TOO_MANY_STEPS, NOT_FINITE, STEP_TOO_SMALL = 0, 1, 2, 3
STATUS_TEXT = {
    TOO_MANY_STEPS: "too many steps (the problem may be stiff: try ScipyStiff)",
    NOT_FINITE: "the state became non-finite (NaN or inf)",
    STEP_TOO_SMALL: "the step size fell below 1e-12 min",
}

_F = types.float64
_A1 = types.float64[::1]
_A2 = types.float64[:, ::1]
_A3 = types.float64[:, :, ::1]
_I1 = types.int64[::1]


@dataclass
class Work:
    """Per-subject solver memory kept between calls: step size, status, failure time, rhs calls."""

    h: np.ndarray
    status: np.ndarray
    t_fail: np.ndarray
    nfev: np.ndarray

    @classmethod
    def new(cls, n: int) -> Work:
        """Fresh work arrays for ``n`` subjects."""
        return cls(np.zeros(n), np.zeros(n, np.int64), np.full(n, np.nan), np.zeros(n, np.int64))


def _norm(e, x, y, atol, rtol):
    s = 0.0
    for i in range(e.shape[0]):
        sc = atol + rtol * max(abs(x[i]), abs(y[i]))
        s += (e[i] / sc) ** 2
    return math.sqrt(s / e.shape[0])


_norm_nb = njit(_F(_A1, _A1, _A1, _F, _F), cache=True)(_norm)


def _dp5_step(rhs, mem, t, dt, x, u, m, p, rtol, atol, max_steps, max_step, h, S):
    """One input step ``[t, t + dt]`` of one subject, ``x`` updated in place.

    ``S`` is scratch ``(10, n_states)``. Returns ``(h, status, nfev, t)``: the step size to
    carry on with, a status code, rhs calls, and the time reached (the failure time if any).
    """
    ns = x.shape[0]
    y = S[0]
    k1 = S[1]
    k2 = S[2]
    k3 = S[3]
    k4 = S[4]
    k5 = S[5]
    k6 = S[6]
    k7 = S[7]
    tmp = S[8]
    err = S[9]
    status = 0
    nfev = 0
    t_end = t + dt
    mem(t, dt, x, u, m, p)
    rhs(t, x, u, m, p, k1)
    nfev += 1
    if h <= 0.0:  # Hairer's starting step
        d0 = 0.0
        d1 = 0.0
        for q in range(ns):
            sc = atol + rtol * abs(x[q])
            d0 += (x[q] / sc) ** 2
            d1 += (k1[q] / sc) ** 2
        d0 = math.sqrt(d0 / ns)
        d1 = math.sqrt(d1 / ns)
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        h0 = min(h0, dt)
        for q in range(ns):
            tmp[q] = x[q] + h0 * k1[q]
        rhs(t + h0, tmp, u, m, p, k2)
        nfev += 1
        d2 = 0.0
        for q in range(ns):
            sc = atol + rtol * abs(x[q])
            d2 += ((k2[q] - k1[q]) / sc) ** 2
        d2 = math.sqrt(d2 / ns) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** 0.2
        h = min(100.0 * h0, h1)
    steps = 0
    while t < t_end:
        steps += 1
        if steps > max_steps:
            status = 1
            break
        hs = min(h, max_step)
        last = False
        if t + hs >= t_end - 1e-12 * dt:
            hs = t_end - t
            last = True
        for q in range(ns):
            tmp[q] = x[q] + hs * (0.2 * k1[q])
        rhs(t + 0.2 * hs, tmp, u, m, p, k2)
        for q in range(ns):
            tmp[q] = x[q] + hs * (3.0 / 40.0 * k1[q] + 9.0 / 40.0 * k2[q])
        rhs(t + 0.3 * hs, tmp, u, m, p, k3)
        for q in range(ns):
            tmp[q] = x[q] + hs * (
                44.0 / 45.0 * k1[q] - 56.0 / 15.0 * k2[q] + 32.0 / 9.0 * k3[q]
            )
        rhs(t + 0.8 * hs, tmp, u, m, p, k4)
        for q in range(ns):
            tmp[q] = x[q] + hs * (
                19372.0 / 6561.0 * k1[q]
                - 25360.0 / 2187.0 * k2[q]
                + 64448.0 / 6561.0 * k3[q]
                - 212.0 / 729.0 * k4[q]
            )
        rhs(t + 8.0 / 9.0 * hs, tmp, u, m, p, k5)
        for q in range(ns):
            tmp[q] = x[q] + hs * (
                9017.0 / 3168.0 * k1[q]
                - 355.0 / 33.0 * k2[q]
                + 46732.0 / 5247.0 * k3[q]
                + 49.0 / 176.0 * k4[q]
                - 5103.0 / 18656.0 * k5[q]
            )
        rhs(t + hs, tmp, u, m, p, k6)
        for q in range(ns):
            y[q] = x[q] + hs * (
                35.0 / 384.0 * k1[q]
                + 500.0 / 1113.0 * k3[q]
                + 125.0 / 192.0 * k4[q]
                - 2187.0 / 6784.0 * k5[q]
                + 11.0 / 84.0 * k6[q]
            )
        rhs(t + hs, y, u, m, p, k7)
        nfev += 6
        for q in range(ns):
            err[q] = hs * (
                71.0 / 57600.0 * k1[q]
                - 71.0 / 16695.0 * k3[q]
                + 71.0 / 1920.0 * k4[q]
                - 17253.0 / 339200.0 * k5[q]
                + 22.0 / 525.0 * k6[q]
                - 1.0 / 40.0 * k7[q]
            )
        e = _norm_nb(err, x, y, atol, rtol)
        if not math.isfinite(e):
            if hs < 1e-12:
                status = 2
                break
            h = 0.1 * hs
            continue
        if e <= 1.0:
            t = t_end if last else t + hs
            for q in range(ns):
                x[q] = y[q]
                k1[q] = k7[q]
            fac = 5.0 if e == 0.0 else min(5.0, max(0.2, 0.9 * e**-0.2))
            hn = hs * fac
            # keep the unclipped proposal for the next input step
            h = max(h, hn) if last else hn
        else:
            h = hs * max(0.2, 0.9 * e**-0.2)
            if h < 1e-12:
                status = 3
                break
    if status == 0:
        for q in range(ns):
            if not math.isfinite(x[q]):
                status = 2
    return h, status, nfev, t


_dp5_step_nb = njit(
    types.Tuple((_F, types.int64, types.int64, _F))(
        RhsKernelType, MemoryKernelType, _F, _F, _A1, _A1, _A1, _A1, _F, _F, types.int64, _F,
        _F, _A2,
    ),
    cache=True,
    nogil=True,
)(_dp5_step)


def _dp5_loop(
    rhs,
    mem,
    t0,
    dt,
    X,
    U,
    M,
    P,
    rtol,
    atol,
    max_steps,
    max_step,
    OUT,
    H,
    STATUS,
    TFAIL,
    NFEV,
    i0,
    i1,
):
    n, k, ns = OUT.shape
    for i in range(i0, i1):
        if STATUS[i] != 0:
            continue
        x = X[i].copy()
        S = np.empty((10, ns))
        m = M[i]
        p = P[i]
        h = H[i]
        nfev = 0
        for j in range(k):
            h, status, calls, t = _dp5_step_nb(rhs, mem, t0 + j * dt, dt, x, U[i, j], m, p,
                                               rtol, atol, max_steps, max_step, h, S)
            nfev += calls
            if status != 0:
                STATUS[i] = status
                TFAIL[i] = t
                break
            for q in range(ns):
                OUT[i, j, q] = x[q]
        for q in range(ns):
            X[i, q] = x[q]
        H[i] = h
        NFEV[i] += nfev


_LOOP_SIG = types.void(
    RhsKernelType,
    MemoryKernelType,
    _F,
    _F,
    _A2,
    _A3,
    _A2,
    _A2,
    _F,
    _F,
    types.int64,
    _F,
    _A3,
    _A1,
    _I1,
    _A1,
    _I1,
    types.int64,
    types.int64,
)
_dp5 = njit(_LOOP_SIG, cache=True, nogil=True)(_dp5_loop)


def _rk4_step(rhs, mem, t, dt, x, u, m, p, nsub, S):
    """One input step of one subject with ``nsub`` RK4 steps; returns a status code."""
    ns = x.shape[0]
    k1 = S[1]
    k2 = S[2]
    k3 = S[3]
    k4 = S[4]
    tmp = S[8]
    h = dt / nsub
    mem(t, dt, x, u, m, p)
    for s in range(nsub):
        ts = t + s * h
        rhs(ts, x, u, m, p, k1)
        for q in range(ns):
            tmp[q] = x[q] + 0.5 * h * k1[q]
        rhs(ts + 0.5 * h, tmp, u, m, p, k2)
        for q in range(ns):
            tmp[q] = x[q] + 0.5 * h * k2[q]
        rhs(ts + 0.5 * h, tmp, u, m, p, k3)
        for q in range(ns):
            tmp[q] = x[q] + h * k3[q]
        rhs(ts + h, tmp, u, m, p, k4)
        for q in range(ns):
            x[q] += h / 6.0 * (k1[q] + 2.0 * k2[q] + 2.0 * k3[q] + k4[q])
    for q in range(ns):
        if not math.isfinite(x[q]):
            return 2
    return 0


_rk4_step_nb = njit(
    types.int64(RhsKernelType, MemoryKernelType, _F, _F, _A1, _A1, _A1, _A1, types.int64, _A2),
    cache=True,
    nogil=True,
)(_rk4_step)


def _rk4_loop(rhs, mem, t0, dt, X, U, M, P, nsub, OUT, STATUS, TFAIL, NFEV, i0, i1):
    n, k, ns = OUT.shape
    for i in range(i0, i1):
        if STATUS[i] != 0:
            continue
        x = X[i].copy()
        S = np.empty((10, ns))
        m = M[i]
        p = P[i]
        for j in range(k):
            t = t0 + j * dt
            status = _rk4_step_nb(rhs, mem, t, dt, x, U[i, j], m, p, nsub, S)
            NFEV[i] += 4 * nsub
            if status != 0:
                STATUS[i] = status
                TFAIL[i] = t + dt
                break
            for q in range(ns):
                OUT[i, j, q] = x[q]
        for q in range(ns):
            X[i, q] = x[q]


_RK4_SIG = types.void(
    RhsKernelType,
    MemoryKernelType,
    _F,
    _F,
    _A2,
    _A3,
    _A2,
    _A2,
    types.int64,
    _A3,
    _I1,
    _A1,
    _I1,
    types.int64,
    types.int64,
)
_rk4 = njit(_RK4_SIG, cache=True, nogil=True)(_rk4_loop)

_CPUS = os.cpu_count() or 1
#: below this many subject-steps per call, threads cost more than they save, so one runs
PARALLEL_MIN_WORK = 8192


def _run_split(loop: object, n: int, k: int, args: tuple) -> None:
    """Run a compiled ``nogil`` loop over subjects, split across threads when worth it.

    Plain threads rather than numba's ``parallel=True``: its OpenMP pool made even the serial
    calls of the controller loop several times slower on a 2-core machine.
    """
    workers = min(_CPUS, n)
    if workers < 2 or n * k < PARALLEL_MIN_WORK:
        loop(*args, 0, n)
        return
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        futures = [
            pool.submit(loop, *args, int(a), int(b))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        for f in futures:
            f.result()


def _memory_array(m: np.ndarray) -> np.ndarray:
    return m if m.shape[1] > 0 else np.zeros((m.shape[0], 1))


#: solver kinds the compiled closed loop knows (see :meth:`Solver.compiled`)
DOPRI5_KIND, RK4_KIND = 0, 1


class Solver(ABC):
    """Integrates a cohort over consecutive input steps; see :meth:`advance`."""

    name: str = "solver"

    def compiled(self) -> tuple[int, np.ndarray] | None:
        """``(kind, settings)`` with which the compiled closed loop runs this solver's step
        (the same arithmetic as :meth:`advance`), or ``None`` if it has none."""
        return None

    @abstractmethod
    def advance(
        self,
        model: Model,
        t0: float,
        dt: float,
        x: np.ndarray,
        u: np.ndarray,
        m: np.ndarray,
        p: np.ndarray,
        work: Work,
    ) -> np.ndarray:
        """Integrate ``u.shape[1]`` input steps of length ``dt`` [min] from ``t0``.

        ``x`` ``(n, n_states)``, ``m`` ``(n, n_memory)`` (both updated in place to the end),
        ``u`` ``(n, k, n_inputs)`` held inputs, ``p`` ``(n, n_parameters)``. Returns the
        states at the end of each step, ``(n, k, n_states)``. A subject that fails gets a
        non-zero ``work.status`` and ``work.t_fail`` and is skipped from then on.
        """


@dataclass(frozen=True)
class DormandPrince(Solver):
    """Adaptive Dormand-Prince 5(4), error control ``atol + rtol * |x|`` (RMS norm).

    Defaults are those of simglucose's ``scipy.integrate.ode('dopri5')``: ``rtol=1e-6``,
    ``atol=1e-12``. ``max_steps`` bounds the steps per input step; ``max_step`` [min] bounds
    the step size (with a loose tolerance it makes the method a fixed-step 5th-order RK).
    """

    rtol: float = 1e-6
    atol: float = 1e-12
    max_steps: int = 100_000
    max_step: float = math.inf
    name: str = field(default="dopri5", init=False)

    def __post_init__(self) -> None:
        if not (self.rtol > 0 and self.atol > 0 and self.max_steps > 0 and self.max_step > 0):
            raise ValidationError(
                "rtol, atol, max_steps and max_step must be > 0", where="DormandPrince"
            )

    def compiled(self) -> tuple[int, np.ndarray]:
        """The loop's settings: rtol, atol, max_steps, max_step."""
        return DOPRI5_KIND, np.array([self.rtol, self.atol, self.max_steps, self.max_step],
                                     dtype=float)

    def advance(
        self,
        model: Model,
        t0: float,
        dt: float,
        x: np.ndarray,
        u: np.ndarray,
        m: np.ndarray,
        p: np.ndarray,
        work: Work,
    ) -> np.ndarray:
        out = np.empty((x.shape[0], u.shape[1], x.shape[1]))
        args = (
            kernel_handle(model.rhs_kernel, "rhs"),
            kernel_handle(model.memory_kernel, "memory"),
            float(t0),
            float(dt),
            x,
            np.ascontiguousarray(u, dtype=float),
            _memory_array(m),
            p,
            self.rtol,
            self.atol,
            self.max_steps,
            float(self.max_step),
            out,
            work.h,
            work.status,
            work.t_fail,
            work.nfev,
        )
        _run_split(_dp5, x.shape[0], u.shape[1], args)
        return out


@dataclass(frozen=True)
class RK4(Solver):
    """Classical fixed-step 4th-order Runge-Kutta with ``substeps`` equal steps per input step."""

    substeps: int = 4
    name: str = field(default="rk4", init=False)

    def __post_init__(self) -> None:
        if self.substeps < 1:
            raise ValidationError("substeps must be >= 1", where="RK4")

    def compiled(self) -> tuple[int, np.ndarray]:
        """The loop's settings: substeps."""
        return RK4_KIND, np.array([float(self.substeps)])

    def advance(
        self,
        model: Model,
        t0: float,
        dt: float,
        x: np.ndarray,
        u: np.ndarray,
        m: np.ndarray,
        p: np.ndarray,
        work: Work,
    ) -> np.ndarray:
        out = np.empty((x.shape[0], u.shape[1], x.shape[1]))
        args = (
            kernel_handle(model.rhs_kernel, "rhs"),
            kernel_handle(model.memory_kernel, "memory"),
            float(t0),
            float(dt),
            x,
            np.ascontiguousarray(u, dtype=float),
            _memory_array(m),
            p,
            int(self.substeps),
            out,
            work.status,
            work.t_fail,
            work.nfev,
        )
        _run_split(_rk4, x.shape[0], u.shape[1], args)
        return out


@dataclass(frozen=True)
class ScipyStiff(Solver):
    """Stiff fallback: SciPy ``solve_ivp`` (``BDF``, ``Radau`` or ``LSODA``) on the flattened
    cohort, one call per input step, with the block-diagonal Jacobian sparsity declared.

    Much slower than the compiled explicit solvers; use it when they report too many steps.
    """

    method: str = "BDF"
    rtol: float = 1e-6
    atol: float = 1e-9
    name: str = field(default="scipy", init=False)

    def __post_init__(self) -> None:
        if self.method not in ("BDF", "Radau", "LSODA"):
            raise ValidationError(
                f"unknown stiff method {self.method!r}; use BDF, Radau or LSODA",
                where="ScipyStiff.method",
            )

    def advance(
        self,
        model: Model,
        t0: float,
        dt: float,
        x: np.ndarray,
        u: np.ndarray,
        m: np.ndarray,
        p: np.ndarray,
        work: Work,
    ) -> np.ndarray:
        from scipy.integrate import solve_ivp
        from scipy.sparse import block_diag

        n, k, nu = u.shape
        ns = x.shape[1]
        mm = _memory_array(m)
        out = np.full((n, k, ns), np.nan)
        rhs = kernel_handle(model.rhs_kernel, "rhs")
        sparsity = None if self.method == "LSODA" else block_diag([np.ones((ns, ns))] * n)
        for j in range(k):
            t = t0 + j * dt
            uj = np.ascontiguousarray(u[:, j, :])
            for i in range(n):
                model.memory_kernel(t, dt, x[i], uj[i], mm[i], p[i])

            def f(tt: float, y: np.ndarray, uj: np.ndarray = uj) -> np.ndarray:
                xx = np.ascontiguousarray(y.reshape(n, ns))
                return _batch_rhs(rhs, tt, xx, uj, mm, p).ravel()

            kw = {} if sparsity is None else {"jac_sparsity": sparsity}
            sol = solve_ivp(
                f, (t, t + dt), x.ravel(), method=self.method, rtol=self.rtol, atol=self.atol, **kw
            )
            work.nfev += sol.nfev // max(n, 1)
            if not sol.success or not np.all(np.isfinite(sol.y[:, -1])):
                y = sol.y[:, -1].reshape(n, ns)
                bad = ~np.all(np.isfinite(y), axis=1) if sol.success else np.ones(n, bool)
                work.status[bad & (work.status == 0)] = NOT_FINITE
                work.t_fail[np.isnan(work.t_fail) & bad] = t + dt
                return out
            x[:] = sol.y[:, -1].reshape(n, ns)
            out[:, j, :] = x
        return out
