"""Heartbeat-resolved runs of a cardio cohort: beat-to-beat haemodynamics and cycle averages.

The engine's ``simulate`` keeps every state at every input step; at 8 ms steps that is 7,500
rows per subject-minute. :func:`run_beats` calls the same solver (``Solver.advance``) chunk by
chunk and reduces each chunk at once, in compiled code, to one row per beat: a beat ends where
the phase crosses an integer (time interpolated in phase), systolic/diastolic values are the
sample extremes refined by a parabola through the three samples around them, and means
(MAP, CVP, mean PA pressure) come from the model's pressure integrals, so they are exact to the
solver's accuracy. Per-beat events are what the engine lacks (issue 14, Part 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from medtwin.core import codes
from medtwin.core.cohort import Cohort
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.model import Variable
from medtwin.core.solvers import RK4, STATUS_TEXT, Solver, Work
from medtwin.models.cardio import smith_ursino as su
from medtwin.models.cardio.parameters import check_cohort

#: one row per beat; LOINC codes where one exists
BEAT_OUTPUTS: tuple[Variable, ...] = (
    Variable("t_end", "s", "end of the beat"),
    Variable("HR", "/min", "heart rate 60 / beat duration", loinc=codes.HEART_RATE),
    Variable("SBP", "mmHg", "systolic arterial pressure", loinc=codes.SYSTOLIC_BP),
    Variable("DBP", "mmHg", "diastolic arterial pressure", loinc=codes.DIASTOLIC_BP),
    Variable("MAP", "mmHg", "mean arterial pressure over the beat", loinc=codes.MEAN_BP),
    Variable("PAS", "mmHg", "pulmonary arterial systolic pressure"),
    Variable("PAD", "mmHg", "pulmonary arterial diastolic pressure"),
    Variable("mPAP", "mmHg", "mean pulmonary arterial pressure over the beat"),
    Variable("CVP", "mmHg", "mean central venous pressure over the beat",
             loinc=codes.CENTRAL_VENOUS_PRESSURE),
    Variable("LVEDV", "mL", "left ventricular end-diastolic (largest) volume"),
    Variable("LVESV", "mL", "left ventricular end-systolic (smallest) volume"),
    Variable("SV", "mL", "stroke volume LVEDV - LVESV"),
    Variable("EF", "1", "ejection fraction SV / LVEDV", loinc=codes.EJECTION_FRACTION),
    Variable("CO", "L/min", "cardiac output SV x HR", loinc=codes.CARDIAC_OUTPUT),
)
BEAT_NAMES = tuple(v.name for v in BEAT_OUTPUTS)
_NB = len(BEAT_OUTPUTS)
#: carry per subject: t, phi, P_ao, V_lv, P_pa (last two samples each), integrals, beat start,
#: integrals at beat start, running extremes
_NC = 32


@njit(cache=True)
def _vertex(a: float, b: float, c: float) -> float:
    """Extreme value of the parabola through equally spaced samples ``a, b, c`` (b extreme)."""
    den = a - 2.0 * b + c
    if den == 0.0:
        return b
    return b - (a - c) * (a - c) / (8.0 * den)


@njit(cache=True)
def _scan(out, t0, dt, p, carry, beats, nbeats):  # noqa: ANN001, ANN202
    """Reduce a chunk ``out`` ``(n, k, ns)`` of samples at ``t0 + (j+1) dt`` to beats."""
    n, k, _ = out.shape
    cap = beats.shape[1]
    for i in range(n):
        c = carry[i]
        eao, epa, pth = p[i, su.EAO], p[i, su.EPA], p[i, su.PTH]
        for j in range(k):
            x = out[i, j]
            t = t0 + (j + 1) * dt
            phi = x[su.PHI]
            y = (eao * x[su.V_AO], x[su.V_LV], epa * x[su.V_PA] + pth)
            # running extremes: raw sample, refined at a local extreme of the last three
            for q in range(3):
                a, b = c[2 + 2 * q], c[3 + 2 * q]  # the two previous samples
                v = y[q]
                hi, lo = v, v
                if c[31] >= 2.0:
                    if b >= a and b >= v:
                        hi = _vertex(a, b, v)
                    if b <= a and b <= v:
                        lo = _vertex(a, b, v)
                c[20 + 2 * q] = max(c[20 + 2 * q], hi, v)
                c[21 + 2 * q] = min(c[21 + 2 * q], lo, v)
                c[2 + 2 * q], c[3 + 2 * q] = b, v
            c[31] += 1.0
            phi_old = c[1]
            if math.floor(phi) > math.floor(phi_old):
                w = (math.floor(phi) - phi_old) / (phi - phi_old)
                tc = c[0] + w * dt
                ints = np.empty(3)
                for q in range(3):
                    ints[q] = c[8 + q] + w * (x[su.I_PAO + q] - c[8 + q])
                dur = tc - c[11]
                b = int(nbeats[i])
                if dur > 0.0 and b < cap:
                    row = beats[i, b]
                    row[0] = tc
                    row[1] = 60.0 / dur
                    row[2], row[3] = c[20], c[21]
                    row[4] = (ints[0] - c[12]) / dur
                    row[5], row[6] = c[24], c[25]
                    row[7] = (ints[2] - c[14]) / dur
                    row[8] = (ints[1] - c[13]) / dur
                    row[9], row[10] = c[22], c[23]
                    row[11] = c[22] - c[23]
                    row[12] = row[11] / c[22]
                    row[13] = row[11] * row[1] / 1000.0
                    nbeats[i] = b + 1
                c[11] = tc
                c[12], c[13], c[14] = ints[0], ints[1], ints[2]
                for q in range(3):
                    c[20 + 2 * q], c[21 + 2 * q] = y[q], y[q]
            c[0], c[1] = t, phi
            for q in range(3):
                c[8 + q] = x[su.I_PAO + q]


def _init_carry(x: np.ndarray, p: np.ndarray, t0: float) -> np.ndarray:
    n = x.shape[0]
    c = np.zeros((n, _NC))
    c[:, 0] = t0
    c[:, 1] = x[:, su.PHI]
    c[:, 8:11] = x[:, su.I_PAO:su.I_PPA + 1]
    c[:, 11] = t0
    c[:, 12:15] = x[:, su.I_PAO:su.I_PPA + 1]
    y = np.stack([p[:, su.EAO] * x[:, su.V_AO], x[:, su.V_LV],
                  p[:, su.EPA] * x[:, su.V_PA] + p[:, su.PTH]], axis=1)
    for q in range(3):
        c[:, 2 + 2 * q] = c[:, 3 + 2 * q] = y[:, q]
        c[:, 20 + 2 * q] = c[:, 21 + 2 * q] = y[:, q]
    return c


@dataclass(frozen=True)
class BeatResult:
    """Beats of each subject: ``beats[i, b, v]`` is output ``BEAT_NAMES[v]`` of beat ``b``
    (NaN past ``n_beats[i]``); ``final_state`` ``(n, n_states)``; ``blood_volume`` at the start
    and the end ``(n, 2)``; ``meta`` the provenance."""

    subjects: tuple[str, ...]
    beats: np.ndarray
    n_beats: np.ndarray
    final_state: np.ndarray
    blood_volume: np.ndarray
    meta: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        """One beat output ``(n, max_beats)`` by name (``"SBP"``, ``"CO"`` ...)."""
        if name not in BEAT_NAMES:
            raise ValidationError(f"unknown beat output; known: {', '.join(BEAT_NAMES)}",
                                  where=name)
        return self.beats[:, :, BEAT_NAMES.index(name)]

    def last(self, n_beats: int = 5) -> dict[str, np.ndarray]:
        """Each output averaged over each subject's last ``n_beats`` beats ``(n,)``."""
        out = {}
        idx = np.arange(self.beats.shape[1])
        sel = (idx[None, :] < self.n_beats[:, None]) & (
            idx[None, :] >= self.n_beats[:, None] - n_beats)
        for v, name in enumerate(BEAT_NAMES):
            vals = np.where(sel, self.beats[:, :, v], np.nan)
            out[name] = np.nanmean(vals, axis=1)
        return out

    def steady_beat(self, tol: float = 5e-3, run: int = 3) -> np.ndarray:
        """Index of the first beat from which MAP, CO, CVP and mPAP change by less than ``tol``
        (relative) from one beat to the next for ``run`` beats in a row; -1 if never."""
        cols = [BEAT_NAMES.index(c) for c in ("MAP", "CO", "CVP", "mPAP")]
        v = self.beats[:, :, cols]
        rel = np.abs(np.diff(v, axis=1)) / np.maximum(np.abs(v[:, 1:]), 1e-9)
        ok = np.all(rel < tol, axis=2)
        out = np.full(len(self.subjects), -1)
        for i in range(len(self.subjects)):
            m = int(self.n_beats[i]) - 1
            streak = 0
            for b in range(m):
                streak = streak + 1 if ok[i, b] else 0
                if streak >= run:
                    out[i] = b - run + 1
                    break
        return out


