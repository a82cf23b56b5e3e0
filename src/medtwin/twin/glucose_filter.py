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
``N`` members; the engine sees ``B * N`` subjects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.estimate.enkf import eakf_increments, observation_moments, regression_gain
from medtwin.core.solvers import RK4, Solver, Work
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


def advance(ens: Ensemble, t0: float, u: np.ndarray, rng: np.random.Generator | None,
            bank: Bank | None = None) -> np.ndarray:
    """Propagate every member over ``k = u.shape[1]`` 1-min steps of inputs ``u`` ``(B, k, 2)``.

    With ``rng``, the model error is drawn too (meal size per member, then at the end the
    flux, the multipliers' walk and the CGM error's AR(1) step); without, the members move
    deterministically. A ``bank``'s candidates move with the members, in the same solver call
    (same inputs, no model error; the adapted parameters it does not learn at the members'
    mean). Returns the members' subcutaneous glucose path ``(B, N, k)`` [mg/dL].
    """
    B, N = ens.shape
    k = u.shape[1]
    s = ens.settings
    if k == 0:
        return np.empty((B, N, 0))
    M = N
    if bank is not None:
        c = bank.cand
        M += c.shape[1]
        if bank.params_ is None or c.theta.shape[2] > 1:
            # the adapted parameters the bank does not learn follow the members' mean
            mean = ens.theta.mean(axis=1, keepdims=True)
            j = bank.column
            c.theta[..., :j] = mean[..., :j]
            c.theta[..., j + 1:] = mean[..., j + 1:]
            bank.params_ = c.params().reshape(B, c.shape[1], -1)
    uu = np.repeat(u[:, None, :, :], M, axis=1)  # (B, M, k, 2)
    if rng is not None and s.meal_sd > 0 and np.any(u[..., 0] > 0):
        uu[:, :N, :, 0] *= np.exp(s.meal_sd * rng.standard_normal((B, N, 1)))
    if bank is None:
        p, x, m = ens.params(), ens.x.reshape(B * N, -1), ens.m.reshape(B * N, -1)
    else:
        p = np.concatenate([ens.params().reshape(B, N, -1), bank.params_], axis=1)
        p = p.reshape(B * M, -1)
        x = np.concatenate([ens.x, bank.cand.x], axis=1).reshape(B * M, -1)
        m = np.concatenate([ens.m, bank.cand.m], axis=1).reshape(B * M, -1)
    x, m = np.ascontiguousarray(x), np.ascontiguousarray(m)
    work = Work.new(B * M)
    out = ens.solver.advance(MODEL, t0, 1.0, x, np.ascontiguousarray(uu.reshape(B * M, k, 2)),
                             m, p, work)
    if work.status.any():
        raise SimulationError(f"the glucose ensemble failed to integrate at t={t0:g} min "
                              f"({int((work.status != 0).sum())} members)")
    x = x.reshape(B, M, -1)
    m = m.reshape(B, M, -1)
    if bank is not None:
        bank.cand.x, bank.cand.m = x[:, N:], m[:, N:]
        x, m = x[:, :N], m[:, :N]
    # the unexplained flux acts on plasma glucose over the interval (operator splitting)
    x[..., GP] = np.maximum(x[..., GP] + ens.flux * k, 1e-3)
    ens.x = x
    ens.m = m
    if rng is not None:
        _model_error(ens, float(k), rng)
    return out.reshape(B, M, k, -1)[:, :N, :, GS] / ens.base[..., VG][..., None]


def _model_error(ens: Ensemble, minutes: float, rng: np.random.Generator) -> None:
    s = ens.settings
    B, N = ens.shape
    a = math.exp(-minutes / s.flux_tau) if s.flux_tau > 0 else 0.0
    ens.flux = a * ens.flux + math.sqrt(1 - a * a) * s.flux_sd * rng.standard_normal((B, N))
    ens.theta += s.walk_sd_per_sqrt_h * math.sqrt(minutes / 60.0) * rng.standard_normal(
        ens.theta.shape)
    r = math.exp(-minutes / s.sensor_tau) if s.sensor_tau > 0 else 0.0
    ens.bias = r * ens.bias + math.sqrt(1 - r * r) * s.sensor_sd * rng.standard_normal((B, N))


def update(ens: Ensemble, y: np.ndarray, mask: np.ndarray | None = None,
           frozen: tuple[int, ...] = ()) -> np.ndarray:
    """Assimilate one reading per patient ``y`` ``(B,)`` [mg/dL] (where ``mask``); EAKF.

    The predicted reading of a member is ``Gs / Vg + bias``; its ensemble is adjusted
    deterministically to the posterior mean and variance, and every updated variable moves
    by its regression on the predicted reading, except the multipliers of the columns
    ``frozen`` (those a :class:`Bank` learns). Returns the innovations ``(B,)``.
    """
    B, N = ens.shape
    s = ens.settings
    if mask is None:
        mask = np.ones(B, bool)
    # the engine's ensemble adjustment filter (medtwin.core.estimate.enkf), batched over
    # patients: moments of the predicted reading, the members' moves, the regression gains
    mean, dev, var = observation_moments(ens.glucose() + ens.bias)

    def adjust(sd: float) -> np.ndarray:
        d = eakf_increments(mean, var, dev, y, sd * sd)
        return np.where(mask[:, None], d, 0.0)

    dy = adjust(s.white_sd)
    # the multipliers may see an inflated reading error (correlated CGM noise, module doc)
    dyp = dy if s.param_obs_sd == s.white_sd else adjust(s.param_obs_sd)
    ns, q = _UPDATED.size, ens.theta.shape[2]
    z = np.concatenate([ens.x[..., _UPDATED], ens.theta, ens.bias[..., None],
                        ens.flux[..., None]], axis=2)  # (B, N, q)
    gain = regression_gain(z, dev, var)
    for j in frozen:
        gain[:, ns + j] = 0.0
    if dyp is dy:
        z += gain[:, None, :] * dy[..., None]
    else:
        z[..., :ns] += gain[:, None, :ns] * dy[..., None]
        z[..., ns:ns + q] += gain[:, None, ns:ns + q] * dyp[..., None]
        z[..., ns + q:] += gain[:, None, ns + q:] * dy[..., None]
    ens.x[..., _UPDATED] = np.maximum(z[..., :ns], 0.0)
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
