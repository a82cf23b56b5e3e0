"""Fit a population PK model to an event table (FOCE-I or SAEM) and return the updated model."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medtwin.core.cluster import dask_client, dask_mapper
from medtwin.core.errors import ValidationError
from medtwin.core.estimate.focei import FOCEI
from medtwin.core.estimate.saem import SAEM
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.language.model import LanguageModel
from medtwin.models.pk.spec import PopulationModel
from medtwin.twin.pk_data import PKData, prepare

if TYPE_CHECKING:
    from distributed import Client

    from medtwin.twin.pk_population_language import LanguageFit


@dataclass(frozen=True)
class PopulationFit:
    """A fitted population model, the estimator (``estimator.se_`` etc.) and tables."""

    model: PopulationModel
    estimator: FOCEI | SAEM
    estimated: tuple[str, ...]
    subjects: tuple[str, ...]

    def fixed_effects(self) -> pd.DataFrame:
        """Typical values with standard errors (delta method from the log scale) and RSE %."""
        est = self.estimator
        rows = []
        for i, name in enumerate(self.estimated):
            v = math.exp(est.theta_[i])
            se_log = est.se_[i] if hasattr(est, "se_") else math.nan
            rows.append({"parameter": name, "unit": self.model.parameters[name].unit,
                         "estimate": v, "se": v * se_log, "rse %": 100 * se_log})
        return pd.DataFrame(rows)

    def random_effects(self) -> pd.DataFrame:
        """Omega (variances and sds) and the residual error."""
        om = self.estimator.omega_
        rows = [{"parameter": f"omega {e}", "variance": om[i, i], "sd": math.sqrt(om[i, i])}
                for i, e in enumerate(self.model.etas)]
        err = self.estimator.error_
        if err.additive_sd:
            rows.append({"parameter": "additive sd", "variance": err.additive_sd**2,
                         "sd": err.additive_sd})
        if err.proportional_sd:
            rows.append({"parameter": "proportional sd", "variance": err.proportional_sd**2,
                         "sd": err.proportional_sd})
        return pd.DataFrame(rows)

    def etas(self) -> pd.DataFrame:
        """Per-subject conditional modes (EBEs)."""
        return pd.DataFrame(self.estimator.eta_, columns=list(self.model.etas),
                            index=pd.Index(self.subjects, name="ID"))


def fit_population(
    model: PopulationModel | LanguageModel,
    table: EventTable,
    *,
    estimate: Sequence[str] | None = None,
    omega_structure: str = "diagonal",
    standard_errors: bool = True,
    workers: int = 1,
    scheduler: str | None = None,
    client: Client | None = None,
    on_batch: Callable[[int], None] | None = None,
    method: str = "focei",
    saem: SAEM | None = None,
) -> PopulationFit | LanguageFit:
    """Fit ``model``'s typical values (``estimate``: default all structural parameters
    except F and ALAG), Omega and residual error, from ``model``'s values, by FOCE-I
    (``method="focei"``) or SAEM (``"saem"``; ``saem`` sets its options, e.g. iterations
    and seed).

    Dask is used when ``workers`` > 1 (a LocalCluster), a ``scheduler`` address or a
    ``client`` is given: FOCE-I evaluates the objective points of each gradient and of the
    covariance step there, SAEM the E-step of each block of subjects; the estimates are the
    same as in-process. ``on_batch(k)`` is called before the k-th batch of FOCE-I
    evaluations or the k-th SAEM iteration (a progress signal; it may raise to stop).

    A model-language model (:class:`~medtwin.models.pk.language.model.LanguageModel`) is
    fitted by :func:`medtwin.twin.pk_population_language.fit_language_population`:
    ``estimate`` names its thetas (default all), every observed quantity gets its own
    residual error, and the result is a
    :class:`~medtwin.twin.pk_population_language.LanguageFit`."""
    if method not in ("focei", "saem"):
        raise ValidationError(f"unknown method {method!r}: 'focei' or 'saem'", where="method")
    if client is None and (workers > 1 or scheduler is not None):
        with dask_client(scheduler, n_workers=workers) as c:
            return fit_population(model, table, estimate=estimate,
                                  omega_structure=omega_structure,
                                  standard_errors=standard_errors, client=c,
                                  on_batch=on_batch, method=method, saem=saem)
    if isinstance(model, LanguageModel):
        from medtwin.twin.pk_population_language import fit_language_population

        return fit_language_population(model, table, estimate=estimate,
                                       omega_structure=omega_structure,
                                       standard_errors=standard_errors, client=client,
                                       on_batch=on_batch, method=method, saem=saem)
    names = tuple(estimate or [p for p in model.parameters if p not in ("F", "ALAG")])
    unknown = [n for n in names if n not in model.parameters]
    if unknown:
        raise ValidationError(f"unknown parameter(s) {unknown}; the model has "
                              f"{list(model.parameters)}", where="estimate")
    data = prepare(model, table, for_fit=True)
    predict = _predictor(model, data, names)
    theta0 = np.log([model.parameters[n].typical for n in names])
    if method == "saem":
        est = _fit_saem(model, data, names, theta0, omega_structure, standard_errors,
                        client, on_batch, saem)
        fitted = model.with_estimates(
            {n: math.exp(t) for n, t in zip(names, est.theta_, strict=True)}, est.omega_,
            est.error_)
        return PopulationFit(fitted, est, names, data.subjects)
    mapper = dask_mapper(client) if client is not None else None
    if on_batch is not None:
        mapper = _signalling(mapper, on_batch)
    est = FOCEI(omega_structure=omega_structure, standard_errors=standard_errors,
                mapper=mapper).fit(
        predict, data.observed, theta0, model.omega, model.error)
    fitted = model.with_estimates(
        {n: math.exp(t) for n, t in zip(names, est.theta_, strict=True)}, est.omega_,
        est.error_)
    return PopulationFit(fitted, est, names, data.subjects)


def _predictor(model: PopulationModel, data: PKData, names: tuple[str, ...]
               ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    S = len(data.subjects)

    def predict(theta: np.ndarray, eta: np.ndarray) -> np.ndarray:
        tv = model.typical_values(data.covariates, S, dict(zip(names, theta, strict=True)))
        return model.predict(model.individual(tv, eta), data.doses, data.times)

    return predict


def mu_reference(model: PopulationModel, names: Sequence[str]) -> list[int | None]:
    """For each eta, the estimated parameter it is mu-referenced to (the first of
    ``names`` carrying it), or None; SAEM updates those in closed form."""
    out: list[int | None] = []
    for eta in model.etas:
        carriers = [i for i, n in enumerate(names) if model.parameters[n].eta == eta]
        out.append(carriers[0] if carriers else None)
    return out


def saem_estimator(options: SAEM | None, omega_structure: str, standard_errors: bool,
                   client: Client | None, on_batch: Callable[[int], None] | None) -> SAEM:
    """A fresh SAEM estimator from ``options`` (a template, left untouched) with the fit's
    Omega structure, standard errors, Dask client and progress callback."""
    est = replace(options) if options is not None else SAEM()
    est.omega_structure = omega_structure
    est.standard_errors = standard_errors
    if client is not None:
        est.client = client
    if on_batch is not None:
        est.on_iteration = on_batch
    return est


def _fit_saem(model: PopulationModel, data: PKData, names: tuple[str, ...],
              theta0: np.ndarray, omega_structure: str, standard_errors: bool,
              client: Client | None, on_batch: Callable[[int], None] | None,
              options: SAEM | None) -> SAEM:
    est = saem_estimator(options, omega_structure, standard_errors, client, on_batch)
    return est.fit(_predictor(model, data, names), data.observed, theta0, model.omega,
                   model.error, mu_index=mu_reference(model, names),
                   subset=lambda rows: _predictor(model, data.take(rows), names))


def _signalling(mapper: Callable | None, on_batch: Callable[[int], None]) -> Callable:
    count = [0]

    def wrapped(est: FOCEI, points: list[np.ndarray]) -> list[float]:
        count[0] += 1
        on_batch(count[0])
        if mapper is not None:
            return mapper(est, points)
        return [est.objective_at(x) for x in points]

    return wrapped


def theoph_events(frame: pd.DataFrame, *, dose: str = "mg/kg") -> EventTable:
    """R's ``datasets::Theoph`` (Subject, Wt, Dose, Time, conc) as an event table: one oral
    dose at time 0 into the depot, in mg/kg (as nlme) or mg = Dose x Wt (as nlmixr2)."""
    rows = []
    for sid, g in frame.groupby("Subject", sort=False):
        amt = float(g["Dose"].iloc[0]) * (float(g["Wt"].iloc[0]) if dose == "mg" else 1.0)
        rows.append({"ID": sid, "TIME": 0.0, "EVID": 1, "AMT": amt, "CMT": 1, "DV": np.nan,
                     "MDV": 1, "WT": g["Wt"].iloc[0]})
        for _, r in g.iterrows():
            rows.append({"ID": sid, "TIME": float(r["Time"]), "EVID": 0, "AMT": 0.0, "CMT": 2,
                         "DV": float(r["conc"]), "MDV": 0, "WT": r["Wt"]})
    if dose not in ("mg/kg", "mg"):
        raise ValidationError("must be 'mg/kg' or 'mg'", where="dose")
    return EventTable.from_frame(pd.DataFrame(rows))
