"""The glucose twin's filter: an ensemble adjustment Kalman filter on the UVA/Padova model.

Why an ensemble filter (EAKF, Anderson 2001) and not a UKF or a particle filter:

- the model is stiff-ish, clipped at zero and switches regimes (renal threshold, gastric
  emptying), so derivatives (EKF) are poor and sigma points must be re-drawn every step (UKF);
  an ensemble needs no derivative and each member is just one more *subject of the engine*:
  one solver call (one ``rhs_kernel`` loop) propagates every member of every patient at once;
- with 13 model states plus the adapted parameters, a particle filter would need thousands
  of particles to avoid degeneracy; 32-64 ensemble members suffice for a Kalman update;
- the ensemble *is* the forecast distribution: propagating it gives the uncertainty band and
  the probability of hypoglycaemia directly, including the model's nonlinearity;
- the adjustment (square-root) form is deterministic given the forecast ensemble (no perturbed
  observations), so a twin restored from a snapshot continues bit for bit.

The augmented state of each member: the 13 model states, one log multiplier per adapted
parameter (``Vmx``, insulin-dependent utilisation = insulin sensitivity; optionally ``kp3``) as
a random walk, a CGM error state and an unexplained glucose flux (an Ornstein-Uhlenbeck
disturbance on plasma glucose, standing for what the model lacks: exercise, stress, miscounted
meals). Only the glucose subsystem, the multipliers and the two error states are updated by a
reading; insulin states follow the recorded insulin.

The CGM error of the shipped sensors is strongly autocorrelated (AR(1) on 15 min, PACF 0.7,
Johnson SU: sd ~11.6 mg/dL, lag-5-min correlation ~0.9). Modelling it as an AR(1) state
(``sensor_sd > 0``) is supported, but on simulated Dexcom data the filter could not separate it
from the slow glucose response to insulin and the Vmx estimate drifted by up to 100%; the
default instead treats the error as white, and updates the multipliers with an inflated sd
(``param_obs_sd`` 25 mg/dL, about 11.6 mg/dL times the square root of the correlation factor
``(1 + rho) / (1 - rho)`` of successive readings, the usual remedy for correlated observation
errors). The states may see a smaller ``white_sd`` to follow fast falls (a two-rate update, a
pragmatic decoupling, not an exact Bayesian update), but with 10 mg/dL the Vmx estimate and the
filtered glucose were both worse on the convergence cases, so both default to 25 mg/dL: the
filtered glucose is smooth and accurate (RMSE ~3-9 mg/dL) but lags a fast fall by 10-20 min.

Arrays are shaped ``(B, N, ...)``: ``B`` patients (one for a twin; 30 in the benchmark) times
``N`` members; the engine sees ``B * N`` subjects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.solvers import RK4, Solver, Work
from medtwin.models.glucose.uva_padova import STATES, UVAPadova

MODEL = UVAPadova()
_P = {v.name: i for i, v in enumerate(MODEL.parameters)}
VG, BW = _P["Vg"], _P["BW"]
QSTO1, QSTO2, QGUT, GP, GT, GS = 0, 1, 2, 3, 4, 12
#: model states a glucose reading updates (the insulin subsystem follows the recorded insulin)
UPDATED_STATES = (QSTO1, QSTO2, QGUT, GP, GT, GS)
ADAPTABLE = ("Vmx", "kp3", "Vm0", "kp1")


@dataclass(frozen=True)
class FilterSettings:
    """Tuning of the ensemble and its model of what it does not know (units in the names).

    Defaults were tuned on simulated UVA/Padova subjects with Dexcom noise (see the tests and
    ``benchmarks/bench_hypo.py``).
    """

    n_members: int = 48
    adapt: tuple[str, ...] = ("Vmx",)
    prior_sd: float = 0.4  # sd of the log multipliers at the start
    walk_sd_per_sqrt_h: float = 0.01  # random walk of the log multipliers
    sensor_sd: float = 0.0  # mg/dL, stationary sd of the AR(1) CGM error state (off)
    sensor_tau: float = 40.0  # min, its correlation time
    white_sd: float = 25.0  # mg/dL, reading error seen by the states
    param_obs_sd: float = 25.0  # mg/dL, reading error seen by the multipliers (inflated)
    flux_sd: float = 0.05  # mg/kg/min, stationary sd of the unexplained glucose flux
    flux_tau: float = 60.0  # min
    meal_sd: float = 0.05  # relative error of a recorded meal's size
    initial_glucose_sd: float = 0.1  # relative spread of glucose at the first reading
    substeps: int = 2  # RK4 steps per 1-min input step
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_members < 4:
            raise ValidationError("need at least 4 members", where="n_members")
        unknown = [a for a in self.adapt if a not in ADAPTABLE]
        if unknown:
            raise ValidationError(f"cannot adapt {unknown}; choose from {ADAPTABLE}",
                                  where="adapt")
        for name, v in asdict(self).items():
            if isinstance(v, float) and not (math.isfinite(v) and v >= 0):
                raise ValidationError(f"must be finite and >= 0, got {v}", where=name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["adapt"] = list(self.adapt)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FilterSettings:
        """Rebuild from :meth:`to_dict`."""
        return cls(**{**d, "adapt": tuple(d["adapt"])})


@dataclass
class Ensemble:
    """The filter's working arrays for ``B`` patients x ``N`` members (mutated in place).

    ``base`` ``(B, N, n_par)``: each member's parameters before the multipliers; ``x``
    ``(B, N, 13)`` model states; ``m`` ``(B, N, 4)`` the model's meal memory; ``theta``
    ``(B, N, q)`` log multipliers; ``bias`` ``(B, N)`` CGM error [mg/dL]; ``flux`` ``(B, N)``
    unexplained glucose flux [mg/kg/min].
    """

    base: np.ndarray
    x: np.ndarray
    m: np.ndarray
    theta: np.ndarray
    bias: np.ndarray
    flux: np.ndarray
    settings: FilterSettings
    solver: Solver = field(default_factory=RK4)

    @property
    def shape(self) -> tuple[int, int]:
        """(patients, members)."""
        return self.x.shape[0], self.x.shape[1]

    def copy(self) -> Ensemble:
        """A deep copy of the arrays."""
        return Ensemble(self.base.copy(), self.x.copy(), self.m.copy(), self.theta.copy(),
                        self.bias.copy(), self.flux.copy(), self.settings, self.solver)

    def params(self) -> np.ndarray:
        """Effective parameters ``(B * N, n_par)`` with the multipliers applied."""
        p = self.base.copy()
        for j, name in enumerate(self.settings.adapt):
            p[..., _P[name]] *= np.exp(self.theta[..., j])
        return np.ascontiguousarray(p.reshape(-1, p.shape[-1]))

    def glucose(self) -> np.ndarray:
        """True subcutaneous glucose [mg/dL] ``(B, N)``: what a perfect CGM would read."""
        return self.x[..., GS] / self.base[..., VG]


def new_ensemble(base: np.ndarray, settings: FilterSettings, first_reading: np.ndarray,
                 rng: np.random.Generator) -> Ensemble:
    """Members at their basal steady state, glucose scaled to the first reading ``(B,)``."""
    B, N, _ = base.shape
    s = settings
    x = MODEL.initial_state(base.reshape(B * N, -1)).reshape(B, N, -1).copy()
    m = MODEL.initial_memory(base.reshape(B * N, -1)).reshape(B, N, -1).copy()
    bias = rng.standard_normal((B, N)) * s.sensor_sd
    g_target = np.maximum(first_reading[:, None] - bias, 20.0)
    g_target *= np.exp(s.initial_glucose_sd * rng.standard_normal((B, N)))
    g_ss = x[..., GP] / base[..., VG]
    f = g_target / g_ss
    for i in (GP, GT):
        x[..., i] *= f
    x[..., GS] = x[..., GP]
    theta = rng.standard_normal((B, N, len(s.adapt))) * s.prior_sd
    flux = rng.standard_normal((B, N)) * s.flux_sd
    return Ensemble(base.copy(), x, m, theta, bias, flux, s, RK4(s.substeps))


def advance(ens: Ensemble, t0: float, u: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Propagate every member over ``k = u.shape[1]`` 1-min steps of inputs ``u`` ``(B, k, 2)``.

    With ``rng``, the model error is drawn too (meal size per member, then at the end the
    flux, the multipliers' walk and the CGM error's AR(1) step); without, the members move
    deterministically. Returns the subcutaneous glucose path ``(B, N, k)`` [mg/dL].
    """
    B, N = ens.shape
    k = u.shape[1]
    s = ens.settings
    if k == 0:
        return np.empty((B, N, 0))
    uu = np.repeat(u[:, None, :, :], N, axis=1)  # (B, N, k, 2)
    if rng is not None and s.meal_sd > 0 and np.any(u[..., 0] > 0):
        uu[..., 0] *= np.exp(s.meal_sd * rng.standard_normal((B, N, 1)))
    p = ens.params()
    x = np.ascontiguousarray(ens.x.reshape(B * N, -1))
    m = np.ascontiguousarray(ens.m.reshape(B * N, -1))
    work = Work.new(B * N)
    out = ens.solver.advance(MODEL, t0, 1.0, x, np.ascontiguousarray(uu.reshape(B * N, k, 2)),
                             m, p, work)
    if work.status.any():
        raise SimulationError(f"the glucose ensemble failed to integrate at t={t0:g} min "
                              f"({int((work.status != 0).sum())} members)")
    # the unexplained flux acts on plasma glucose over the interval (operator splitting)
    x = x.reshape(B, N, -1)
    x[..., GP] = np.maximum(x[..., GP] + ens.flux * k, 1e-3)
    ens.x = x
    ens.m = m.reshape(B, N, -1)
    if rng is not None:
        _model_error(ens, float(k), rng)
    return out.reshape(B, N, k, -1)[..., GS] / ens.base[..., VG][..., None]


