"""Closed-loop circulation with heartbeat resolution (Smith 2004) under a baroreflex (Ursino 1998).

Circulation, after Smith, Chase, Nokes, Shaw & Wake, Med Eng Phys 26:131-139, 2004 (as encoded
in CellML / BioModels MODEL1006230000): time-varying elastance left and right ventricles whose
free walls and septum interact (the septum volume ``V_spt`` solves
``P_spt(V_spt) = P_lvf(V_lv - V_spt) - P_rvf(V_rv + V_spt)`` every evaluation), a pericardium
``P_peri = P_0_pcd (exp(lambda_pcd (V_lv + V_rv - V_0_pcd)) - 1) + P_th``, aorta, vena cava,
pulmonary artery and vein (the last two inside the thorax, ``+ P_th``), and four valves with
inertance that open on pressure and close on flow ("open on pressure, close on flow"): a valve's
flow obeys ``L dQ/dt = dP - R Q`` while ``dP > 0`` or ``Q > 0``; otherwise ``dQ/dt = 0`` and
only ``max(Q, 0)`` moves volume, so volume is conserved exactly whatever the step.

Baroreflex, after Ursino, Am J Physiol 275:H1733, 1998: carotid afferent (lead-lag filter of
arterial pressure, sigmoid firing), sympathetic and vagal efferents, and first-order effectors
on the heart period, both end-systolic elastances and the systemic resistance (splanchnic and
extrasplanchnic beds in parallel). Each effector acts on the Smith value as the ratio of
Ursino's effector to its value at the set point ``P_n``: at ``P_n`` the Smith 2004 parameters
hold exactly; ``baroreflex [1] = 0`` opens the loop (Smith's own experiments). Pure delays are
linear chains with the same mean (the engine has no delay equations: Part 1 of issue 14).

The heart beats on a phase ``phi`` (``dphi/dt = 1/T``); the driver is Smith's Gaussian in phase,
``e = A exp(-B T_ref^2 (frac(phi) - C/T_ref)^2)``, so the systole scales with the period and a
beat starts where ``phi`` crosses an integer. Three integrators (``int P_ao``, ``int P_vc``,
``int P_pa``) give exact cycle means. Time is in seconds.

Input: ``fluid [mL/s]`` into the vena cava (negative: haemorrhage).

Validation against Smith 2004's reported responses and Pulse's resting ranges, and why the
steady-state responses exceed the paper's figures: ``data/README.md`` ("Validation status").
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from numba import njit

from medtwin.core import codes
from medtwin.core.model import MEMORY_SIGNATURE, RHS_SIGNATURE, Model, Variable

STATES: tuple[Variable, ...] = (
    Variable("V_lv", "mL", "left ventricular volume"),
    Variable("V_rv", "mL", "right ventricular volume"),
    Variable("V_pa", "mL", "pulmonary arterial volume"),
    Variable("V_pu", "mL", "pulmonary venous volume"),
    Variable("V_ao", "mL", "aortic (systemic arterial) volume"),
    Variable("V_vc", "mL", "vena cava (systemic venous) volume"),
    Variable("Q_mt", "mL/s", "mitral valve flow"),
    Variable("Q_av", "mL/s", "aortic valve flow"),
    Variable("Q_tc", "mL/s", "tricuspid valve flow"),
    Variable("Q_pv", "mL/s", "pulmonary valve flow"),
    Variable("phi", "1", "cardiac phase (beats since start)"),
    Variable("P_filt", "mmHg", "carotid afferent filtered pressure"),
    Variable("s_d1", "1", "sympathetic drive, delay stage 1"),
    Variable("s_d2", "1", "sympathetic drive, delay stage 2"),
    Variable("f_ev_d", "1/s", "vagal firing, delayed"),
    Variable("z_E", "1", "sympathetic effector state on elastances"),
    Variable("z_R", "1", "sympathetic effector state on resistance"),
    Variable("z_Ts", "1", "sympathetic effector state on heart period"),
    Variable("z_Tv", "1/s", "vagal effector state on heart period"),
    Variable("I_Pao", "mmHg*s", "integral of aortic pressure"),
    Variable("I_Pvc", "mmHg*s", "integral of vena cava pressure"),
    Variable("I_Ppa", "mmHg*s", "integral of pulmonary arterial pressure"),
)
N_STATES = len(STATES)
VOLUMES = slice(0, 6)
(V_LV, V_RV, V_PA, V_PU, V_AO, V_VC, Q_MT, Q_AV, Q_TC, Q_PV, PHI, P_FILT, S_D1, S_D2, F_EV_D,
 Z_E, Z_R, Z_TS, Z_TV, I_PAO, I_PVC, I_PPA) = range(N_STATES)

SMITH: tuple[Variable, ...] = (
    Variable("E_es_lvf", "mmHg/mL"), Variable("V_d_lvf", "mL"), Variable("P_0_lvf", "mmHg"),
    Variable("lambda_lvf", "1/mL"), Variable("V_0_lvf", "mL"),
    Variable("E_es_rvf", "mmHg/mL"), Variable("V_d_rvf", "mL"), Variable("P_0_rvf", "mmHg"),
    Variable("lambda_rvf", "1/mL"), Variable("V_0_rvf", "mL"),
    Variable("E_es_spt", "mmHg/mL"), Variable("V_d_spt", "mL"), Variable("P_0_spt", "mmHg"),
    Variable("lambda_spt", "1/mL"), Variable("V_0_spt", "mL"),
    Variable("P_0_pcd", "mmHg"), Variable("lambda_pcd", "1/mL"), Variable("V_0_pcd", "mL"),
    Variable("P_th", "mmHg"),
    Variable("E_ao", "mmHg/mL"), Variable("E_vc", "mmHg/mL"), Variable("E_pa", "mmHg/mL"),
    Variable("E_pu", "mmHg/mL"),
    Variable("R_sys", "mmHg*s/mL"), Variable("R_pul", "mmHg*s/mL"), Variable("R_mt", "mmHg*s/mL"),
    Variable("R_av", "mmHg*s/mL"), Variable("R_tc", "mmHg*s/mL"), Variable("R_pv", "mmHg*s/mL"),
    Variable("L_mt", "mmHg*s^2/mL"), Variable("L_av", "mmHg*s^2/mL"),
    Variable("L_tc", "mmHg*s^2/mL"), Variable("L_pv", "mmHg*s^2/mL"),
    Variable("A_drv", "1"), Variable("B_drv", "1/s^2"), Variable("C_drv", "s"),
    Variable("T_ref", "s"), Variable("V_stressed", "mL"),
    Variable("f_V_lv", "1"), Variable("f_V_rv", "1"), Variable("f_V_pa", "1"),
    Variable("f_V_pu", "1"), Variable("f_V_ao", "1"),
)
URSINO: tuple[Variable, ...] = (
    Variable("baroreflex", "1"), Variable("P_n", "mmHg"), Variable("k_a", "mmHg"),
    Variable("f_min", "1/s"), Variable("f_max", "1/s"), Variable("tau_z", "s"),
    Variable("tau_p", "s"), Variable("f_es_inf", "1/s"), Variable("f_es_0", "1/s"),
    Variable("k_es", "s"), Variable("f_es_min", "1/s"), Variable("f_ev_0", "1/s"),
    Variable("f_ev_inf", "1/s"), Variable("f_cs_0", "1/s"), Variable("k_ev", "1/s"),
    Variable("G_E_lv", "mmHg/mL"), Variable("G_E_rv", "mmHg/mL"), Variable("tau_E", "s"),
    Variable("G_R_sp", "mmHg*s/mL"), Variable("G_R_ep", "mmHg*s/mL"), Variable("tau_R", "s"),
    Variable("G_T_s", "s"), Variable("tau_T_s", "s"), Variable("G_T_v", "s"),
    Variable("tau_T_v", "s"), Variable("D_s", "s"), Variable("D_v", "s"), Variable("T_0", "s"),
    Variable("E_max_lv_0", "mmHg/mL"), Variable("E_max_rv_0", "mmHg/mL"),
    Variable("R_sp_0", "mmHg*s/mL"), Variable("R_ep_0", "mmHg*s/mL"),
)
PARAMETERS = SMITH + URSINO
_P = {v.name: i for i, v in enumerate(PARAMETERS)}
(ELV, VDLV, P0LV, LLV, V0LV, ERV, VDRV, P0RV, LRV, V0RV, ESP, VDSP, P0SP, LSP, V0SP, P0PC, LPC,
 V0PC, PTH, EAO, EVC, EPA, EPU, RSYS, RPUL, RMT, RAV, RTC, RPV, LMT, LAV, LTC, LPV, ADRV, BDRV,
 CDRV, TREF, VSTR, FLV, FRV, FPA, FPU, FAO) = range(len(SMITH))
(GAIN, PN, KA, FMIN, FMAX, TAUZ, TAUP, FESINF, FES0, KES, FESMIN, FEV0, FEVINF, FCS0, KEV,
 GELV, GERV, TAUE, GRSP, GREP, TAUR, GTS, TAUTS, GTV, TAUTV, DS, DV, T0, EMLV0, EMRV0, RSP0,
 REP0) = range(len(SMITH), len(PARAMETERS))

INPUTS: tuple[Variable, ...] = (
    Variable("fluid", "mL/s", "volume infused into the vena cava (negative: blood loss)",
             role="fluid"),
)
FLUID = 0
MEMORY: tuple[Variable, ...] = (
    Variable("V_spt_guess", "mL", "last septum volume: the Newton solve's warm start"),
    Variable("E_lv_ref", "mmHg/mL", "Ursino LV E_max at the set point"),
    Variable("E_rv_ref", "mmHg/mL", "Ursino RV E_max at the set point"),
    Variable("R_ref", "mmHg*s/mL", "Ursino parallel systemic resistance at the set point"),
    Variable("T_ref_U", "s", "Ursino heart period at the set point"),
)

#: instantaneous outputs (beat-level outputs are in :mod:`medtwin.models.cardio.beats`)
OUTPUTS: tuple[Variable, ...] = (
    Variable("P_ao", "mmHg", "aortic (arterial) pressure"),
    Variable("P_lv", "mmHg", "left ventricular pressure"),
    Variable("P_vc", "mmHg", "vena cava pressure (central venous pressure)"),
    Variable("P_pa", "mmHg", "pulmonary arterial pressure"),
    Variable("HR", "/min", "instantaneous heart rate 60/T", loinc=codes.HEART_RATE),
    Variable("V_blood", "mL", "stressed blood volume (sum of the six volumes)"),
)


@njit(cache=True, inline="always")
def _wall(e: float, ees: float, vd: float, p0: float, lam: float, v0: float, v: float
          ) -> tuple[float, float]:
    """Pressure of a time-varying elastance wall at volume ``v`` and its derivative."""
    ex = p0 * math.exp(lam * (v - v0))
    return e * ees * (v - vd) + (1.0 - e) * (ex - p0), e * ees + (1.0 - e) * lam * ex


@njit(cache=True)
def septum_volume(e: float, vlv: float, vrv: float, elv: float, erv: float, p: np.ndarray,
                  guess: float) -> tuple[float, float, float]:
    """``V_spt`` solving ``P_spt(V) - P_lvf(V_lv - V) + P_rvf(V_rv + V) = 0`` (strictly
    increasing in ``V``; ``elv``/``erv`` the free walls' current end-systolic elastances):
    safeguarded Newton from ``guess``, bisection when a step leaves the bracket, to 1e-10 mL.
    Returns ``V_spt`` and the LV and RV free-wall pressures there (first order in the last
    Newton step, which is below 1e-9 mL)."""
    lo, hi = -vrv - 50.0, vlv + 50.0
    v = min(max(guess, lo), hi)
    for _ in range(100):
        ps, ds = _wall(e, p[ESP], p[VDSP], p[P0SP], p[LSP], p[V0SP], v)
        pl, dl = _wall(e, elv, p[VDLV], p[P0LV], p[LLV], p[V0LV], vlv - v)
        pr, dr = _wall(e, erv, p[VDRV], p[P0RV], p[LRV], p[V0RV], vrv + v)
        f = ps - pl + pr
        if f > 0.0:
            hi = v
        else:
            lo = v
        step = f / (ds + dl + dr)
        if abs(step) < 1e-9:  # Newton converges quadratically: the error is now ~1e-15 mL
            return v - step, pl + dl * step, pr - dr * step
        vn = v - step
        if not (lo < vn < hi) or not math.isfinite(vn):
            vn = 0.5 * (lo + hi)
        if hi - lo < 1e-10:
            break
        v = vn
    pl, _ = _wall(e, elv, p[VDLV], p[P0LV], p[LLV], p[V0LV], vlv - v)
    pr, _ = _wall(e, erv, p[VDRV], p[P0RV], p[LRV], p[V0RV], vrv + v)
    return v, pl, pr


@njit(cache=True, inline="always")
def _sym_drive(p: np.ndarray, f_es: float) -> float:
    return math.log(f_es - p[FESMIN] + 1.0) if f_es > p[FESMIN] else 0.0


@njit(cache=True, inline="always")
def _efferents(p: np.ndarray, pf: float) -> tuple[float, float]:
    """Sympathetic drive ``ln(f_es - f_es_min + 1)`` and vagal firing at filtered pressure."""
    ex = math.exp(min((pf - p[PN]) / p[KA], 700.0))
    fcs = (p[FMIN] + p[FMAX] * ex) / (1.0 + ex)
    f_es = p[FESINF] + (p[FES0] - p[FESINF]) * math.exp(-p[KES] * fcs)
    ev = math.exp(min((fcs - p[FCS0]) / p[KEV], 700.0))
    f_ev = (p[FEV0] + p[FEVINF] * ev) / (1.0 + ev)
    return _sym_drive(p, f_es), f_ev


@njit(cache=True)
def set_point_effectors(p: np.ndarray, out: np.ndarray) -> None:
    """Ursino's effectors at the set point ``P_n`` (LV and RV E_max, parallel resistance,
    period) into ``out[0:4]``: the denominators of :func:`effector_ratios`."""
    s0, v0 = _efferents(p, p[PN])
    out[0] = p[EMLV0] + p[GELV] * s0
    out[1] = p[EMRV0] + p[GERV] * s0
    rsp0, rep0 = p[RSP0] + p[GRSP] * s0, p[REP0] + p[GREP] * s0
    out[2] = rsp0 * rep0 / (rsp0 + rep0)
    out[3] = p[T0] + p[GTS] * s0 + p[GTV] * v0


@njit(cache=True, inline="always")
def effector_ratios(x: np.ndarray, p: np.ndarray, ref: np.ndarray
                    ) -> tuple[float, float, float, float]:
    """Ratios (LV elastance, RV elastance, systemic resistance, heart period) of the reflex's
    current effectors to their set-point values ``ref`` (:func:`set_point_effectors`),
    blended by ``baroreflex [1]``."""
    g = p[GAIN]
    r_lv = (p[EMLV0] + p[GELV] * x[Z_E]) / ref[0]
    r_rv = (p[EMRV0] + p[GERV] * x[Z_E]) / ref[1]
    rsp, rep = p[RSP0] + p[GRSP] * x[Z_R], p[REP0] + p[GREP] * x[Z_R]
    r_r = (rsp * rep / (rsp + rep)) / ref[2]
    r_t = (p[T0] + p[GTS] * x[Z_TS] + p[GTV] * x[Z_TV]) / ref[3]
    return (1.0 + g * (r_lv - 1.0), 1.0 + g * (r_rv - 1.0), 1.0 + g * (r_r - 1.0),
            1.0 + g * (r_t - 1.0))


@njit(MEMORY_SIGNATURE, cache=True)
def cardio_memory(t, dt, x, u, m, p) -> None:  # noqa: ANN001
    """Refresh the set-point effector values (parameters may differ per subject)."""
    set_point_effectors(p, m[1:5])


@njit(cache=True, inline="always")
def driver(phi: float, p: np.ndarray) -> float:
    """Smith's Gaussian activation in phase: ``A exp(-B T_ref^2 (frac(phi) - C/T_ref)^2)``."""
    tr = p[TREF]
    d = (phi - math.floor(phi)) - p[CDRV] / tr
    return p[ADRV] * math.exp(-p[BDRV] * tr * tr * d * d)


