"""The event-driven ODE solver of the PK model language (NONMEM's ADVAN13 / mrgsolve's loop).

Each row (a subject with one candidate eta vector) walks its event records in time order:

- between records the ODE is integrated (Dormand-Prince 5(4), the engine's compiled step) with
  the individual parameters of the interval: those of the record ending it (NOCB) or of the
  one starting it (LOCF), chosen by which covariate rows the caller passes as ``seg_cov``;
- a dose (EVID 1/4) is multiplied by the dosed compartment's bioavailability ``F``, delayed by
  its lag time, and given as a bolus, an infusion at the record's RATE, or at the modelled rate
  (RATE = -1) or duration (RATE = -2) of that compartment; lagged doses and infusion starts and
  ends go into a queue and are applied when the integration reaches them;
- SS = 1 replaces the state by the steady state of the dose repeated every II (found by
  repeating it until the state at the end of an interval changes by less than ``ss_rtol``,
  as mrgsolve does), SS = 2 adds that steady state to the current one; infusions still running
  at steady state carry on;
- EVID 3 resets every compartment to its initial value (EVID 4: reset, then dose);
- an observation record writes its observation kind's value into its output column.

The model enters as four compiled kernels (first-class functions, so this loop compiles once
for every model): ``params(theta, eta, cov, p)``, ``rhs(t, x, u, m, p, dx)``,
``output(x, p, y)``, ``dosing(p, d)`` (``d`` = F, lag, rate, duration per compartment) and
``initial(p, x0)`` (the state at the first record and after a reset, e.g. a PD baseline).
"""

# ruff: noqa: ANN001, ANN202, PLR0913  (compiled loops: numba infers their types)
from __future__ import annotations

import math

import numpy as np
from numba import njit, types

from medtwin.core.model import kernel_handle, no_memory
from medtwin.core.solvers import _dp5_step_nb, _run_split

PARAMS_SIGNATURE = types.void(types.float64[::1], types.float64[::1], types.float64[::1],
                              types.float64[::1])
DOSING_SIGNATURE = types.void(types.float64[::1], types.float64[::1])

#: queued event kinds
_BOLUS, _START, _END = 0, 1, 2
#: status codes of a row
OK, SOLVER_FAILED, BAD_DOSE, NO_STEADY_STATE = 0, 1, 2, 3
STATUS_TEXT = {SOLVER_FAILED: "the ODE solver failed (too many steps or a non-finite state)",
               BAD_DOSE: "a modelled rate or duration (RATE -1/-2) or F or a lag time is not a "
                         "finite number > 0 (F, lag >= 0)",
               NO_STEADY_STATE: "steady state (SS) was not reached within the allowed number "
                                "of dosing intervals"}
_MAX_STEPS = 100_000


@njit(cache=True, nogil=True)
def _push(qt, qk, qc, qv, t, kind, cmt, val):
    for j in range(qt.shape[0]):
        if qk[j] < 0:
            qt[j] = t
            qk[j] = kind
            qc[j] = cmt
            qv[j] = val
            return True
    return False


@njit(cache=True, nogil=True)
def _matmul(A, B, out):
    """out = A @ B for small square matrices (loops: BLAS costs more than the work here)."""
    n = A.shape[0]
    for i in range(n):
        for j in range(n):
            acc = 0.0
            for k in range(n):
                acc += A[i, k] * B[k, j]
            out[i, j] = acc


@njit(cache=True, nogil=True)
def _solve_into(D, N):
    """N <- D^-1 N by Gaussian elimination with partial pivoting (D is overwritten)."""
    n = D.shape[0]
    for c in range(n):
        piv = c
        for i in range(c + 1, n):
            if abs(D[i, c]) > abs(D[piv, c]):
                piv = i
        if piv != c:
            for j in range(n):
                D[c, j], D[piv, j] = D[piv, j], D[c, j]
                N[c, j], N[piv, j] = N[piv, j], N[c, j]
        inv = 1.0 / D[c, c]
        for i in range(c + 1, n):
            f = D[i, c] * inv
            if f != 0.0:
                for j in range(c, n):
                    D[i, j] -= f * D[c, j]
                for j in range(n):
                    N[i, j] -= f * N[c, j]
    for c in range(n - 1, -1, -1):
        inv = 1.0 / D[c, c]
        for j in range(n):
            acc = N[c, j]
            for k in range(c + 1, n):
                acc -= D[c, k] * N[k, j]
            N[c, j] = acc * inv


