"""The compiled closed loop: sensors -> controller -> actuators -> model, in one numba call.

For each subject (subjects are independent, so the cohort is split over threads), the loop
runs every controller period without returning to Python: the controller kernel reads the
mean sensor readings and the announcements of the last period, its commands go through the
actuators' arithmetic into the held model inputs, the solver's step
(:mod:`medtwin.core.solvers`) integrates each input step, the model's output kernel gives the
outputs, and each sensor takes its reading (noise drawn beforehand, delay, quantisation,
limits). The arithmetic is that of the Python loop in :mod:`medtwin.core.simulate`, in the
same order, so both give the same numbers. A run is cut into segments of whole controller
periods only to bound the memory of pre-drawn sensor noise.
"""

# ruff: noqa: ANN001, ANN202, N803, N806  (compiled loop: types are the numba signature)
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from numba import njit, types

from medtwin.core.controller import CONTROLLER_SIGNATURE, ControllerProgram
from medtwin.core.devices import ActuatorProgram, SensorProgram
from medtwin.core.model import (
    KernelHandle,
    MemoryKernelType,
    Model,
    OutputKernelType,
    RhsKernelType,
    kernel_handle,
)
from medtwin.core.solvers import DOPRI5_KIND, Work, _dp5_step_nb, _rk4_step_nb, _run_split

#: status of a subject whose controller asked for a non-finite or too small command
BAD_COMMAND = 4
#: input steps per segment (rounded up to whole controller periods)
SEGMENT_STEPS = 2880

ControllerKernelType = types.FunctionType(CONTROLLER_SIGNATURE)
_F = types.float64
_I = types.int64
_A1 = types.float64[::1]
_A2 = types.float64[:, ::1]
_A3 = types.float64[:, :, ::1]
_I1 = types.int64[::1]
_I2 = types.int64[:, ::1]


@cache
def controller_handle(dispatcher: Any) -> KernelHandle:
    """The (memoised) first-class handle of a controller kernel."""
    return KernelHandle(dispatcher, CONTROLLER_SIGNATURE)


def _clip(v, lo, hi):
    return min(max(v, lo), hi)


_clip_nb = njit(_F(_F, _F, _F), cache=True, nogil=True)(_clip)


def _read(i, s, v, samp, S_k0, S_noise, S_par):
    """A new reading of sensor ``s`` of subject ``i`` from the (delayed) value ``v``."""
    if S_par[s, 0] > 0.0:
        v = v + S_noise[i, s, samp - S_k0[s]]
    if S_par[s, 3] > 0.0:
        v = np.rint(v / S_par[s, 3]) * S_par[s, 3]
    return _clip_nb(v, S_par[s, 1], S_par[s, 2])


_read_nb = njit(_F(_I, _I, _F, _I, _I1, _A3, _A2), cache=True, nogil=True)(_read)


def _actuate(v, a):
    """Actuator arithmetic (see :class:`~medtwin.core.devices.ActuatorProgram`); ``a`` holds
    per_period, scale, inc, lo, hi, clip_scaled."""
    r = v
    if a[0] > 0.0:
        r = r / a[0]
    if a[2] > 0.0:
        r = np.rint(r * a[1] / a[2]) * a[2]
        if a[5] > 0.0:
            r = _clip_nb(r, a[3], a[4]) / a[1]
        else:
            r = _clip_nb(r / a[1], a[3], a[4])
    else:
        r = _clip_nb(r, a[3], a[4])
    if a[0] > 0.0:
        r = r * a[0]
    return r


_actuate_nb = njit(_F(_F, _A1), cache=True, nogil=True)(_actuate)