@njit(cache=True, inline="always")
def _valve(q: float, dp: float, r: float, inertance: float) -> float:
    if dp <= 0.0 and q <= 0.0:
        return 0.0
    return (dp - r * q) / inertance


@njit(RHS_SIGNATURE, cache=True)
def cardio_rhs(t, x, u, m, p, dx) -> None:  # noqa: ANN001
    """dx/dt of one subject (see the module docstring); writes the septum warm start to m[0]."""
    r_lv, r_rv, r_r, r_t = effector_ratios(x, p, m[1:5])
    period = p[TREF] * r_t
    e = driver(x[PHI], p)
    vlv, vrv = x[V_LV], x[V_RV]
    # ventricular interaction: septum, then free walls and pericardium
    elv, erv = p[ELV] * r_lv, p[ERV] * r_rv
    v, p_lvf, p_rvf = septum_volume(e, vlv, vrv, elv, erv, p, m[0])
    m[0] = v
    p_peri = p[P0PC] * (math.exp(p[LPC] * (vlv + vrv - p[V0PC])) - 1.0) + p[PTH]
    p_lv = p_lvf + p_peri
    p_rv = p_rvf + p_peri
    p_pa = p[EPA] * x[V_PA] + p[PTH]
    p_pu = p[EPU] * x[V_PU] + p[PTH]
    p_ao = p[EAO] * x[V_AO]
    p_vc = p[EVC] * x[V_VC]
    q_sys = (p_ao - p_vc) / (p[RSYS] * r_r)
    q_pul = (p_pa - p_pu) / p[RPUL]
    dx[Q_MT] = _valve(x[Q_MT], p_pu - p_lv, p[RMT], p[LMT])
    dx[Q_AV] = _valve(x[Q_AV], p_lv - p_ao, p[RAV], p[LAV])
    dx[Q_TC] = _valve(x[Q_TC], p_vc - p_rv, p[RTC], p[LTC])
    dx[Q_PV] = _valve(x[Q_PV], p_rv - p_pa, p[RPV], p[LPV])
    qmt, qav = max(x[Q_MT], 0.0), max(x[Q_AV], 0.0)
    qtc, qpv = max(x[Q_TC], 0.0), max(x[Q_PV], 0.0)
    dx[V_LV] = qmt - qav
    dx[V_RV] = qtc - qpv
    dx[V_PA] = qpv - q_pul
    dx[V_PU] = q_pul - qmt
    dx[V_AO] = qav - q_sys
    dx[V_VC] = q_sys - qtc + u[FLUID]
    dx[PHI] = 1.0 / period
    # baroreflex (Ursino 1998): afferent lead-lag on arterial pressure, efferents, effectors
    dpao = p[EAO] * dx[V_AO]
    dx[P_FILT] = (p_ao + p[TAUZ] * dpao - x[P_FILT]) / p[TAUP]
    s, f_ev = _efferents(p, x[P_FILT])
    k = 2.0 / p[DS]
    dx[S_D1] = k * (s - x[S_D1])
    dx[S_D2] = k * (x[S_D1] - x[S_D2])
    dx[F_EV_D] = (f_ev - x[F_EV_D]) / p[DV]
    dx[Z_E] = (x[S_D2] - x[Z_E]) / p[TAUE]
    dx[Z_R] = (x[S_D2] - x[Z_R]) / p[TAUR]
    dx[Z_TS] = (x[S_D2] - x[Z_TS]) / p[TAUTS]
    dx[Z_TV] = (x[F_EV_D] - x[Z_TV]) / p[TAUTV]
    dx[I_PAO] = p_ao
    dx[I_PVC] = p_vc
    dx[I_PPA] = p_pa