@njit(cache=True, nogil=True)
def _expm(M, W):
    """exp(M) into ``W[0]`` by scaling and squaring with the (6, 6) Pade approximant (Golub &
    Van Loan, Matrix Computations, 4th ed., algorithm 9.3.1); ``W`` is scratch (5, n, n)."""
    n = M.shape[0]
    norm = 0.0
    for i in range(n):
        row = 0.0
        for j in range(n):
            row += abs(M[i, j])
        norm = max(norm, row)
    sq = max(0, int(math.ceil(math.log2(norm))) + 1) if norm > 0 else 0
    scale = 1.0 / 2.0**sq
    N, D, X, A, T = W[0], W[1], W[2], W[3], W[4]
    for i in range(n):
        for j in range(n):
            A[i, j] = M[i, j] * scale
            X[i, j] = 1.0 if i == j else 0.0
            N[i, j] = X[i, j]
            D[i, j] = X[i, j]
    c = 1.0
    q = 6
    for k in range(1, q + 1):
        c = c * (q - k + 1) / ((2 * q - k + 1) * k)
        _matmul(A, X, T)
        sgn = -c if k % 2 else c
        for i in range(n):
            for j in range(n):
                X[i, j] = T[i, j]
                N[i, j] += c * T[i, j]
                D[i, j] += sgn * T[i, j]
    _solve_into(D, N)
    for _ in range(sq):
        _matmul(N, N, T)
        for i in range(n):
            for j in range(n):
                N[i, j] = T[i, j]


@njit(cache=True, nogil=True)
def _propagate(rhs, x, u, m, p, t, dt, A, M, zero, W):  # zero: scratch of n zeros
    """Exact step of a linear model ``dx/dt = A x + u`` over ``dt`` (``A`` from the rhs)."""
    n = x.shape[0]
    for j in range(n):
        zero[j] = 1.0
        rhs(t, zero, A[n], m, p, A[j])  # A[n] is a zero input row; A[j] gets column j
        zero[j] = 0.0
    M[:, :] = 0.0
    for i in range(n):
        for j in range(n):
            M[i, j] = A[j, i] * dt
        M[i, n] = u[i] * dt
    _expm(M, W)
    E = W[0]
    y = zero  # n zeros on entry; restored below
    for i in range(n):
        acc = E[i, n]
        for j in range(n):
            acc += E[i, j] * x[j]
        y[i] = acc
    for i in range(n):
        x[i] = y[i]
        y[i] = 0.0


@njit(cache=True, nogil=True)
def _advance(rhs, mem, x, u, m, p, t, t_end, qt, qk, qc, qv, S, rtol, atol, linear, L, W):
    """Integrate from ``t`` to ``t_end``, applying queued events due on the way (those at
    ``t_end`` too). Linear models step exactly (matrix exponential). Returns a status."""
    h = 0.0
    n = x.shape[0]
    A = L[: n + 1]  # scratch of the exact step: L is (2 n + 2, n + 1)
    M = L[n + 1 :]
    while True:
        k = -1
        for j in range(qt.shape[0]):
            if qk[j] >= 0 and qt[j] <= t_end and (k < 0 or qt[j] < qt[k]):
                k = j
        stop = t_end if k < 0 else qt[k]
        if stop > t:
            if linear:
                _propagate(rhs, x, u, m, p, t, stop - t, A, M, S[0], W)
                for q in range(n):
                    if not math.isfinite(x[q]):
                        return SOLVER_FAILED
            else:
                h, status, nfev, tr = _dp5_step_nb(rhs, mem, t, stop - t, x, u, m, p, rtol,
                                                   atol, _MAX_STEPS, math.inf, h, S)
                if status != 0:
                    return SOLVER_FAILED
            t = stop
        if k < 0:
            return OK
        c = qc[k]
        if qk[k] == _BOLUS:
            x[c] += qv[k]
        elif qk[k] == _START:
            u[c] += qv[k]
        else:
            u[c] -= qv[k]
            if abs(u[c]) < 1e-12 * max(1.0, qv[k]):
                u[c] = 0.0
        qk[k] = -1
        h = 0.0  # a discontinuity: let the solver pick its first step again


@njit(cache=True, nogil=True)
def _give(c, amt, rate, d, n_cmt, t, x, u, qt, qk, qc, qv):
    """Give one dose at ``t`` (bolus, infusion at ``rate`` or modelled -1/-2). Status."""
    f = d[c]
    lag = d[n_cmt + c]
    if not (math.isfinite(f) and f >= 0 and math.isfinite(lag) and lag >= 0):
        return BAD_DOSE
    a = amt * f
    start = t + lag
    if rate == 0.0:
        if lag > 0:
            _push(qt, qk, qc, qv, start, _BOLUS, c, a)
        else:
            x[c] += a
        return OK
    if rate > 0:
        r = rate
        dur = a / r
    elif rate == -1.0:
        r = d[2 * n_cmt + c]
        if not (math.isfinite(r) and r > 0):
            return BAD_DOSE
        dur = a / r
    else:
        dur = d[3 * n_cmt + c]
        if not (math.isfinite(dur) and dur > 0):
            return BAD_DOSE
        r = a / dur
    if a <= 0:
        return OK
    if lag > 0:
        _push(qt, qk, qc, qv, start, _START, c, r)
    else:
        u[c] += r
    _push(qt, qk, qc, qv, start + dur, _END, c, r)
    return OK


