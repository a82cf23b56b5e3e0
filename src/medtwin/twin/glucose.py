"""The glucose twin: the UVA/Padova model, a posterior over its state and insulin sensitivity,
and the time it was last brought up to date.

``GlucoseTwin(prior).assimilate(observations, interventions)`` runs the ensemble filter of
:mod:`medtwin.twin.glucose_filter` through the records in time order: insulin and meal
interventions become the model's inputs on a 1-min grid, each CGM reading (LOINC 99504-3, or
blood glucose 2339-0, in any glucose unit) updates the ensemble. With one subject as the prior
(the usual case), insulin sensitivity (Vmx) is learned by the filter's likelihood bank under
the published CGM error model (see :mod:`medtwin.twin.glucose_bank`); with a population prior,
by the ensemble's regression. ``forecast`` propagates the
ensemble with the known and planned inputs; ``hypo_risk`` gives the probability of glucose
below a threshold within a horizon. ``snapshot()`` is a JSON-ready dict from which
``GlucoseTwin.from_snapshot`` rebuilds a twin that continues bit for bit.

Records older than the twin's time cannot be assimilated without rewinding: a late reading is
skipped, a late intervention is applied from the twin's time on; both are listed in ``flags_``
(and logged), never silently dropped or silently shifted.

Basal insulin: with ``basal="steady-state"`` (default) every member receives its own basal
steady-state rate (``u2ss * BW / 6000`` U/min: basal titrated to the patient), and recorded
insulin comes on top; give ``basal=0.0`` when the records carry every unit delivered (a pump
log), or a rate in U/h.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from medtwin.core import codes
from medtwin.core.cohort import Cohort
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.records import Intervention, Observation, utc
from medtwin.interop.codes import to_canonical
from medtwin.models.glucose.constants import HYPO_THRESHOLD, INSULIN_PMOL_PER_UNIT
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.twin import glucose_bank as gb
from medtwin.twin import glucose_filter as gf
from medtwin.twin.glucose_inputs import INSULIN, InputPlan, grid_step, piece_of

log = logging.getLogger(__name__)

#: LOINC codes the twin assimilates: interstitial (CGM) and blood glucose
GLUCOSE_CODES = (codes.CGM_GLUCOSE, codes.GLUCOSE_BLOOD)
MODEL_NAME = gf.MODEL.name
MODEL_VERSION = f"{gf.MODEL.version}+enkf-2"  # with the likelihood bank
MODEL_VERSION_NO_BANK = f"{gf.MODEL.version}+enkf-1"  # the ensemble alone (old snapshots)
SNAPSHOT_FORMAT = 1

Prior = str | Cohort | Mapping[str, float] | None


def prior_parameters(prior: Prior) -> tuple[np.ndarray, list[str]]:
    """Parameter rows ``(S, n_par)`` and names of the prior: a subject name or pattern
    (``"adult#001"``, ``"adult#*"``), a Cohort, one parameter set by label, or ``None`` (the
    30 UVA/Padova subjects)."""
    if prior is None or isinstance(prior, str):
        cohort = uva_padova_cohort(prior)
    elif isinstance(prior, Cohort):
        cohort = prior
    elif isinstance(prior, Mapping):
        cohort = Cohort(pd.DataFrame([dict(prior)], index=["prior"]))
    else:
        raise ValidationError(f"expected a subject name, a Cohort, a parameter mapping or None, "
                              f"got {type(prior).__name__}", where="prior")
    return cohort.parameters(gf.MODEL), list(cohort.ids)


class GlucoseTwin:
    """A patient's glucose twin kept in step by an ensemble Kalman filter (see the module doc).

    Fitted attributes (after the first reading): ``time_`` (aware UTC datetime),
    ``state_mean_`` (Series of the 13 states), ``state_cov_`` (DataFrame), ``glucose_``
    (filtered sensor glucose [mg/dL]), ``glucose_sd_``, ``insulin_sensitivity_`` (posterior mean
    Vmx [mg/kg/min per pmol/L], from the bank when there is one), ``insulin_sensitivity_sd_``,
    ``sensitivity_multiplier_`` (relative to the prior), ``n_readings_``, ``flags_`` (late or
    refused records of the last call), ``innovations_``.
    """

    def __init__(self, prior: Prior = None, *, settings: gf.FilterSettings | None = None,
                 basal: float | str = "steady-state") -> None:
        self.prior = prior
        self.settings = settings
        self.basal = basal

    # --- set-up ---------------------------------------------------------------------------
    def _settings(self) -> gf.FilterSettings:
        return self.settings or gf.FilterSettings()

    def _start(self, first: datetime, glucose: float) -> None:
        s = self._settings()
        rows, names = prior_parameters(self.prior)
        rng = np.random.default_rng(np.random.SeedSequence(s.seed))
        members = np.arange(s.n_members) % len(rows) if len(rows) <= s.n_members else \
            rng.choice(len(rows), s.n_members, replace=False)
        self._rows = rows
        self._row_names = names
        self._member_row = members.astype(int)
        self._rng = rng
        self._ens = gf.new_ensemble(rows[self._member_row][None], s, np.array([glucose]), rng)
        self._bank = gb.new_bank(self._ens, 0.0)
        self._origin = first
        self._k = 0
        self._plan = InputPlan()
        self.n_readings_ = 0
        self.flags_: list[dict[str, Any]] = []
        self.innovations_: list[float] = []
        self._basal = self._basal_rates()

    def _basal_rates(self) -> np.ndarray:
        """Background insulin per member [U/min]."""
        s = self._settings()
        if self.basal == "steady-state":
            return _steady_basal(self._rows[self._member_row])
        try:
            rate = float(self.basal) / 60.0
        except (TypeError, ValueError):
            raise ValidationError(f"basal must be 'steady-state' or a rate in U/h, got "
                                  f"{self.basal!r}", where="basal") from None
        if not (math.isfinite(rate) and rate >= 0):
            raise ValidationError(f"basal must be >= 0 U/h, got {self.basal!r}", where="basal")
        return np.full(s.n_members, rate)

    @property
    def started(self) -> bool:
        """Whether the twin has assimilated its first reading."""
        return hasattr(self, "_ens")

    def _need_started(self) -> None:
        if not self.started:
            raise NotFoundError("the glucose twin has no reading yet; call assimilate() with "
                                "at least one CGM observation first")

    # --- assimilation ---------------------------------------------------------------------
    def assimilate(self, observations: Iterable[Observation] = (),
                   interventions: Iterable[Intervention] = ()) -> GlucoseTwin:
        """Bring the twin up to date with these records (any order); returns self.

        Readings older than the twin's time are skipped and interventions older than it are
        applied from the twin's time on; both are listed in ``flags_``. A reading without a
        finite positive value, of another code, or in a unit that is not a glucose
        concentration raises :class:`ValidationError` / :class:`UnitError` before any work.
        """
        readings = sorted((self._reading(o) for o in observations), key=lambda r: r[0])
        doses = sorted(interventions, key=lambda r: r.time)
        for d in doses:
            piece_of(d, 0)  # check units and kind before any work
        self.flags_ = []
        if not readings and not self.started:
            if doses:
                self._flag_all(doses, "no reading yet: the twin starts at its first reading")
            return self
        if not self.started:
            t0, g0, _ = readings[0]
            self._start(t0, g0)
            self.flags_ = []
        for d in doses:
            k = grid_step(d.time, self._origin)
            if k < self._k:
                self._flag(d, f"intervention at {d.time.isoformat()} is older than the twin "
                              f"({self.time_.isoformat()}); applied from the twin's time on")
                k = self._k
            self._plan.add(piece_of(d, k))
        for t, g, rec in readings:
            k = grid_step(t, self._origin)
            if k < self._k:
                self._flag(rec, f"reading at {t.isoformat()} is older than the twin "
                                f"({self.time_.isoformat()}); not assimilated")
                continue
            self._advance_to(k)
            innovation = gb.assimilate(self._ens, self._bank, np.array([g]), float(k))[0]
            self.innovations_.append(float(innovation))
            del self.innovations_[:-288]
            self.n_readings_ += 1
        self._plan.prune(self._k)
        return self

    def _reading(self, o: Observation) -> tuple[datetime, float, Observation]:
        where = f"Observation[{getattr(o, 'source_id', '?')}]"
        if getattr(o, "code", None) not in GLUCOSE_CODES:
            raise ValidationError(f"the glucose twin reads LOINC {', '.join(GLUCOSE_CODES)}, "
                                  f"not {getattr(o, 'code', None)!r}", where=where)
        v = o.value
        if v is None or isinstance(v, bool) or not math.isfinite(float(v)) or float(v) <= 0:
            raise ValidationError(f"glucose must be a finite number > 0, got {v!r}", where=where)
        if o.unit is None:
            raise ValidationError("glucose has no unit; give mg/dL or mmol/L", where=where)
        value, _ = to_canonical(o.code, float(v), o.unit, where=where)
        return utc(o.time, where=where), float(value), o

    def _flag(self, rec: Any, reason: str) -> None:
        log.warning("glucose twin: %s", reason)
        self.flags_.append({"source_id": getattr(rec, "source_id", None),
                            "time": rec.time.isoformat(), "reason": reason})

    def _flag_all(self, recs: Sequence[Any], reason: str) -> None:
        for r in recs:
            self._flag(r, reason)

    def _inputs(self, plan: InputPlan, k0: int, k1: int) -> np.ndarray:
        """Inputs ``(1, k, 2)`` of the ensemble over steps ``k0 .. k1-1`` (basal not added)."""
        return plan.render(k0, k1)[None]

    def _advance_to(self, k: int) -> None:
        """Propagate the ensemble to grid step ``k`` with model error, in 5-min chunks."""
        while self._k < k:
            k1 = min(k, self._k + 5)
            u = self._inputs(self._plan, self._k, k1)
            self._advance_with_basal(self._ens, self._k, u, self._rng, self._bank)
            self._k = k1

    def _advance_with_basal(self, ens: gf.Ensemble, k0: int, u: np.ndarray,
                            rng: np.random.Generator | None,
                            bank: gb.Bank | None = None) -> np.ndarray:
        if np.ptp(self._basal) == 0.0:
            uu = u.copy()
            uu[..., INSULIN] += self._basal[0]
        else:  # each member its own basal: a population prior (which has no bank)
            uu = np.repeat(u[:, None], self._basal.size, axis=1)
            uu[..., INSULIN] += self._basal[None, :, None]
        return gf.advance(ens, float(k0), uu, rng, bank)

    # --- fitted attributes ----------------------------------------------------------------
    @property
    def time_(self) -> datetime:
        """The time the twin was last brought up to (its last assimilated reading)."""
        self._need_started()
        return self._origin + timedelta(minutes=self._k)

    @property
    def glucose_(self) -> float:
        """Filtered sensor glucose now (posterior mean) [mg/dL]."""
        self._need_started()
        return float(self._ens.glucose()[0].mean())

    @property
    def glucose_sd_(self) -> float:
        """Posterior sd of sensor glucose now [mg/dL]."""
        self._need_started()
        return float(self._ens.glucose()[0].std(ddof=1))

    def _vmx(self) -> np.ndarray:
        j = self._settings().adapt.index("Vmx") if "Vmx" in self._settings().adapt else None
        base = self._ens.base[0, :, gf._P["Vmx"]]
        return base * (np.exp(self._ens.theta[0, :, j]) if j is not None else 1.0)

    def _banked(self, name: str) -> tuple[float, float] | None:
        """The bank's posterior mean and sd of ``name``'s multiplier, if the bank learns it."""
        if self._bank is None or self._settings().bank != name:
            return None
        m, sd = self._bank.multiplier_moments()
        return float(m[0]), float(sd[0])

    @property
    def insulin_sensitivity_(self) -> float:
        """Posterior mean of Vmx [mg/kg/min per pmol/L] (insulin-dependent utilisation)."""
        self._need_started()
        banked = self._banked("Vmx")
        if banked is not None:
            return float(self._ens.base[0, 0, gf._P["Vmx"]] * banked[0])
        return float(self._vmx().mean())

    @property
    def insulin_sensitivity_sd_(self) -> float:
        """Posterior sd of Vmx."""
        self._need_started()
        banked = self._banked("Vmx")
        if banked is not None:
            return float(self._ens.base[0, 0, gf._P["Vmx"]] * banked[1])
        return float(self._vmx().std(ddof=1))

    @property
    def sensitivity_multiplier_(self) -> dict[str, float]:
        """Posterior mean of each adapted parameter's multiplier (1 = as the prior)."""
        self._need_started()
        out = {}
        for j, n in enumerate(self._settings().adapt):
            banked = self._banked(n)
            out[n] = banked[0] if banked is not None else \
                float(np.exp(self._ens.theta[0, :, j]).mean())
        return out

    @property
    def state_mean_(self) -> pd.Series:
        """Posterior mean of the 13 model states."""
        self._need_started()
        return pd.Series(self._ens.x[0].mean(axis=0), index=gf.state_names())

    @property
    def state_cov_(self) -> pd.DataFrame:
        """Posterior covariance of the 13 model states (ensemble estimate)."""
        self._need_started()
        names = gf.state_names()
        return pd.DataFrame(np.cov(self._ens.x[0], rowvar=False), index=names, columns=names)

    # --- prediction -----------------------------------------------------------------------
    def _paths(self, horizon: int, planned: Iterable[Intervention] | None) -> np.ndarray:
        self._need_started()
        if not (isinstance(horizon, int | np.integer) and 0 < horizon <= 24 * 60):
            raise ValidationError(f"must be a whole number of minutes in 1..1440, got "
                                  f"{horizon!r}", where="horizon")
        plan = self._plan.copy()
        for d in planned or ():
            k = grid_step(d.time, self._origin)
            if k < self._k:
                raise ValidationError(f"planned intervention at {d.time.isoformat()} is before "
                                      f"the twin's time {self.time_.isoformat()}",
                                      where="planned")
            plan.add(piece_of(d, k))
        # the forecast's model error has its own stream, fixed by the twin's step: the same
        # twin gives the same forecast every time, and the filter's stream is not consumed
        rng = np.random.default_rng(np.random.SeedSequence(self._settings().seed,
                                                           spawn_key=(1, self._k)))
        e = self._ens.copy()
        out = np.empty((1, e.shape[1], horizon + 1))
        out[..., 0] = e.glucose()
        for j0 in range(0, horizon, 5):
            j1 = min(horizon, j0 + 5)
            u = plan.render(self._k + j0, self._k + j1)[None]
            out[..., j0 + 1:j1 + 1] = self._advance_with_basal(e, self._k + j0, u, rng)
        return out

    def forecast(self, horizon_min: int = 120, *, planned: Iterable[Intervention] | None = None,
                 every: int = 5) -> pd.DataFrame:
        """Predicted sensor glucose [mg/dL] over ``horizon_min`` minutes from the twin's time:
        time, minutes, mean, p05, p95 (the 90% band of the ensemble with model error), with the
        recorded future inputs plus ``planned`` what-if interventions."""
        paths = self._paths(int(horizon_min), planned)[0]
        idx = np.arange(0, paths.shape[1], max(int(every), 1))
        if idx[-1] != paths.shape[1] - 1:
            idx = np.append(idx, paths.shape[1] - 1)
        g = paths[:, idx]
        return pd.DataFrame({
            "time": [self.time_ + timedelta(minutes=int(i)) for i in idx],
            "minutes": idx.astype(float),
            "mean": g.mean(axis=0),
            "p05": np.percentile(g, 5, axis=0),
            "p95": np.percentile(g, 95, axis=0),
        })

    def hypo_risk(self, threshold: float = HYPO_THRESHOLD, horizon: int = 30, *,
                  planned: Iterable[Intervention] | None = None) -> tuple[float, float | None]:
        """P(sensor glucose < ``threshold`` mg/dL at some minute within ``horizon``) and the
        median minutes until the members that cross do so (``None`` when none does)."""
        paths = self._paths(int(horizon), planned)
        prob, minutes = gf.hypo_probability(paths, float(threshold), int(horizon))
        return float(prob[0]), (None if math.isnan(minutes[0]) else float(minutes[0]))

    @property
    def model_version_(self) -> str:
        """The filter this twin runs: with the likelihood bank (``enkf-2``), or the ensemble
        alone (``enkf-1``: a population prior, ``bank=None``, or a twin restored from a
        snapshot written before the bank existed)."""
        return MODEL_VERSION if getattr(self, "_bank", None) is not None else \
            MODEL_VERSION_NO_BANK

    # --- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue exactly: a JSON-ready dict."""
        self._need_started()
        e = self._ens
        return {
            "format": SNAPSHOT_FORMAT,
            "model": MODEL_NAME,
            "model_version": self.model_version_,
            "settings": self._settings().to_dict(),
            "basal": self.basal,
            "origin": self._origin.isoformat(),
            "step": self._k,
            "time": self.time_.isoformat(),
            "prior_rows": self._rows.tolist(),
            "prior_names": self._row_names,
            "member_row": self._member_row.tolist(),
            "x": e.x[0].tolist(), "m": e.m[0].tolist(), "theta": e.theta[0].tolist(),
            "bias": e.bias[0].tolist(), "flux": e.flux[0].tolist(),
            "bank": None if self._bank is None else self._bank.to_dict(),
            "plan": self._plan.to_list(),
            "rng": _rng_state(self._rng),
            "n_readings": self.n_readings_,
            "summary": {"glucose": self.glucose_, "glucose_sd": self.glucose_sd_,
                        "insulin_sensitivity": self.insulin_sensitivity_,
                        "insulin_sensitivity_sd": self.insulin_sensitivity_sd_},
        }

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any]) -> GlucoseTwin:
        """Rebuild a twin from :meth:`snapshot` (or a stored snapshot's payload)."""
        if snap.get("format") != SNAPSHOT_FORMAT or snap.get("model") != MODEL_NAME:
            raise ValidationError(f"not a glucose twin snapshot of format {SNAPSHOT_FORMAT} "
                                  f"(model {snap.get('model')!r}, format {snap.get('format')!r})",
                                  where="snapshot")
        s = gf.FilterSettings.from_dict(snap["settings"])
        twin = cls(None, settings=s, basal=snap["basal"])
        twin._rows = np.asarray(snap["prior_rows"], dtype=float)
        twin._row_names = list(snap["prior_names"])
        twin._member_row = np.asarray(snap["member_row"], dtype=int)
        base = twin._rows[twin._member_row][None]
        twin._ens = gf.Ensemble(base, _arr(snap["x"]), _arr(snap["m"]), _arr(snap["theta"]),
                                _arr(snap["bias"]), _arr(snap["flux"]), s, gf.RK4(s.substeps))
        bank = snap.get("bank")  # absent from snapshots of twins without a bank
        twin._bank = None if bank is None else gb.Bank.from_dict(bank, twin._ens)
        twin._origin = datetime.fromisoformat(snap["origin"])
        twin._k = int(snap["step"])
        twin._plan = InputPlan.from_list(snap["plan"])
        twin._rng = _rng_from(snap["rng"])
        twin.n_readings_ = int(snap["n_readings"])
        twin.flags_ = []
        twin.innovations_ = []
        twin._basal = twin._basal_rates()
        return twin


def _arr(v: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(v, dtype=float)[None])


def _steady_basal(p: np.ndarray) -> np.ndarray:
    """Basal steady-state insulin [U/min] of parameter rows: the rate that holds the
    subcutaneous depot at its initial (steady) state, ``Isc1_0 * (ka1 + kd) * BW / 6000``."""
    P = gf._P
    return (p[:, P["Isc1_0"]] * (p[:, P["ka1"]] + p[:, P["kd"]]) * p[:, P["BW"]]
            / INSULIN_PMOL_PER_UNIT)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    return {"bit_generator": st["bit_generator"],
            "state": {k: str(v) for k, v in st["state"].items()},
            "has_uint32": st["has_uint32"], "uinteger": str(st["uinteger"])}


def _rng_from(d: Mapping[str, Any]) -> np.random.Generator:
    bg = np.random.PCG64()
    bg.state = {"bit_generator": d["bit_generator"],
                "state": {k: int(v) for k, v in d["state"].items()},
                "has_uint32": int(d["has_uint32"]), "uinteger": int(d["uinteger"])}
    return np.random.Generator(bg)
