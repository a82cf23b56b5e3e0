"""Closed-form linear PK: 1-, 2- and 3-compartment models by superposition of exponentials.

A linear mammillary model's central concentration after a unit bolus is
``sum_i a_i exp(-lambda_i t)``, with ``lambda_i`` the disposition eigenvalues and
``a_i = prod_j (k_j1 - lambda_i) / (V1 prod_{m != i} (lambda_m - lambda_i))`` (j over the
peripheral compartments). Zero-order infusions and first-order absorption (with lag time and
bioavailability) follow by convolution; steady state (SS) by the geometric sums of the
exponentials (Gibaldi & Perrier, *Pharmacokinetics*, 2nd ed., ch. 1-3). Doses superpose
because the system is linear.

Everything is vectorised over rows of parameters (subjects, or subjects x eta draws); the
superposition over doses and times runs in one compiled loop (numba, both cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from medtwin.core.errors import ValidationError

#: route codes of a dose in :class:`DoseArrays`
DEPOT, CENTRAL, NONE = 0, 1, -1


@dataclass(frozen=True)
class DoseArrays:
    """Doses of ``S`` subjects padded to ``D`` columns (``route == NONE`` marks padding).

    ``time`` [h], ``amt`` [mg], ``dur`` [h] (0: bolus or first-order), ``route`` (DEPOT or
    CENTRAL), ``ss`` (1: steady state before this dose), ``ii`` [h] (interval of the SS
    regimen) and ``until`` [h] (a later reset, e.g. an SS=1 dose, ends this dose's effect).
    """

    time: np.ndarray
    amt: np.ndarray
    dur: np.ndarray
    route: np.ndarray
    ss: np.ndarray
    ii: np.ndarray
    until: np.ndarray

    @classmethod
    def empty(cls, n_subjects: int, n_doses: int) -> DoseArrays:
        """Padding-only arrays to fill in."""
        shape = (n_subjects, n_doses)
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape),
                   np.full(shape, NONE, np.int64), np.zeros(shape, np.int64), np.zeros(shape),
                   np.full(shape, np.inf))

    def take(self, rows: np.ndarray) -> DoseArrays:
        """The doses of the subjects at ``rows`` (in that order)."""
        return DoseArrays(*(np.ascontiguousarray(getattr(self, f)[rows]) for f in
                            ("time", "amt", "dur", "route", "ss", "ii", "until")))


def disposition(
    cl: np.ndarray,
    v1: np.ndarray,
    q2: np.ndarray | None = None,
    v2: np.ndarray | None = None,
    q3: np.ndarray | None = None,
    v3: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``lambda`` [1/h] and unit-bolus coefficients ``a`` [1/L], both ``(R, 3)``.

    One compartment when ``q2`` is None, two when ``q3`` is None, else three. Unused columns
    have ``a = 0`` (and ``lambda = 1`` to keep divisions finite).
    """
    cl = np.asarray(cl, float).ravel()
    v1 = np.asarray(v1, float).ravel()
    R = cl.size
    lam = np.ones((R, 3))
    a = np.zeros((R, 3))
    k10 = cl / v1
    if q2 is None:
        lam[:, 0] = k10
        a[:, 0] = 1.0 / v1
        return lam, a
    k12 = np.asarray(q2, float).ravel() / v1
    k21 = np.asarray(q2, float).ravel() / np.asarray(v2, float).ravel()
    if q3 is None:
        s = k10 + k12 + k21
        root = np.sqrt(np.maximum(s * s - 4.0 * k10 * k21, 0.0))
        l1, l2 = 0.5 * (s + root), 0.5 * (s - root)
        lam[:, 0], lam[:, 1] = l1, l2
        a[:, 0] = (k21 - l1) / (v1 * (l2 - l1))
        a[:, 1] = (k21 - l2) / (v1 * (l1 - l2))
        return lam, a
    k13 = np.asarray(q3, float).ravel() / v1
    k31 = np.asarray(q3, float).ravel() / np.asarray(v3, float).ravel()
    # roots of x^3 - a2 x^2 + a1 x - a0 (all real and positive), trigonometric method
    a2 = k10 + k12 + k13 + k21 + k31
    a1 = k10 * k31 + k21 * k31 + k21 * k13 + k10 * k21 + k31 * k12
    a0 = k10 * k21 * k31
    p = a1 - a2 * a2 / 3.0
    q = -2.0 * a2**3 / 27.0 + a2 * a1 / 3.0 - a0
    m = 2.0 * np.sqrt(np.maximum(-p / 3.0, 0.0))
    arg = np.clip(3.0 * q / np.where(p * m == 0, 1.0, p * m), -1.0, 1.0)
    theta = np.arccos(arg) / 3.0
    roots = np.stack([m * np.cos(theta - 2.0 * np.pi * k / 3.0) for k in range(3)], axis=1)
    lam = np.sort(roots + a2[:, None] / 3.0, axis=1)[:, ::-1].copy()
    for i in range(3):
        j, k = [m_ for m_ in range(3) if m_ != i]
        a[:, i] = ((k21 - lam[:, i]) * (k31 - lam[:, i])
                   / (v1 * (lam[:, j] - lam[:, i]) * (lam[:, k] - lam[:, i])))
    return lam, a


@njit(cache=True, inline="always")
def _e(x):  # noqa: ANN001, ANN202
    return np.exp(-x) if x < 700.0 else 0.0


@njit(cache=True)
def _bolus(a, lam, dt, integral):  # noqa: ANN001, ANN202
    if integral:
        return a * (1.0 - _e(lam * dt)) / lam
    return a * _e(lam * dt)


@njit(cache=True)
def _infusion(a, lam, dt, T, integral):  # noqa: ANN001, ANN202
    """Unit-rate infusion of duration T."""
    if integral:
        if dt <= T:
            return a / lam * (dt - (1.0 - _e(lam * dt)) / lam)
        head = a / lam * (T - (1.0 - _e(lam * T)) / lam)
        return head + a / (lam * lam) * (1.0 - _e(lam * T)) * (1.0 - _e(lam * (dt - T)))
    if dt <= T:
        return a / lam * (1.0 - _e(lam * dt))
    return a / lam * (1.0 - _e(lam * T)) * _e(lam * (dt - T))


@njit(cache=True)
def _oral(a, lam, ka, dt, integral):  # noqa: ANN001, ANN202
    """Unit amount absorbed first-order from the depot."""
    d = ka - lam
    if abs(d) < 1e-9 * ka:  # ka == lambda: the limit ka * a * t * exp(-lambda t)
        if integral:
            return ka * a * (1.0 - _e(lam * dt) * (1.0 + lam * dt)) / (lam * lam)
        return ka * a * dt * _e(lam * dt)
    if integral:
        return ka * a / d * ((1.0 - _e(lam * dt)) / lam - (1.0 - _e(ka * dt)) / ka)
    return ka * a / d * (_e(lam * dt) - _e(ka * dt))


@njit(cache=True)
def _ss(route, a, lam, ka, dt, T, tau):  # noqa: ANN001, ANN202
    """Steady state: the sum over k >= 0 of the response to a dose given k intervals ago."""
    g = 1.0 / (1.0 - _e(lam * tau))
    if route == 0:
        d = ka - lam
        if abs(d) < 1e-9 * ka:
            d = 1e-9 * ka
        return ka * a / d * (_e(lam * dt) * g - _e(ka * dt) / (1.0 - _e(ka * tau)))
    if T > 0.0:
        past = a / lam * (1.0 - _e(lam * T)) * _e(lam * (dt - T)) * _e(lam * tau) * g
        return _infusion(a, lam, dt, T, False) + past
    return a * _e(lam * dt) * g


def _superpose_py(lam, coef, ka, fbio, lag, subj, d_time, d_amt, d_dur, d_route, d_ss, d_ii,  # noqa: ANN001, ANN202, E501
                  d_until, times, integral, out):  # noqa: ANN001
    R, T = out.shape
    D = d_time.shape[1]
    ne = lam.shape[1]
    for r in prange(R):
        s = subj[r]
        for j in range(T):
            t = times[s, j]
            acc = 0.0
            for d in range(D):
                route = d_route[s, d]
                if route < 0 or t >= d_until[s, d] or t < d_time[s, d]:
                    continue
                amt = d_amt[s, d]
                t_d = d_time[s, d]
                if route == 0:
                    amt = amt * fbio[r]
                    t_d = t_d + lag[r]
                dt = t - t_d
                dur = d_dur[s, d]
                if d_ss[s, d] > 0:
                    tau = d_ii[s, d]
                    if dt < 0.0:
                        dt = dt + tau
                    for i in range(ne):
                        if coef[r, i] != 0.0:
                            unit = _ss(route, coef[r, i], lam[r, i], ka[r], dt, dur, tau)
                            acc += amt / dur * unit if dur > 0.0 else amt * unit
                    continue
                if dt < 0.0:
                    continue
                for i in range(ne):
                    if coef[r, i] == 0.0:
                        continue
                    if route == 0:
                        acc += amt * _oral(coef[r, i], lam[r, i], ka[r], dt, integral)
                    elif dur > 0.0:
                        acc += amt / dur * _infusion(coef[r, i], lam[r, i], dt, dur, integral)
                    else:
                        acc += amt * _bolus(coef[r, i], lam[r, i], dt, integral)
            out[r, j] = acc


_superpose_par = njit(parallel=True, cache=True)(_superpose_py)
_superpose_serial = njit(cache=True)(_superpose_py)
#: below this much work (rows x times x doses) threads cost more than they save
_PARALLEL_MIN_WORK = 200_000


def superpose(
    lam: np.ndarray,
    coef: np.ndarray,
    ka: np.ndarray,
    fbio: np.ndarray,
    lag: np.ndarray,
    subject_of_row: np.ndarray,
    doses: DoseArrays,
    times: np.ndarray,
    *,
    integral: bool = False,
) -> np.ndarray:
    """Central concentration (or, with ``integral``, its integral from 0) ``(R, T)``.

    Row ``r`` has disposition ``lam[r]``, ``coef[r]`` (see :func:`disposition`), absorption
    rate ``ka[r]``, bioavailability ``fbio[r]`` and lag ``lag[r]`` of depot doses, and takes
    its doses and output ``times`` ``(S, T)`` from subject ``subject_of_row[r]``.
    """
    if integral and np.any((doses.ss > 0) & (doses.route != NONE)):
        raise ValidationError("the integral is not available with steady-state doses; "
                              "use the steady-state exposure formulas", where="doses")
    R = lam.shape[0]
    out = np.empty((R, times.shape[1]))
    f = np.ascontiguousarray
    work = R * times.shape[1] * doses.time.shape[1]
    kernel = _superpose_par if work >= _PARALLEL_MIN_WORK else _superpose_serial
    kernel(f(lam), f(coef), f(np.broadcast_to(ka, R), dtype=float),
               f(np.broadcast_to(fbio, R), dtype=float), f(np.broadcast_to(lag, R), dtype=float),
               f(subject_of_row, dtype=np.int64), f(doses.time), f(doses.amt), f(doses.dur),
               f(doses.route, dtype=np.int64), f(doses.ss, dtype=np.int64), f(doses.ii),
               f(doses.until), f(times, dtype=float), bool(integral), out)
    return out


def steady_state_exposure(
    lam: np.ndarray,
    coef: np.ndarray,
    cl: np.ndarray,
    dose: float | np.ndarray,
    tau: float,
    duration: float,
) -> dict[str, np.ndarray]:
    """Steady-state exposure of an IV regimen ``dose`` every ``tau`` h infused over ``duration``.

    ``auc24`` = 24 / tau x dose / CL (linear PK), ``cmin`` (trough, end of the interval) and
    ``cmax`` (end of infusion), each ``(R,)``.
    """
    dose = np.broadcast_to(np.asarray(dose, float), lam.shape[:1])
    if not (0 < duration <= tau):
        raise ValidationError(f"infusion duration {duration} h must be in (0, tau={tau}] h",
                              where="regimen")
    decay_inf = np.exp(-lam * duration)
    g = 1.0 / (1.0 - np.exp(-lam * tau))
    rate = (dose / duration)[:, None]
    # at the end of the infusion, and at the end of the interval (trough)
    cmax = (rate * coef / lam * (1.0 - decay_inf) * g).sum(axis=1)
    cmin = (rate * coef / lam * (1.0 - decay_inf) * np.exp(-lam * (tau - duration)) * g).sum(
        axis=1)
    return {"auc24": 24.0 / tau * dose / np.asarray(cl, float), "cmin": cmin, "cmax": cmax}
