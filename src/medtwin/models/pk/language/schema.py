"""The file schema of the PK model language (strict: unknown keys and wrong types are errors).

A model file names its thetas (``$THETA``/``$PARAM``), covariates (with units, defaults and
caps), random effects (``omega``: a full block; ``iov``: per-occasion effects), individual
parameters as expressions (``individual``, mrgsolve's ``$MAIN``), compartments and their ODEs
(``$ODE``), per-compartment dosing properties (F, lag, modelled rate and duration) and one or
more observed quantities, each with its own residual error. :func:`model_json_schema` is the
published JSON Schema (``medtwin pk schema``) so editors can complete and check files.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

Expr = str | float | int
_STRICT = ConfigDict(extra="forbid", strict=True)


def _triple(value: Any) -> Any:
    """YAML writes a triple as a list: take it as the tuple it means."""
    return tuple(value) if isinstance(value, list) else value


class Theta(BaseModel):
    """A fixed effect (typical value)."""

    model_config = _STRICT
    value: float = Field(description="The (typical) value.")
    unit: str = Field("1", description="Unit, e.g. L/h.")
    description: str = ""


class Covariate(BaseModel):
    """A covariate read from the data (a column of the event table)."""

    model_config = _STRICT
    unit: str = Field(description="Unit the data give it in, e.g. kg.")
    default: float | None = Field(None, description="Value used when the column is absent or "
                                  "a subject has no value (otherwise that is an error).")
    min: float | None = Field(None, description="Values below are raised to this.")
    max: float | None = Field(None, description="Values above are lowered to this.")
    description: str = ""


class Omega(BaseModel):
    """Variances (and covariances) of random effects: a full ``matrix`` or ``variance`` /
    ``sd`` / ``cv_percent`` (log-normal) with optional ``correlation`` triples."""

    model_config = _STRICT
    etas: list[str] = Field(min_length=1, description="Names of the random effects.")
    matrix: list[list[float]] | None = None
    variance: list[float] | None = None
    sd: list[float] | None = None
    cv_percent: list[float] | None = None
    correlation: list[Annotated[tuple[str, str, float], BeforeValidator(_triple)]] = Field(
        default_factory=list, description="[eta, eta, correlation] triples.")


class Iov(Omega):
    """Inter-occasion variability: one draw of each of ``etas`` per occasion (NONMEM's
    ``$OMEGA BLOCK SAME``), the occasion read from the data column ``occasion``."""

    occasion: str = Field("OCC", description="Event-table column numbering the occasions "
                          "(1, 2, ...).")


class Dosing(BaseModel):
    """Dose properties of one compartment, as expressions of the individual parameters."""

    model_config = _STRICT
    F: Expr | None = Field(None, description="Bioavailability (default 1).")
    lag: Expr | None = Field(None, description="Lag time (default 0).")
    rate: Expr | None = Field(None, description="Modelled infusion rate, used by RATE = -1.")
    duration: Expr | None = Field(None, description="Modelled infusion duration, used by "
                                  "RATE = -2.")


class Error(BaseModel):
    """Residual error of one observed quantity: additive and/or proportional (combined), or
    exponential (additive on the log scale)."""

    model_config = _STRICT
    additive_sd: float | None = None
    additive_var: float | None = None
    proportional_sd: float | None = None
    proportional_var: float | None = None
    proportional_cv_percent: float | None = None
    exponential_sd: float | None = None
    exponential_var: float | None = None


class Observation(BaseModel):
    """An observed quantity: which data records carry it (their CMT), its value as an
    expression of compartment amounts and parameters, its residual error and LLOQ."""

    model_config = _STRICT
    cmt: int = Field(ge=1, description="CMT of the data records that observe it.")
    value: Expr = Field(description="Prediction, e.g. central / V.")
    error: Error
    unit: str = "mg/L"
    lloq: float | None = Field(None, gt=0, description="Limit of quantification (M3).")
    loinc: str | None = None


class Solver(BaseModel):
    """Tolerances of the ODE solver and of steady state."""

    model_config = _STRICT
    rtol: float = Field(1e-8, gt=0, lt=1)
    atol: float = Field(1e-10, gt=0)
    ss_rtol: float = Field(1e-10, gt=0, lt=1, description="Steady state is reached when the "
                           "state changes by less than this over an interval.")
    ss_max_doses: int = Field(2000, ge=2)
    force_ode: bool = Field(False, description="Integrate a linear model numerically too "
                            "(by default a model linear in its compartments is stepped "
                            "exactly by the matrix exponential).")


class ModelFile(BaseModel):
    """A PK/PD model written in medtwin's model language."""

    model_config = _STRICT
    name: str = Field(min_length=1)
    title: str = ""
    source: str = Field("", description="Citation: paper, table, or where the values come "
                        "from.")
    version: str = "1"
    units: dict[str, str] = Field(default_factory=dict)
    covariates: dict[str, Covariate] = Field(default_factory=dict)
    covariate_interpolation: Literal["nocb", "locf"] = Field(
        "nocb", description="Which record's covariates hold between two records: the next "
        "one (NOCB, NONMEM's and mrgsolve's default) or the last one (LOCF).")
    thetas: dict[str, Theta | float] = Field(default_factory=dict)
    omega: Omega | None = None
    iov: Iov | None = None
    individual: dict[str, Expr] = Field(description="Individual parameters, in order; each "
                                        "may use thetas, covariates, etas, TIME and those "
                                        "above it.")
    compartments: list[str] = Field(min_length=1, description="Compartment names; CMT n "
                                    "in the data is the n-th.")
    variables: dict[str, Expr] = Field(default_factory=dict, description="Local quantities of "
                                       "the ODEs and observations (mrgsolve's $ODE locals), in "
                                       "order: e.g. CP: central / V; each may use compartments, "
                                       "parameters, TIME and those above it.")
    odes: dict[str, Expr] = Field(description="d(amount)/dt of every compartment (infusions "
                                  "are added to it).")
    initial: dict[str, Expr] = Field(default_factory=dict, description="Initial amount of "
                                     "compartments that do not start empty (e.g. a PD "
                                     "baseline KIN / KOUT); also their value after a reset.")
    dosing: dict[str, Dosing] = Field(default_factory=dict)
    observations: dict[str, Observation] = Field(min_length=1)
    solver: Solver = Field(default_factory=Solver)


def published_schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a file schema, as editors read it."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return schema


def model_json_schema() -> dict[str, Any]:
    """The published JSON Schema of model-language files."""
    return published_schema(ModelFile, "medtwin PK model")