def _loop(rhs, mem, outk, ctrl, kind, sp, t0, dt, q, g0, init, X, U, M, P, OUT, H, STATUS,
          TFAIL, NFEV, S_out, S_samp, S_k0, S_noise, S_par, S_delay, S_hist, S_last, S_seen,
          READ, R_idx, A_ann, A_seen, CS, CC, C_in, C_kind, C_min, C_act, BADCMD, BADVAL,
          n_out, i0, i1):
    n, k, ns = OUT.shape
    n_sens = S_out.shape[0]
    n_ann = A_seen.shape[1]
    n_cmd = C_in.shape[0]
    nu = U.shape[2]
    R = S_hist.shape[2]
    period = q * dt
    rtol = sp[0]
    atol = sp[1]
    max_steps = int(sp[2])
    max_step = sp[3]
    nsub = int(sp[0])
    for i in range(i0, i1):
        if STATUS[i] != 0:
            continue
        x = X[i].copy()
        S = np.empty((10, ns))
        y = np.empty(max(n_out, 1))
        cmd = np.empty(max(n_cmd, 1))
        rate = np.zeros(max(nu, 1))
        touched = np.zeros(max(nu, 1), np.int64)
        for c in range(n_cmd):
            touched[C_in[c]] = 1
        sv = np.full(max(R_idx.shape[0], 1), np.nan)
        acc = np.empty(max(n_sens, 1))
        m = M[i]
        p = P[i]
        h = H[i]
        nfev = 0
        if init:
            outk(x, p, y)
            for s in range(n_sens):
                v = y[S_out[s]]
                S_hist[i, s, 0] = v
                S_last[i, s] = _read_nb(i, s, v, S_samp[s, 0], S_k0, S_noise, S_par)
                S_seen[i, s] = S_last[i, s]
                READ[i, 0, s] = S_last[i, s]
            for a in range(n_ann):
                A_seen[i, a] = 0.0
        failed = False
        for j0 in range(0, k, q):
            j1 = min(k, j0 + q)
            t = t0 + (g0 + j0) * dt
            for r in range(R_idx.shape[0]):
                sv[r] = S_seen[i, R_idx[r]]
            ctrl(t, sv, A_seen[i], CS[i], CC[i], cmd)
            for w in range(nu):
                rate[w] = 0.0
            for c in range(n_cmd):
                v = cmd[c]
                if not math.isfinite(v) or v < C_min[c]:
                    STATUS[i] = BAD_COMMAND
                    TFAIL[i] = t
                    BADCMD[i] = c
                    BADVAL[i] = v
                    failed = True
                    break
                d = _actuate_nb(v, C_act[c])
                if C_kind[c] == 1:
                    d = d / period
                rate[C_in[c]] += d
            if failed:
                break
            for jj in range(j0, j1):
                for w in range(nu):
                    if touched[w] == 1:
                        U[i, jj, w] += rate[w]
            for s in range(n_sens):
                acc[s] = 0.0
            for jj in range(j0, j1):
                ts = t + (jj - j0) * dt
                if kind == DOPRI5_KIND:
                    h, status, calls, tr = _dp5_step_nb(rhs, mem, ts, dt, x, U[i, jj], m, p,
                                                        rtol, atol, max_steps, max_step, h, S)
                    nfev += calls
                else:
                    status = _rk4_step_nb(rhs, mem, ts, dt, x, U[i, jj], m, p, nsub, S)
                    nfev += 4 * nsub
                    tr = ts + dt
                if status != 0:
                    STATUS[i] = status
                    TFAIL[i] = tr
                    failed = True
                    break
                for z in range(ns):
                    OUT[i, jj, z] = x[z]
                outk(x, p, y)
                g = g0 + jj + 1
                for s in range(n_sens):
                    S_hist[i, s, g % R] = y[S_out[s]]
                    samp = S_samp[s, jj + 1]
                    if samp >= 0:
                        v = S_hist[i, s, max(g - S_delay[s], 0) % R]
                        S_last[i, s] = _read_nb(i, s, v, samp, S_k0, S_noise, S_par)
                    READ[i, jj + 1, s] = S_last[i, s]
                    acc[s] += S_last[i, s]
            if failed:
                break
            for s in range(n_sens):
                S_seen[i, s] = acc[s] / (j1 - j0)
            for a in range(n_ann):
                tot = 0.0
                for jj in range(j0, j1):
                    tot += A_ann[i, jj, a]
                A_seen[i, a] = tot
        for z in range(ns):
            X[i, z] = x[z]
        H[i] = h
        NFEV[i] += nfev


_LOOP_SIG = types.void(
    RhsKernelType, MemoryKernelType, OutputKernelType, ControllerKernelType,
    _I, _A1, _F, _F, _I, _I, types.boolean,
    _A2, _A3, _A2, _A2, _A3, _A1, _I1, _A1, _I1,
    _I1, _I2, _I1, _A3, _A2, _I1, _A3, _A2, _A2, _A3, _I1,
    _A3, _A2, _A2, _A2, _I1, _I1, _A1, _A2, _I1, _A1,
    _I, _I, _I,
)
_loop_nb = njit(_LOOP_SIG, cache=True, nogil=True)(_loop)


@dataclass(frozen=True)
class LoopCommand:
    """One controller command as the compiled loop applies it."""

    name: str
    input_index: int
    amount: bool
    minimum: float
    actuator: ActuatorProgram | None


@dataclass(frozen=True)
class LoopSensor:
    """One sensor as the compiled loop runs it: the output it reads and its program."""

    output_index: int
    program: SensorProgram


def _actuator_row(a: ActuatorProgram | None) -> list[float]:
    if a is None:
        return [0.0, 1.0, 0.0, -math.inf, math.inf, 0.0]
    return [float(a.per_period), float(a.scale), float(a.inc), float(a.lo), float(a.hi),
            1.0 if a.clip_scaled else 0.0]