@njit(cache=True, nogil=True)
def _linear_ss(rhs, xs, m, p, ii, L, W, zero):
    """Steady-state trough of a linear model in one solve: ``x = E x + b`` with ``E`` =
    exp(A II) and ``b`` (in ``xs``) the state one interval after a single dose."""
    n = xs.shape[0]
    A = L[: n + 1]
    M = L[n + 1 :]
    for j in range(n):
        zero[j] = 1.0
        rhs(0.0, zero, A[n], m, p, A[j])
        zero[j] = 0.0
    M[:, :] = 0.0
    for i in range(n):
        for j in range(n):
            M[i, j] = A[j, i] * ii
    _expm(M, W)
    D = W[1]
    B = W[2]
    for i in range(n + 1):
        for j in range(n + 1):
            same = 1.0 if i == j else 0.0
            D[i, j] = same - W[0][i, j] if (i < n and j < n) else same
            B[i, j] = 0.0
        B[i, 0] = xs[i] if i < n else 0.0
    _solve_into(D, B)
    for i in range(n):
        xs[i] = B[i, 0]


@njit(cache=True, nogil=True)
def _steady_state(rhs, mem, initial, c, amt, rate, ii, d, n_cmt, m, p, S, rtol, atol,
                  ss_rtol, ss_max, xs, us, qt, qk, qc, qv, linear, L, W):
    """State ``xs``/inputs ``us``/queue at the end of a dosing interval at steady state (the
    queue's times relative to that end). Status."""
    initial(p, xs)
    us[:] = 0.0
    qk[:] = -1
    prev = np.zeros(n_cmt)
    t = 0.0
    if linear:
        xs[:] = 0.0  # a linear model's steady state does not depend on where it starts
        st = _give(c, amt, rate, d, n_cmt, t, xs, us, qt, qk, qc, qv)
        if st != OK:
            return st
        st = _advance(rhs, mem, xs, us, m, p, t, ii, qt, qk, qc, qv, S, rtol, atol,
                      linear, L, W)
        if st != OK:
            return st
        pending = False
        for j in range(qt.shape[0]):
            pending = pending or qk[j] >= 0
        if not pending:  # the dose is over within one interval: solve for the trough
            _linear_ss(rhs, xs, m, p, ii, L, W, S[0])
            return OK
        xs[:] = 0.0  # an infusion longer than II: repeat the dose instead
        us[:] = 0.0
        qk[:] = -1
    for k in range(ss_max):
        st = _give(c, amt, rate, d, n_cmt, t, xs, us, qt, qk, qc, qv)
        if st != OK:
            return st
        st = _advance(rhs, mem, xs, us, m, p, t, t + ii, qt, qk, qc, qv, S, rtol, atol,
                      linear, L, W)
        if st != OK:
            return st
        t += ii
        done = k > 0
        for j in range(n_cmt):
            if abs(xs[j] - prev[j]) > ss_rtol * abs(xs[j]) + 1e-14:
                done = False
            prev[j] = xs[j]
        if done:
            for j in range(qt.shape[0]):
                if qk[j] >= 0:
                    qt[j] -= t
            return OK
    return NO_STEADY_STATE


