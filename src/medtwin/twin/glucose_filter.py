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

The CGM error of the shipped sensors is strongly autocorrelated and skewed (Breton & Kovatchev
2008: an AR(1) on a 15-min grid, PACF 0.7, mapped to mg/dL by a Johnson SU transform: sd
~11.6 mg/dL, a heavy upper tail). For the *states* the ensemble treats it as white with an
inflated sd (``white_sd`` = ``param_obs_sd`` = 25 mg/dL, about 11.6 mg/dL times the square root
of the correlation factor ``(1 + rho) / (1 - rho)`` of successive readings): the filtered
glucose is smooth and accurate (RMSE ~2-7 mg/dL) but lags a fast fall by 10-20 min. For
*insulin sensitivity* that Gaussian treatment is the weak point: a sustained sensor excursion
after a meal reads as a different sensitivity, and on simulated data the regression estimate
was 12-25% off after 24 h for some noise draws; even an exact 1-D least-squares fit with the
true noise covariance is (the skew, not the correlation, is what matters). Modelling the error
as an AR(1) state of the ensemble does not help either: the ensemble collapses onto a wrong
split between glucose and sensor error within hours (correlation of the multiplier with
glucose -> -1), even in a twin experiment with a perfectly specified Gaussian AR(1) error.

The one adapted parameter that regression learns poorly is learned instead by the likelihood
bank of :mod:`medtwin.twin.glucose_bank`.

Arrays are shaped ``(B, N, ...)``: ``B`` patients (one for a twin; 30 in the benchmark) times
``N`` members; the engine sees ``B * N`` subjects. The numerics are core/estimate's, generic
over models (:mod:`medtwin.core.estimate.ensemble`, :func:`~medtwin.core.estimate.enkf.
eakf_update`): this module is their configuration for UVA/Padova and a CGM (which parameters
are multiplied, the OU flux and sensor error, the walk, the per-variable reading error, the
bounds, the predicted reading ``Gs / Vg + bias``), plus the glucose-specific initial ensemble,
meal-size error and flux splitting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.enkf import eakf_update
from medtwin.core.estimate.ensemble import (
    OrnsteinUhlenbeck,
    RandomWalk,
    crossing_probability,
    multiplied,
    propagate_batch,
)
from medtwin.core.solvers import RK4, Solver
from medtwin.models.glucose.uva_padova import STATES, UVAPadova

if TYPE_CHECKING:
    from medtwin.twin.glucose_bank import Bank