def run_compiled(
    model: Model,
    p: np.ndarray,
    x: np.ndarray,
    m: np.ndarray,
    u: np.ndarray,
    announced: np.ndarray,
    solver_kind: int,
    solver_settings: np.ndarray,
    work: Work,
    t0: float,
    dt: float,
    n_steps: int,
    q: int,
    program: ControllerProgram,
    reads: np.ndarray,
    commands: list[LoopCommand],
    sensors: list[LoopSensor],
    states: np.ndarray,
    readings: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the closed loop compiled over ``n_steps`` input steps, filling ``states[:, 1:]``,
    ``readings`` ``(n, n_steps + 1, n_sensors)`` and ``u`` (commands added in place).

    Returns per subject the index of the failing command and its value (``work.status`` is
    :data:`BAD_COMMAND` for those subjects).
    """
    n = x.shape[0]
    n_sens = len(sensors)
    n_out = len(model.outputs)
    handles = (
        kernel_handle(model.rhs_kernel, "rhs"),
        kernel_handle(model.memory_kernel, "memory"),
        kernel_handle(model.output_kernel, "output"),
        controller_handle(program.kernel),
    )
    mm = m if m.shape[1] > 0 else np.zeros((n, 1))
    cs = np.array(program.state, dtype=float, copy=True).reshape(n, -1)
    cs = np.ascontiguousarray(cs if cs.shape[1] > 0 else np.zeros((n, 1)))
    cc = np.asarray(program.constants, dtype=float).reshape(n, -1)
    cc = np.ascontiguousarray(cc if cc.shape[1] > 0 else np.zeros((n, 1)))
    ann = np.ascontiguousarray(announced, dtype=float)
    n_ann = ann.shape[2]
    c_in = np.array([c.input_index for c in commands], dtype=np.int64)
    c_kind = np.array([1 if c.amount else 0 for c in commands], dtype=np.int64)
    c_min = np.array([c.minimum for c in commands], dtype=float)
    c_act = np.ascontiguousarray(np.array([_actuator_row(c.actuator) for c in commands],
                                          dtype=float).reshape(len(commands), 6))
    s_out = np.array([s.output_index for s in sensors], dtype=np.int64)
    s_par = np.array([[1.0 if s.program.noise is not None else 0.0, s.program.lo, s.program.hi,
                       s.program.quantum] for s in sensors], dtype=float).reshape(n_sens, 4)
    s_delay = np.array([s.program.delay for s in sensors], dtype=np.int64)
    ring = int(s_delay.max()) + 1 if n_sens else 1
    s_hist = np.zeros((n, max(n_sens, 1), ring))
    s_last = np.zeros((n, max(n_sens, 1)))
    s_seen = np.zeros((n, max(n_sens, 1)))
    a_seen = np.zeros((n, n_ann))
    badcmd = np.full(n, -1, np.int64)
    badval = np.full(n, np.nan)
    seg = q * max(1, math.ceil(SEGMENT_STEPS / q))
    settings = np.zeros(4)
    settings[: len(solver_settings)] = solver_settings
    for g0 in range(0, n_steps, seg):
        g1 = min(n_steps, g0 + seg)
        k = g1 - g0
        samp = np.full((max(n_sens, 1), k + 1), -1, np.int64)
        k0s = np.zeros(max(n_sens, 1), np.int64)
        blocks = []
        for si, s in enumerate(sensors):
            col = s.program.sample[g0 : g1 + 1].copy()
            if g0 > 0:
                col[0] = -1  # read at the end of the previous segment
            samp[si] = col
            drawn = col[col >= 0]
            if s.program.noise is not None and drawn.size:
                k0s[si] = int(drawn.min())
                blocks.append(np.asarray(s.program.noise(int(drawn.min()), int(drawn.max()) + 1),
                                         dtype=float))
            else:
                blocks.append(np.zeros((n, 1)))
        width = max([b.shape[1] for b in blocks] + [1])
        noise = np.zeros((n, max(n_sens, 1), width))
        for si, b in enumerate(blocks):
            noise[:, si, : b.shape[1]] = b
        u_seg = np.ascontiguousarray(u[:, g0:g1])
        out = np.empty((n, k, x.shape[1]))
        read = np.full((n, k + 1, max(n_sens, 1)), np.nan)
        args = (*handles, int(solver_kind), settings,
                float(t0), float(dt), int(q), int(g0), g0 == 0, x, u_seg, mm, p, out,
                work.h, work.status, work.t_fail, work.nfev,
                s_out, samp, k0s, noise, np.ascontiguousarray(s_par), s_delay, s_hist, s_last,
                s_seen, read, np.asarray(reads, dtype=np.int64),
                np.ascontiguousarray(ann[:, g0:g1]), a_seen, cs, cc,
                c_in, c_kind, c_min, c_act, badcmd, badval, int(n_out))
        _run_split(_loop_nb, n, k, args)
        u[:, g0:g1] = u_seg
        states[:, g0 + 1 : g1 + 1] = out
        if n_sens:
            readings[:, g0 + 1 : g1 + 1] = read[:, 1:, :n_sens]
            if g0 == 0:
                readings[:, 0] = read[:, 0, :n_sens]
        if work.status.any():
            break
    return badcmd, badval
