"""The UVA/Padova type-1 diabetes model (13 states), as simglucose 0.2.11 implements it.

Equations follow ``simglucose/patient/t1dpatient.py`` (``T1DPatient.model``) term by term:
gastric emptying with the nonlinear ``kgut`` (kmax/kmin/b/d, driven by the size ``Dbar`` of the
last meal), endogenous glucose production, renal excretion above ``ke2``, insulin-dependent
utilisation (Vm0, Vmx, Km0), insulin kinetics, subcutaneous insulin (kd, ka1, ka2) and
subcutaneous glucose (ksc). Inputs: carbohydrate eaten [g/min] (x 1000 -> mg/min) and insulin
[U/min] (x 6000 / BW -> pmol/kg/min).

The peer's bookkeeping of the meal (``_last_Qsto``, ``_last_foodtaken``, ``is_eating``) is the
model's *memory*, updated at the start of each input step by :func:`uva_memory`:
when eating starts, ``Qsto_last = x0 + x1`` and ``food_taken = 0``; while eating, each step
adds its carbohydrate [g]; ``Dbar = Qsto_last + 1000 * food_taken`` [mg].

References: Dalla Man, Rizza, Cobelli, IEEE TBME 54(10):1740-9, 2007; Man et al., J Diabetes
Sci Technol 8(1):26-34, 2014; simglucose 0.2.11 (MIT), https://github.com/jxx123/simglucose.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numba import njit

from medtwin.core import codes
from medtwin.core.model import MEMORY_SIGNATURE, OUTPUT_SIGNATURE, RHS_SIGNATURE, Model, Variable
from medtwin.models.glucose.constants import INSULIN_PMOL_PER_UNIT

STATES: tuple[Variable, ...] = (
    Variable("Qsto1", "mg", "glucose in the stomach, solid phase"),
    Variable("Qsto2", "mg", "glucose in the stomach, liquid phase"),
    Variable("Qgut", "mg", "glucose in the intestine"),
    Variable("Gp", "mg/kg", "glucose mass in plasma and rapidly equilibrating tissues"),
    Variable("Gt", "mg/kg", "glucose mass in slowly equilibrating tissues"),
    Variable("Ip", "pmol/kg", "insulin mass in plasma"),
    Variable("X", "pmol/L", "insulin action on glucose utilisation"),
    Variable("I1", "pmol/L", "delayed insulin signal, first compartment"),
    Variable("Id", "pmol/L", "delayed insulin signal acting on production"),
    Variable("Il", "pmol/kg", "insulin mass in the liver"),
    Variable("Isc1", "pmol/kg", "subcutaneous insulin, non-monomeric"),
    Variable("Isc2", "pmol/kg", "subcutaneous insulin, monomeric"),
    Variable("Gs", "mg/kg", "subcutaneous glucose"),
)

_RATE = "1/min"
#: model parameters in the order of the kernels' parameter vector (initial states follow)
_MODEL_PARAMETERS: tuple[Variable, ...] = (
    Variable("BW", "kg", "body weight"),
    Variable("Vg", "dL/kg", "glucose distribution volume"),
    Variable("Vi", "L/kg", "insulin distribution volume"),
    Variable("kabs", _RATE, "intestinal absorption rate"),
    Variable("kmax", _RATE, "maximum gastric emptying rate"),
    Variable("kmin", _RATE, "minimum gastric emptying rate"),
    Variable("b", "1", "fraction of the meal at which kgut halves its decrease"),
    Variable("d", "1", "fraction of the meal at which kgut is back to half"),
    Variable("f", "1", "fraction of intestinal absorption appearing in plasma"),
    Variable("kp1", "mg/kg/min", "extrapolated EGP at zero glucose and insulin"),
    Variable("kp2", _RATE, "liver glucose effectiveness"),
    Variable("kp3", "mg/kg/min per pmol/L", "insulin action on the liver"),
    Variable("Fsnc", "mg/kg/min", "insulin-independent utilisation"),
    Variable("ke1", _RATE, "renal glomerular filtration rate"),
    Variable("ke2", "mg/kg", "renal threshold of glucose"),
    Variable("k1", _RATE, "plasma to tissue glucose transfer"),
    Variable("k2", _RATE, "tissue to plasma glucose transfer"),
    Variable("Vm0", "mg/kg/min", "basal insulin-dependent utilisation"),
    Variable("Vmx", "mg/kg/min per pmol/L", "insulin sensitivity of utilisation"),
    Variable("Km0", "mg/kg", "Michaelis-Menten constant of utilisation"),
    Variable("m1", _RATE, "liver to plasma insulin transfer"),
    Variable("m2", _RATE, "plasma to liver insulin transfer"),
    Variable("m4", _RATE, "peripheral insulin degradation"),
    Variable("m30", _RATE, "hepatic insulin extraction"),
    Variable("Ib", "pmol/L", "basal plasma insulin"),
    Variable("p2u", _RATE, "rate of insulin action on utilisation"),
    Variable("ki", _RATE, "delay of insulin action on production"),
    Variable("kd", _RATE, "subcutaneous insulin degradation / transfer"),
    Variable("ka1", _RATE, "absorption of non-monomeric subcutaneous insulin"),
    Variable("ka2", _RATE, "absorption of monomeric subcutaneous insulin"),
    Variable("ksc", _RATE, "subcutaneous glucose equilibration rate"),
)
PARAMETERS: tuple[Variable, ...] = _MODEL_PARAMETERS + tuple(
    Variable(f"{s.name}_0", s.unit, f"initial {s.description}") for s in STATES
)
_P = {v.name: i for i, v in enumerate(PARAMETERS)}
# compile-time constants for the kernels (numba freezes module globals)
BW, VG, VI = _P["BW"], _P["Vg"], _P["Vi"]
KABS, KMAX, KMIN, B, D, F = _P["kabs"], _P["kmax"], _P["kmin"], _P["b"], _P["d"], _P["f"]
KP1, KP2, KP3, FSNC, KE1, KE2 = _P["kp1"], _P["kp2"], _P["kp3"], _P["Fsnc"], _P["ke1"], _P["ke2"]
K1, K2, VM0, VMX, KM0 = _P["k1"], _P["k2"], _P["Vm0"], _P["Vmx"], _P["Km0"]
M1, M2, M4, M30, IB = _P["m1"], _P["m2"], _P["m4"], _P["m30"], _P["Ib"]
P2U, KI, KD, KA1, KA2, KSC = _P["p2u"], _P["ki"], _P["kd"], _P["ka1"], _P["ka2"], _P["ksc"]
X0 = _P["Qsto1_0"]

INPUTS: tuple[Variable, ...] = (
    Variable("CHO", "g/min", "carbohydrate eaten", role="meal"),
    Variable("insulin", "U/min", "subcutaneous insulin delivered", role="insulin"),
)
CHO, INSULIN = 0, 1

MEMORY: tuple[Variable, ...] = (
    Variable("Qsto_last", "mg", "stomach content when the current/last meal started"),
    Variable("food_taken", "g", "carbohydrate eaten since that meal started"),
    Variable("eating", "1", "1 while the subject is eating"),
    Variable("CHO_last", "g/min", "carbohydrate eaten over the previous input step"),
)
QSTO_LAST, FOOD, EATING, CHO_LAST = 0, 1, 2, 3

OUTPUTS: tuple[Variable, ...] = (
    Variable("G_plasma", "mg/dL", "plasma glucose Gp / Vg", loinc=codes.GLUCOSE_PLASMA),
    Variable("G_sc", "mg/dL", "subcutaneous (interstitial) glucose Gs / Vg",
             loinc=codes.GLUCOSE_INTERSTITIAL),
    Variable("Ra", "mg/kg/min", "rate of appearance of meal glucose in plasma"),
)
#: what the schedule announces ahead of eating: the meal's size (a controller may read it)
ANNOUNCEMENTS: tuple[Variable, ...] = (
    Variable("meal", "g", "carbohydrate announced", role="meal"),
)


@njit(RHS_SIGNATURE, cache=True, fastmath=False)
def uva_rhs(t, x, u, m, p, dx) -> None:  # noqa: ANN001
    """dx/dt of one subject: ``T1DPatient.model`` of simglucose 0.2.11, term by term."""
    d = u[CHO] * 1000.0  # g/min -> mg/min
    insulin = u[INSULIN] * INSULIN_PMOL_PER_UNIT / p[BW]  # U/min -> pmol/kg/min
    qsto = x[0] + x[1]
    dbar = m[QSTO_LAST] + m[FOOD] * 1000.0  # mg
    kmax = p[KMAX]
    kmin = p[KMIN]
    dx[0] = -kmax * x[0] + d
    if dbar > 0.0:
        aa = 5.0 / (2.0 * dbar * (1.0 - p[B]))
        cc = 5.0 / (2.0 * dbar * p[D])
        kgut = kmin + (kmax - kmin) / 2.0 * (
            np.tanh(aa * (qsto - p[B] * dbar)) - np.tanh(cc * (qsto - p[D] * dbar)) + 2.0
        )
    else:
        kgut = kmax
    dx[1] = kmax * x[0] - x[1] * kgut
    dx[2] = kgut * x[1] - p[KABS] * x[2]
    rat = p[F] * p[KABS] * x[2] / p[BW]
    egpt = p[KP1] - p[KP2] * x[3] - p[KP3] * x[8]
    et = p[KE1] * (x[3] - p[KE2]) if x[3] > p[KE2] else 0.0
    g = max(egpt, 0.0) + rat - p[FSNC] - et - p[K1] * x[3] + p[K2] * x[4]
    dx[3] = g if x[3] >= 0.0 else 0.0
    uidt = (p[VM0] + p[VMX] * x[6]) * x[4] / (p[KM0] + x[4])
    g = -uidt + p[K1] * x[3] - p[K2] * x[4]
    dx[4] = g if x[4] >= 0.0 else 0.0
    g = -(p[M2] + p[M4]) * x[5] + p[M1] * x[9] + p[KA1] * x[10] + p[KA2] * x[11]
    dx[5] = g if x[5] >= 0.0 else 0.0
    it = x[5] / p[VI]
    dx[6] = -p[P2U] * x[6] + p[P2U] * (it - p[IB])
    dx[7] = -p[KI] * (x[7] - it)
    dx[8] = -p[KI] * (x[8] - x[7])
    g = -(p[M1] + p[M30]) * x[9] + p[M2] * x[5]
    dx[9] = g if x[9] >= 0.0 else 0.0
    g = insulin - (p[KA1] + p[KD]) * x[10]
    dx[10] = g if x[10] >= 0.0 else 0.0
    g = p[KD] * x[10] - p[KA2] * x[11]
    dx[11] = g if x[11] >= 0.0 else 0.0
    g = -p[KSC] * x[12] + p[KSC] * x[3]
    dx[12] = g if x[12] >= 0.0 else 0.0


@njit(OUTPUT_SIGNATURE, cache=True)
def uva_output(x, p, y) -> None:  # noqa: ANN001
    """The outputs of one subject, as :meth:`UVAPadova.observe` computes them."""
    y[0] = x[3] / p[VG]
    y[1] = x[12] / p[VG]
    y[2] = p[F] * p[KABS] / p[BW] * x[2]


@njit(MEMORY_SIGNATURE, cache=True)
def uva_memory(t, dt, x, u, m, p) -> None:  # noqa: ANN001
    """The peer's meal bookkeeping (``T1DPatient.step``) at the start of an input step."""
    cho = u[CHO]
    if cho > 0.0 and m[CHO_LAST] <= 0.0:
        m[QSTO_LAST] = x[0] + x[1]
        m[FOOD] = 0.0
        m[EATING] = 1.0
    if m[EATING] > 0.0:
        m[FOOD] += cho * dt
    if cho <= 0.0 and m[CHO_LAST] > 0.0:
        m[EATING] = 0.0
    m[CHO_LAST] = cho