MODEL = UVAPadova()
_P = {v.name: i for i, v in enumerate(MODEL.parameters)}
VG, BW = _P["Vg"], _P["BW"]
QSTO1, QSTO2, QGUT, GP, GT, GS = 0, 1, 2, 3, 4, 12
#: model states a glucose reading updates (the insulin subsystem follows the recorded insulin)
UPDATED_STATES = (QSTO1, QSTO2, QGUT, GP, GT, GS)
_UPDATED = np.array(UPDATED_STATES)
#: lower bounds of the updated states after a reading (plasma glucose stays positive)
_LOWER = np.where(_UPDATED == GP, 1e-3, 0.0)
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
    # the likelihood bank (see the module doc); None: the EnKF learns every adapted parameter
    bank: str | None = "Vmx"  # the adapted parameter the bank learns
    bank_size: int = 11  # candidates
    bank_window_h: float = 6.0  # hours between re-anchorings of the candidates
    bank_discrepancy_sd: float = 3.0  # mg/dL, stationary sd of the model discrepancy
    bank_discrepancy_tau: float = 120.0  # min, its correlation time
    bank_white_sd: float = 1.0  # mg/dL, white reading error on top of the sensor model
    # the CGM error model (Breton & Kovatchev 2008; simglucose's Dexcom/GuardianRT/Navigator
    # values): an AR(1) ``e_j = pacf (e_{j-1} + z_j)`` on a ``sensor_grid`` grid, mapped to
    # mg/dL by the Johnson SU transform ``xi + lambda sinh((e - gamma) / delta)``
    sensor_pacf: float = 0.7
    sensor_grid: float = 15.0  # min
    sensor_gamma: float = -0.5444
    sensor_lambda: float = 15.9574  # mg/dL
    sensor_delta: float = 1.6898
    sensor_xi: float = -5.47  # mg/dL
    sensor_min: float = 39.0  # mg/dL, reporting range of the CGM: a reading at a bound is
    sensor_max: float = 600.0  # mg/dL, censored (the truth may lie beyond it)

    def __post_init__(self) -> None:
        if self.n_members < 4:
            raise ValidationError("need at least 4 members", where="n_members")
        unknown = [a for a in self.adapt if a not in ADAPTABLE]
        if unknown:
            raise ValidationError(f"cannot adapt {unknown}; choose from {ADAPTABLE}",
                                  where="adapt")
        if self.bank is not None and self.bank not in self.adapt:
            raise ValidationError(f"the bank learns an adapted parameter; {self.bank!r} is not "
                                  f"in adapt {self.adapt}", where="bank")
        if self.bank_size < 5:
            raise ValidationError("need at least 5 bank candidates", where="bank_size")
        if not 0.0 < self.sensor_pacf < 1.0:
            raise ValidationError(f"must be in (0, 1), got {self.sensor_pacf}",
                                  where="sensor_pacf")
        for name, v in asdict(self).items():
            if name in ("sensor_gamma", "sensor_xi"):
                if not math.isfinite(v):
                    raise ValidationError(f"must be finite, got {v}", where=name)
            elif isinstance(v, float) and not (math.isfinite(v) and v >= 0):
                raise ValidationError(f"must be finite and >= 0, got {v}", where=name)
        if self.sensor_min >= self.sensor_max:
            raise ValidationError(f"the CGM range {self.sensor_min}..{self.sensor_max} is "
                                  "empty", where="sensor_min")
        for name in ("sensor_grid", "sensor_lambda", "sensor_delta", "bank_window_h",
                     "bank_discrepancy_tau", "bank_white_sd"):
            if getattr(self, name) <= 0:
                raise ValidationError(f"must be > 0, got {getattr(self, name)}", where=name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["adapt"] = list(self.adapt)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FilterSettings:
        """Rebuild from :meth:`to_dict`; settings stored before the bank existed (no ``bank``
        key) describe a filter without one, and are rebuilt as such."""
        return cls(**{"bank": None, **d, "adapt": tuple(d["adapt"])})

    @property
    def flux_process(self) -> OrnsteinUhlenbeck:
        """The unexplained glucose flux [mg/kg/min], an OU process in minutes."""
        return OrnsteinUhlenbeck(self.flux_sd, self.flux_tau)

    @property
    def sensor_process(self) -> OrnsteinUhlenbeck:
        """The ensemble's CGM error state [mg/dL], an OU process in minutes."""
        return OrnsteinUhlenbeck(self.sensor_sd, self.sensor_tau)

    @property
    def parameter_walk(self) -> RandomWalk:
        """The random walk of the log multipliers (sd per square root of an hour)."""
        return RandomWalk(self.walk_sd_per_sqrt_h, per=60.0)

    @property
    def sensor_variance(self) -> float:
        """Stationary variance of the sensor model's AR(1) value, ``pacf^2 / (1 - pacf^2)``."""
        return self.sensor_pacf ** 2 / (1.0 - self.sensor_pacf ** 2)


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
        return multiplied(self.base, self.theta, [_P[n] for n in self.settings.adapt])

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
    bias = s.sensor_process.draw((B, N), rng)
    g_target = np.maximum(first_reading[:, None] - bias, 20.0)
    g_target *= np.exp(s.initial_glucose_sd * rng.standard_normal((B, N)))
    f = g_target / (x[..., GP] / base[..., VG])
    for i in (GP, GT):
        x[..., i] *= f
    x[..., GS] = x[..., GP]
    theta = rng.standard_normal((B, N, len(s.adapt))) * s.prior_sd
    flux = s.flux_process.draw((B, N), rng)
    return Ensemble(base.copy(), x, m, theta, bias, flux, s, RK4(s.substeps))


def advance(ens: Ensemble, t0: float, u: np.ndarray, rng: np.random.Generator | None,
            bank: Bank | None = None) -> np.ndarray:
    """Propagate every member over ``k`` 1-min steps of inputs ``u`` ``(B, k, 2)`` (or per
    member ``(B, N, k, 2)``, e.g. each member's own basal; then without a bank).

    With ``rng``, the model error is drawn too (meal size per member, then at the end the
    flux, the multipliers' walk and the CGM error's AR(1) step); without, the members move
    deterministically. A ``bank``'s candidates move with the members, in the same solver call
    (same inputs, no model error; the adapted parameters it does not learn at the members'
    mean). Returns the members' subcutaneous glucose path ``(B, N, k)`` [mg/dL].
    """
    B, N = ens.shape
    k = u.shape[-2]
    s = ens.settings
    if u.ndim == 4 and bank is not None:
        raise ValidationError("per-member inputs cannot move a bank's candidates", where="u")
    if k == 0:
        return np.empty((B, N, 0))
    p, x, m = ens.params().reshape(B, N, -1), ens.x, ens.m
    if bank is not None:
        c = bank.cand
        if bank.params_ is None or c.theta.shape[2] > 1:
            # the adapted parameters the bank does not learn follow the members' mean
            mean = ens.theta.mean(axis=1, keepdims=True)
            j = bank.column
            c.theta[..., :j] = mean[..., :j]
            c.theta[..., j + 1:] = mean[..., j + 1:]
            bank.params_ = c.params().reshape(B, c.shape[1], -1)
        p = np.concatenate([p, bank.params_], axis=1)
        x, m = np.concatenate([x, c.x], axis=1), np.concatenate([m, c.m], axis=1)
    uu = np.repeat(u[:, None, :, :], x.shape[1], axis=1) if u.ndim == 3 else u.copy()
    if rng is not None and s.meal_sd > 0 and np.any(u[..., 0] > 0):
        uu[:, :N, :, 0] *= np.exp(s.meal_sd * rng.standard_normal((B, N, 1)))
    x, m, path = propagate_batch(MODEL, ens.solver, t0, 1.0, x, m, p, uu,
                                 what="glucose ensemble")
    if bank is not None:
        bank.cand.x, bank.cand.m = x[:, N:], m[:, N:]
    ens.x, ens.m = x[:, :N], m[:, :N]
    # the unexplained flux acts on plasma glucose over the interval (operator splitting)
    ens.x[..., GP] = np.maximum(ens.x[..., GP] + ens.flux * k, 1e-3)
    if rng is not None:
        _model_error(ens, float(k), rng)
    return path[:, :N, :, GS] / ens.base[..., VG][..., None]


def _model_error(ens: Ensemble, minutes: float, rng: np.random.Generator) -> None:
    s = ens.settings
    ens.flux = s.flux_process.step(ens.flux, minutes, rng)
    ens.theta = s.parameter_walk.step(ens.theta, minutes, rng)
    ens.bias = s.sensor_process.step(ens.bias, minutes, rng)


def update(ens: Ensemble, y: np.ndarray, mask: np.ndarray | None = None,
           frozen: tuple[int, ...] = ()) -> np.ndarray:
    """Assimilate one reading per patient ``y`` ``(B,)`` [mg/dL] (where ``mask``); EAKF.

    The predicted reading of a member is ``Gs / Vg + bias``; its ensemble is adjusted
    deterministically to the posterior mean and variance, and every updated variable moves
    by its regression on the predicted reading, except the multipliers of the columns
    ``frozen`` (those a :class:`Bank` learns). Returns the innovations ``(B,)``.
    """
    s = ens.settings
    ns, q = _UPDATED.size, ens.theta.shape[2]
    z = np.concatenate([ens.x[..., _UPDATED], ens.theta, ens.bias[..., None],
                        ens.flux[..., None]], axis=2)  # (B, N, ns + q + 2)
    # the multipliers may see an inflated reading error (correlated CGM noise, module doc)
    r = np.full(z.shape[2], s.white_sd * s.white_sd)
    r[ns:ns + q] = s.param_obs_sd * s.param_obs_sd
    lower = np.full(z.shape[2], -np.inf)
    lower[:ns] = _LOWER
    innovations = eakf_update(z, ens.glucose() + ens.bias, y, r, mask=mask,
                              frozen=[ns + j for j in frozen], lower=lower)
    ens.x[..., _UPDATED] = z[..., :ns]
    ens.theta = z[..., ns:ns + q]
    ens.bias = z[..., ns + q]
    ens.flux = z[..., ns + q + 1]
    return innovations


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


#: P(glucose < threshold at some minute of ``[0, horizon]``) ``(B,)`` from paths
#: ``(B, N, >= horizon + 1)``, and the median first-crossing minute of the members that cross
hypo_probability = crossing_probability


def state_names() -> list[str]:
    """Names of the 13 model states with units."""
    return [v.label for v in STATES]