def _model_error(ens: Ensemble, minutes: float, rng: np.random.Generator) -> None:
    s = ens.settings
    B, N = ens.shape
    a = math.exp(-minutes / s.flux_tau) if s.flux_tau > 0 else 0.0
    ens.flux = a * ens.flux + math.sqrt(1 - a * a) * s.flux_sd * rng.standard_normal((B, N))
    ens.theta += s.walk_sd_per_sqrt_h * math.sqrt(minutes / 60.0) * rng.standard_normal(
        ens.theta.shape)
    r = math.exp(-minutes / s.sensor_tau) if s.sensor_tau > 0 else 0.0
    ens.bias = r * ens.bias + math.sqrt(1 - r * r) * s.sensor_sd * rng.standard_normal((B, N))


def update(ens: Ensemble, y: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Assimilate one reading per patient ``y`` ``(B,)`` [mg/dL] (where ``mask``); EAKF.

    The predicted reading of a member is ``Gs / Vg + bias``; its ensemble is adjusted
    deterministically to the posterior mean and variance, and every updated variable moves
    by its regression on the predicted reading. Returns the innovations ``(B,)``.
    """
    B, N = ens.shape
    s = ens.settings
    if mask is None:
        mask = np.ones(B, bool)
    hx = ens.glucose() + ens.bias
    mean = hx.mean(axis=1)
    dev = hx - mean[:, None]
    var = np.maximum((dev * dev).sum(axis=1) / (N - 1), 1e-9)
    r = s.white_sd ** 2
    var_a = 1.0 / (1.0 / var + 1.0 / r)
    mean_a = var_a * (mean / var + y / r)
    alpha = np.sqrt(var_a / var)
    dy = (mean_a - mean)[:, None] + (alpha - 1.0)[:, None] * dev  # (B, N)
    dy = np.where(mask[:, None], dy, 0.0)
    # the multipliers see an inflated reading error (correlated CGM noise, see the module doc)
    rp = s.param_obs_sd ** 2
    var_p = 1.0 / (1.0 / var + 1.0 / rp)
    mean_p = var_p * (mean / var + y / rp)
    dyp = (mean_p - mean)[:, None] + (np.sqrt(var_p / var) - 1.0)[:, None] * dev
    dyp = np.where(mask[:, None], dyp, 0.0)
    z = np.concatenate([ens.x[..., list(UPDATED_STATES)], ens.theta, ens.bias[..., None],
                        ens.flux[..., None]], axis=2)  # (B, N, q)
    zd = z - z.mean(axis=1, keepdims=True)
    gain = np.einsum("bnq,bn->bq", zd, dev) / (N - 1) / var[:, None]
    ns = len(UPDATED_STATES)
    q = ens.theta.shape[2]
    z[..., :ns] += gain[:, None, :ns] * dy[..., None]
    z[..., ns:ns + q] += gain[:, None, ns:ns + q] * dyp[..., None]
    z[..., ns + q:] += gain[:, None, ns + q:] * dy[..., None]
    ens.x[..., list(UPDATED_STATES)] = np.maximum(z[..., :ns], 0.0)
    ens.x[..., GP] = np.maximum(ens.x[..., GP], 1e-3)
    ens.theta = z[..., ns:ns + q]
    ens.bias = z[..., ns + q]
    ens.flux = z[..., ns + q + 1]
    return np.where(mask, y - mean, np.nan)


def glucose_paths(ens: Ensemble, t0: float, u: np.ndarray, rng: np.random.Generator,
                  chunk: int = 5) -> np.ndarray:
    """Forecast paths ``(B, N, k + 1)`` [mg/dL] from now (column 0) over inputs ``u``
    ``(B, k, 2)``, with model error drawn every ``chunk`` minutes; ``ens`` is not changed."""
    e = ens.copy()
    B, N = ens.shape
    k = u.shape[1]
    out = np.empty((B, N, k + 1))
    out[..., 0] = e.glucose()
    for j0 in range(0, k, chunk):
        j1 = min(k, j0 + chunk)
        out[..., j0 + 1:j1 + 1] = advance(e, t0 + j0, u[:, j0:j1], rng)
    return out


def hypo_probability(paths: np.ndarray, threshold: float, horizon: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """P(glucose < threshold at some minute of ``[0, horizon]``) ``(B,)`` from paths
    ``(B, N, >= horizon + 1)``, and the median first-crossing minute of the members that
    cross (NaN where none does)."""
    below = paths[..., :horizon + 1] < threshold
    crosses = below.any(axis=2)
    first = below.argmax(axis=2).astype(float)
    prob = crosses.mean(axis=1)
    minutes = np.full(paths.shape[0], np.nan)
    for b in np.flatnonzero(crosses.any(axis=1)):
        minutes[b] = float(np.median(first[b, crosses[b]]))
    return prob, minutes


def state_names() -> list[str]:
    """Names of the 13 model states with units."""
    return [v.label for v in STATES]