def run_beats(
    cohort: Cohort,
    duration: float,
    *,
    fluid: np.ndarray | None = None,
    solver: Solver | None = None,
    dt: float = 0.008,
    chunk: float = 1.0,
    x0: np.ndarray | None = None,
) -> BeatResult:
    """Simulate ``duration`` seconds of every subject and return its beats.

    ``fluid`` [mL/s]: volume infused (negative: lost) into the vena cava, shape ``(n,)``
    (constant) or ``(n, n_steps)`` per ``dt`` step. ``solver``: fixed-step RK4 with one step
    per ``dt`` by default (8 ms: the steady state agrees with adaptive Dormand-Prince at
    rtol 1e-6 within 0.05 mmHg and 0.05 mL). ``x0`` starts from given states (e.g. a steady
    state) instead of the model's initial state. A subject whose integration fails or leaves
    the physiological range raises :class:`SimulationError` naming it; no numbers come back.
    """
    model = su.SmithUrsino()
    solver = solver or RK4(1)
    if not (math.isfinite(dt) and dt > 0) or not (math.isfinite(duration) and duration > 0):
        raise ValidationError(f"dt {dt} and duration {duration} must be > 0 s", where="run_beats")
    p = np.array(check_cohort(cohort), dtype=float, order="C")  # a writable copy
    n = p.shape[0]
    n_steps = int(round(duration / dt))
    u = np.zeros((n, n_steps, 1))
    if fluid is not None:
        f = np.asarray(fluid, dtype=float)
        if not np.all(np.isfinite(f)):
            raise ValidationError("must be finite [mL/s]", where="fluid")
        u[:, :, 0] = f[:, None] if f.ndim == 1 else f[:, :n_steps]
    x = np.array(model.initial_state(p) if x0 is None else x0, dtype=float, order="C")
    m = np.ascontiguousarray(model.initial_memory(p))
    work = Work.new(n)
    v_start = x[:, su.VOLUMES].sum(axis=1)
    cap = int(duration / (0.25 * float(p[:, su.TREF].min()))) + 4  # HR <= 4x its reference
    beats = np.full((n, cap, _NB), np.nan)
    nbeats = np.zeros(n)
    carry = _init_carry(x, p, 0.0)
    per = max(1, int(round(chunk / dt)))
    for j0 in range(0, n_steps, per):
        j1 = min(n_steps, j0 + per)
        out = solver.advance(model, j0 * dt, dt, x, u[:, j0:j1], m, p, work)
        _check(work, out, cohort, solver)
        _scan(out, j0 * dt, dt, p, carry, beats, nbeats)
    meta = {"model": model.name, "model_version": model.version, "solver": repr(solver),
            "dt [s]": dt, "duration [s]": duration}
    return BeatResult(cohort.ids, beats, nbeats.astype(int), x.copy(),
                      np.stack([v_start, x[:, su.VOLUMES].sum(axis=1)], axis=1), meta)


def _check(work: Work, out: np.ndarray, cohort: Cohort, solver: Solver) -> None:
    """Refuse a failed or diverging subject: non-finite states, negative chamber volumes."""
    bad = work.status != 0
    vols = out[:, :, su.VOLUMES]
    neg = np.any(vols < -1e-6, axis=(1, 2)) | ~np.all(np.isfinite(out), axis=(1, 2))
    if bad.any() or neg.any():
        i = int(np.flatnonzero(bad | neg)[0])
        why = (STATUS_TEXT.get(int(work.status[i]), "failed") if bad[i]
               else "a volume became negative or non-finite (the circulation collapsed or the "
                    "integration diverged; check the parameters or use a smaller dt)")
        raise SimulationError(f"subject {cohort.ids[i]!r}: {why} ({solver.name}); "
                              f"{int((bad | neg).sum())} subject(s) affected")