@njit(cache=True)
def _observe_one(x: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
    ref = np.empty(4)
    set_point_effectors(p, ref)
    r_lv, r_rv, r_r, r_t = effector_ratios(x, p, ref)
    e = driver(x[PHI], p)
    _, p_lvf, _ = septum_volume(e, x[V_LV], x[V_RV], p[ELV] * r_lv, p[ERV] * r_rv, p, 0.0)
    p_peri = p[P0PC] * (math.exp(p[LPC] * (x[V_LV] + x[V_RV] - p[V0PC])) - 1.0) + p[PTH]
    out[0] = p[EAO] * x[V_AO]
    out[1] = p_lvf + p_peri
    out[2] = p[EVC] * x[V_VC]
    out[3] = p[EPA] * x[V_PA] + p[PTH]
    out[4] = 60.0 / (p[TREF] * r_t)
    out[5] = x[V_LV] + x[V_RV] + x[V_PA] + x[V_PU] + x[V_AO] + x[V_VC]


@njit(cache=True)
def _observe_all(x: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
    n, k, _ = x.shape
    for i in range(n):
        for j in range(k):
            _observe_one(x[i, j], p[i], out[i, j])


def set_point_reflex_state(p: np.ndarray) -> np.ndarray:
    """Reflex states ``(n, 8)`` in equilibrium at the set point ``P_n`` (vectorised)."""
    p = np.atleast_2d(p)
    ex = np.ones(p.shape[0])  # exp((P_n - P_n)/k_a)
    fcs = (p[:, FMIN] + p[:, FMAX] * ex) / (1.0 + ex)
    f_es = p[:, FESINF] + (p[:, FES0] - p[:, FESINF]) * np.exp(-p[:, KES] * fcs)
    s = np.where(f_es > p[:, FESMIN], np.log(np.maximum(f_es - p[:, FESMIN], 0.0) + 1.0), 0.0)
    ev = np.exp((fcs - p[:, FCS0]) / p[:, KEV])
    f_ev = (p[:, FEV0] + p[:, FEVINF] * ev) / (1.0 + ev)
    return np.stack([p[:, PN], s, s, f_ev, s, s, s, f_ev], axis=1)


class SmithUrsino(Model):
    """Smith 2004 closed-loop circulation under the Ursino 1998 baroreflex: 22 states, 1 input.

    Time unit: seconds (input steps and output times are in s).
    """

    name: ClassVar[str] = "smith2004-ursino1998"
    version: ClassVar[str] = "1"
    states = STATES
    parameters = PARAMETERS
    inputs = INPUTS
    outputs = OUTPUTS
    memory = MEMORY
    rhs_kernel = staticmethod(cardio_rhs)
    memory_kernel = staticmethod(cardio_memory)

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        """Volumes from ``V_stressed`` split as in the CellML initial conditions, valves closed
        except the CellML's initial filling flows, the reflex at its set point, phase 0."""
        p = np.atleast_2d(np.asarray(p, dtype=float))
        n = p.shape[0]
        x = np.zeros((n, N_STATES))
        vs = p[:, VSTR]
        fr = p[:, [FLV, FRV, FPA, FPU, FAO]]
        x[:, [V_LV, V_RV, V_PA, V_PU, V_AO]] = fr * vs[:, None]
        x[:, V_VC] = vs * (1.0 - fr.sum(axis=1))
        x[:, Q_MT] = 245.581  # CellML initial mitral flow [mL/s]
        x[:, Q_TC] = 190.066  # CellML initial tricuspid flow [mL/s]
        x[:, P_FILT:Z_TV + 1] = set_point_reflex_state(p)
        return x

    def initial_memory(self, p: np.ndarray) -> np.ndarray:
        """Septum warm start 0 mL and the set-point effectors."""
        p = np.ascontiguousarray(np.atleast_2d(p), dtype=float)
        m = np.zeros((p.shape[0], len(MEMORY)))
        for i in range(p.shape[0]):
            set_point_effectors(p[i], m[i, 1:5])
        return m

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Instantaneous pressures, heart rate and blood volume, ``(n, ..., 6)``."""
        x = np.asarray(x, dtype=float)
        p = np.ascontiguousarray(np.atleast_2d(p), dtype=float)
        shape = x.shape
        xx = np.ascontiguousarray(x.reshape(shape[0], -1, shape[-1]))
        out = np.empty(xx.shape[:2] + (len(OUTPUTS),))
        _observe_all(xx, p, out)
        return out.reshape(shape[:-1] + (len(OUTPUTS),))
