"""The PK twin: a population model personalised to a patient's drug levels (Bayesian MAP).

``PKTwin(model).fit(events)`` finds every subject's posterior mode of the random effects
(mapbayr's objective, M3 for samples below the LLOQ) and its Laplace covariance; the fitted
twin predicts concentrations, samples plausible individual parameter sets for prediction
intervals, and is what :func:`medtwin.twin.dosing.recommend_dose` works on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.estimate.map import map_estimate
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.closed_form import DoseArrays
from medtwin.models.pk.language.model import LanguageModel
from medtwin.models.pk.spec import PopulationModel, load_model
from medtwin.twin.pk_data import PKData, prepare
from medtwin.twin.pk_language import (
    LanguageData,
    check_solved,
    language_predictor,
    predict_at,
    prepare_language,
)

log = logging.getLogger(__name__)


def changing_covariates(model: PopulationModel, events: EventTable) -> list[str]:
    """The model's covariates whose value changes between a subject's records."""
    r = events.records
    names = [c for c in model.covariates if c in r.columns]
    if not names:
        return []
    for name in names:  # a typed error for an unusable value, as the closed forms give
        model.covariate_values({name: r[name].to_numpy(float)}, name, len(r))
        for p in model.parameters.values():
            for e in p.effects:
                if e.covariate == name and e.type == "categorical":
                    e.factor(r[name].to_numpy(float), where=f"parameter {p.name}")
    n = r.groupby("ID", sort=False)[names].nunique()
    return [c for c in names if (n[c] > 1).any()]


def predictor(model: PopulationModel | LanguageModel, data: PKData | LanguageData,
              typical: Mapping[str, np.ndarray] | None = None) -> Callable[[np.ndarray],
                                                                            np.ndarray]:
    """``predict(eta (S, k, q)) -> (S, k, M)`` predictions at the observation records (any
    model: closed forms or the model language)."""
    if isinstance(model, LanguageModel):
        return language_predictor(model, data)  # type: ignore[arg-type]
    tv = typical or model.typical_values(data.covariates, len(data.subjects))

    def predict(eta: np.ndarray) -> np.ndarray:
        return model.predict(model.individual(tv, eta), data.doses, data.times)

    return predict


@dataclass
class PKTwin:
    """Bayesian MAP personalisation of a population PK model (scikit-learn's contract).

    Fitted attributes: ``subjects_``, ``eta_`` ``(S, q)``, ``cov_`` ``(S, q, q)`` (Laplace),
    ``ofv_`` ``(S,)``, ``converged_``, ``typical_`` (typical parameters per subject),
    ``params_`` (individual parameters, a DataFrame), ``data_`` (the arrays used).
    """

    model: PopulationModel | LanguageModel | str | Path
    restarts: int = 10
    seed: int = 0
    max_iter: int = 100  # Newton iterations per MAP run (per reset)

    def _model(self) -> PopulationModel | LanguageModel:
        if isinstance(self.model, PopulationModel | LanguageModel):
            return self.model
        return load_model(self.model)

    def fit(self, events: EventTable) -> PKTwin:
        """Personalise to every subject of ``events``; returns self."""
        model = self._model()
        if isinstance(model, LanguageModel):
            return self._fit_language(model, events)
        varying = changing_covariates(model, events)
        if varying:
            # superposition needs constant parameters: the same model as exact linear ODEs
            log.info("covariate(s) %s change within a subject: fitting %s as ODEs",
                     varying, model.name)
            self._fit_language(model.to_language(), events)
            self.source_model_ = model
            return self
        data = prepare(model, events, for_fit=True)
        typical = model.typical_values(data.covariates, len(data.subjects))
        res = map_estimate(predictor(model, data, typical), data.observed, model.omega,
                           model.error, restarts=self.restarts, seed=self.seed,
                           max_iter=self.max_iter)
        if not res.converged.all():
            bad = [data.subjects[i] for i in np.flatnonzero(~res.converged)]
            log.warning("MAP did not converge for subject(s) %s", bad)
        self.model_ = model
        self.data_ = data
        self.events_ = events
        self.subjects_ = data.subjects
        self.typical_ = typical
        self.eta_ = res.eta
        self.cov_ = res.cov
        self.cov_expected_ = res.cov_expected
        self.ofv_ = res.ofv
        self.converged_ = res.converged
        self.eta_names_ = list(model.etas)
        ind = model.individual(typical, res.eta[:, None, :])
        self.params_ = pd.DataFrame({f"{k} [{model.parameters[k].unit}]": v[:, 0]
                                     for k, v in ind.items()},
                                    index=pd.Index(self.subjects_, name="ID"))
        return self

    def _fit_language(self, model: LanguageModel, events: EventTable) -> PKTwin:
        """MAP of a model-language model (any ODE, several observed quantities, IOV)."""
        data = prepare_language(model, events)
        omega = model.omega_all(data.n_occasions)
        check_solved(model, data, np.zeros((len(data.subjects), omega.shape[0])))
        res = map_estimate(language_predictor(model, data), data.observed, omega, model.error,
                           restarts=self.restarts, seed=self.seed, max_iter=self.max_iter)
        if not res.converged.all():
            bad = [data.subjects[i] for i in np.flatnonzero(~res.converged)]
            log.warning("MAP did not converge for subject(s) %s", bad)
        self.model_, self.data_, self.events_ = model, data, events
        self.subjects_ = data.subjects
        self.typical_ = {}
        self.eta_, self.cov_, self.cov_expected_ = res.eta, res.cov, res.cov_expected
        self.ofv_, self.converged_ = res.ofv, res.converged
        self.eta_names_ = model.eta_names(data.n_occasions)
        values = model.individual_values(res.eta, data.first_covariates)
        self.params_ = pd.DataFrame(
            {(f"{k} [{model.units[k]}]" if k in model.units else k): values[:, j]
             for j, k in enumerate(model.individual)},
            index=pd.Index(self.subjects_, name="ID"))
        return self

    # --- queries ----------------------------------------------------------------------
    def _check(self) -> None:
        if not hasattr(self, "eta_"):
            raise ValidationError("the twin is not fitted; call fit(events) first", where="twin")

    def index(self, subject: str | None) -> int:
        """Row of ``subject`` (the only one when None)."""
        self._check()
        if subject is None:
            if len(self.subjects_) != 1:
                raise ValidationError(f"the twin holds {len(self.subjects_)} subjects; name one",
                                      where="subject")
            return 0
        if str(subject) not in self.subjects_:
            raise NotFoundError(f"no subject {subject!r}; fitted: {', '.join(self.subjects_)}")
        return self.subjects_.index(str(subject))

    def individual_parameters(self, subject: str | None = None, eta: np.ndarray | None = None
                              ) -> dict[str, np.ndarray]:
        """Individual parameters ``(k,)`` of one subject for etas ``(k, q)`` (default: mode;
        a model-language model: at the subject's first record)."""
        i = self.index(subject)
        e = self.eta_[i][None] if eta is None else np.atleast_2d(eta)
        if isinstance(self.model_, LanguageModel):
            cov = np.repeat(self.data_.first_covariates[i : i + 1], len(e), axis=0)
            values = self.model_.individual_values(e, cov)
            return {k: values[:, j] for j, k in enumerate(self.model_.individual)}
        tv = {k: v[i : i + 1] for k, v in self.typical_.items()}
        return {k: v[0] for k, v in self.model_.individual(tv, e[None]).items()}

    def forecast_parameters(self, subject: str | None = None, eta: np.ndarray | None = None
                            ) -> dict[str, np.ndarray]:
        """Individual parameters ``(k,)`` to forecast with: at the subject's latest covariates
        (they carry forward), for etas ``(k, q)`` (default: the mode)."""
        if not isinstance(self.model_, LanguageModel):
            return self.individual_parameters(subject, eta)
        i = self.index(subject)
        e = self.eta_[i][None] if eta is None else np.atleast_2d(eta)
        cov = np.repeat(self.data_.last_covariates[i : i + 1], len(e), axis=0)
        values = self.model_.individual_values(e, cov)
        return {k: values[:, j] for j, k in enumerate(self.model_.individual)}

    def sample_eta(self, n: int, subject: str | None = None, seed: int = 0) -> np.ndarray:
        """``n`` seeded draws ``(n, q)`` from the Laplace posterior N(eta_, cov_)."""
        i = self.index(subject)
        cov = self.cov_[i]
        if not np.all(np.isfinite(cov)):
            raise ValidationError("the posterior covariance is not available for this subject",
                                  where=f"subject {self.subjects_[i]}")
        chol = np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-12 * np.eye(len(cov)))
        z = np.random.default_rng(seed).standard_normal((n, len(cov)))
        return self.eta_[i] + z @ chol.T

    def predict(self, times: np.ndarray, subject: str | None = None,
                doses: DoseArrays | EventTable | None = None, eta: np.ndarray | None = None,
                *, quantity: str | None = None) -> np.ndarray:
        """Concentrations ``(k, T)`` of one subject at ``times`` for etas ``(k, q)`` (default:
        the mode), with its fitted doses or ``doses`` (one subject; for a model-language
        model an event table of its records, and ``quantity`` picks the observed one)."""
        i = self.index(subject)
        if isinstance(self.model_, LanguageModel):
            table = doses if isinstance(doses, EventTable) else self.events_.select(
                [self.subjects_[i]])
            e = self.eta_[i][None] if eta is None else np.atleast_2d(eta)
            return predict_at(self.model_, table, np.asarray(times, float), e, quantity)
        params = self.individual_parameters(subject, eta)
        d = self.data_.doses.take(np.array([i])) if doses is None else doses
        t = np.atleast_2d(np.asarray(times, float))
        return self.model_.predict({k: v[None] for k, v in params.items()}, d, t)[0]

    def prediction_interval(self, times: np.ndarray, subject: str | None = None,
                            doses: DoseArrays | None = None, *, n: int = 1000,
                            level: float = 0.9, seed: int = 0) -> pd.DataFrame:
        """Median and ``level`` interval of the concentration under the posterior (no
        residual error: the uncertainty of the patient's own curve)."""
        draws = self.predict(times, subject, doses, self.sample_eta(n, subject, seed))
        lo, med, hi = np.quantile(draws, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
        return pd.DataFrame({"time": np.asarray(times, float),
                             "mode": self.predict(times, subject, doses)[0],
                             "median": med, "lower": lo, "upper": hi})

    def summary(self) -> list[dict]:
        """Per subject: etas, individual parameters, OFV and covariance, JSON-ready."""
        self._check()
        out = []
        for i, s in enumerate(self.subjects_):
            out.append({
                "ID": s,
                "eta": dict(zip(self.eta_names_, map(float, self.eta_[i]), strict=True)),
                "parameters": {k: float(v) for k, v in self.params_.iloc[i].items()},
                "ofv": float(self.ofv_[i]),
                "covariance": self.cov_[i].tolist(),
                "converged": bool(self.converged_[i]),
            })
        return out