class UVAPadova(Model):
    """UVA/Padova T1D model (simglucose 0.2.11 variant): 13 states, 2 inputs, 3 outputs."""

    name: ClassVar[str] = "uva-padova"
    version: ClassVar[str] = "simglucose-0.2.11"
    states = STATES
    parameters = PARAMETERS
    inputs = INPUTS
    outputs = OUTPUTS
    memory = MEMORY
    sensed_output = "G_sc"
    sensor_label = "CGM [mg/dL]"
    announcements = ANNOUNCEMENTS
    rhs_kernel = staticmethod(uva_rhs)
    memory_kernel = staticmethod(uva_memory)
    output_kernel = staticmethod(uva_output)

    def adapt_controller(self, controller: Any, *, pump: Any = None) -> Any:
        """A glucose controller (glucose and meal in, basal and bolus out) and its insulin pump
        as a loop controller (:class:`~medtwin.models.glucose.loop.InsulinLoop`)."""
        from medtwin.models.glucose.loop import InsulinLoop

        return InsulinLoop(controller, pump)

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        """The subjects' initial states, from the ``<state>_0`` parameters."""
        p = np.atleast_2d(p)
        return np.ascontiguousarray(p[:, X0 : X0 + len(STATES)], dtype=float)

    def initial_memory(self, p: np.ndarray) -> np.ndarray:
        """Not eating; the 'last meal' is what the stomach holds at the start (the peer's reset)."""
        p = np.atleast_2d(p)
        m = np.zeros((p.shape[0], len(MEMORY)))
        m[:, QSTO_LAST] = p[:, X0] + p[:, X0 + 1]
        return m

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Plasma glucose, subcutaneous glucose [mg/dL] and meal Ra [mg/kg/min]."""
        x = np.asarray(x, dtype=float)
        p = np.atleast_2d(p)
        shape = (p.shape[0],) + (1,) * (x.ndim - 2)
        vg = p[:, VG].reshape(shape)
        y = np.empty(x.shape[:-1] + (len(OUTPUTS),))
        y[..., 0] = x[..., 3] / vg
        y[..., 1] = x[..., 12] / vg
        y[..., 2] = (p[:, F] * p[:, KABS] / p[:, BW]).reshape(shape) * x[..., 2]
        return y