@njit(cache=True, nogil=True)
def solve_rows(rhs, mem, params, output, dosing, initial, theta, eta, row_subject, n_eta, n_kappa,
               ev_time, ev_evid, ev_amt, ev_cmt, ev_rate, ev_ii, ev_ss, ev_occ, ev_out,
               ev_kind, ev_cov, seg_cov, n_ev, n_cmt, n_p, n_y, rtol, atol, ss_rtol, ss_max,
               linear, out, status, r0, r1) -> None:
    """Predictions ``out[r, j]`` of rows ``r0 <= r < r1`` (see the module docstring)."""
    n_q = 4 * ev_time.shape[1] + 16
    for r in range(r0, r1):
        s = row_subject[r]
        x = np.zeros(n_cmt)
        u = np.zeros(n_cmt)
        m = np.zeros(1)
        p = np.zeros(n_p)
        d = np.zeros(4 * n_cmt)
        y = np.zeros(max(n_y, 1))
        S = np.zeros((10, n_cmt))
        L = np.zeros((2 * n_cmt + 2, n_cmt + 1))
        W = np.zeros((5, n_cmt + 1, n_cmt + 1))
        e = np.zeros(n_eta + n_kappa)
        qt = np.zeros(n_q)
        qk = np.full(n_q, -1, np.int64)
        qc = np.zeros(n_q, np.int64)
        qv = np.zeros(n_q)
        xs = np.zeros(n_cmt)
        us = np.zeros(n_cmt)
        st_t = np.zeros(n_q)
        st_k = np.full(n_q, -1, np.int64)
        st_c = np.zeros(n_q, np.int64)
        st_v = np.zeros(n_q)
        for j in range(n_eta):
            e[j] = eta[r, j]
        t = ev_time[s, 0] if n_ev[s] > 0 else 0.0
        st = OK
        last = -1  # records after the last observation cannot change an output
        for i in range(n_ev[s]):
            if ev_out[s, i] >= 0:
                last = i
        if n_ev[s] > 0:  # the initial state, with the parameters of the first record
            for j in range(n_kappa):
                e[n_eta + j] = (eta[r, n_eta + ev_occ[s, 0] * n_kappa + j]
                                if ev_occ[s, 0] >= 0 else 0.0)
            params(theta, e, ev_cov[s, 0], p)
            initial(p, x)
        for i in range(last + 1):
            occ = ev_occ[s, i]
            for j in range(n_kappa):
                e[n_eta + j] = eta[r, n_eta + occ * n_kappa + j] if occ >= 0 else 0.0
            T = ev_time[s, i]
            params(theta, e, seg_cov[s, i], p)
            st = _advance(rhs, mem, x, u, m, p, t, T, qt, qk, qc, qv, S, rtol, atol, linear,
                          L, W)
            if st != OK:
                break
            t = T
            params(theta, e, ev_cov[s, i], p)
            ev = ev_evid[s, i]
            if ev == 3 or ev == 4:
                initial(p, x)
                u[:] = 0.0
                qk[:] = -1
            if ev == 1 or ev == 4:
                dosing(p, d)
                c = ev_cmt[s, i]
                if ev_ss[s, i] > 0:
                    st = _steady_state(rhs, mem, initial, c, ev_amt[s, i], ev_rate[s, i],
                                       ev_ii[s, i], d, n_cmt, m, p, S, rtol, atol, ss_rtol,
                                       ss_max, xs, us, st_t, st_k, st_c, st_v, linear, L, W)
                    if st != OK:
                        break
                    if ev_ss[s, i] == 1:
                        x[:] = xs
                        u[:] = us
                        qk[:] = -1
                    else:
                        x += xs
                        u += us
                    for j in range(n_q):
                        if st_k[j] >= 0:
                            _push(qt, qk, qc, qv, T + st_t[j], st_k[j], st_c[j], st_v[j])
                st = _give(c, ev_amt[s, i], ev_rate[s, i], d, n_cmt, T, x, u, qt, qk, qc, qv)
                if st != OK:
                    break
            j_out = ev_out[s, i]
            if j_out >= 0:
                output(x, p, y)
                out[r, j_out] = y[ev_kind[s, i]]
        status[r] = st
        if st != OK:
            for j in range(out.shape[1]):
                out[r, j] = np.nan


def run(kernels: tuple, theta: np.ndarray, eta: np.ndarray, row_subject: np.ndarray,
        n_eta: int, n_kappa: int, events: dict[str, np.ndarray], n_cmt: int, n_p: int,
        n_y: int, n_out: int, *, rtol: float, atol: float, ss_rtol: float,
        ss_max: int, linear: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Predictions ``(R, n_out)`` and status ``(R,)`` of every row, split over threads."""
    R = eta.shape[0]
    out = np.zeros((R, max(n_out, 1)))  # unused (padding) columns stay finite
    status = np.zeros(R, np.int64)
    ev = events
    rhs, params, output, dosing, initial = kernels
    args = (rhs, kernel_handle(no_memory, "memory"), params, output, dosing, initial,
            np.ascontiguousarray(theta, float), np.ascontiguousarray(eta, float),
            np.ascontiguousarray(row_subject, np.int64), int(n_eta), int(n_kappa),
            ev["time"], ev["evid"], ev["amt"], ev["cmt"], ev["rate"], ev["ii"], ev["ss"],
            ev["occ"], ev["out"], ev["kind"], ev["cov"], ev["seg_cov"], ev["n"], int(n_cmt),
            int(n_p), int(n_y), float(rtol), float(atol), float(ss_rtol), int(ss_max),
            bool(linear), out, status)
    _run_split(solve_rows, R, int(ev["time"].shape[1]) * 8, args)
    return out[:, :n_out], status
