"""The file schema of the common-case PK model (closed forms): strict, so a typo such as
``absorption: first_order`` is an error with its line instead of silently an IV model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medtwin.models.pk.language.schema import Omega, published_schema

_STRICT = ConfigDict(extra="forbid", strict=True)


class Structure(BaseModel):
    """Compartments and absorption."""

    model_config = _STRICT
    compartments: Literal[1, 2, 3] = 1
    absorption: Literal["first-order", "none"] = Field(
        "none", description="'first-order' (a depot, CMT 1) or 'none' (IV only).")


class Effect(BaseModel):
    """A covariate relation of one parameter."""

    model_config = _STRICT
    covariate: str
    type: Literal["power", "exponential", "linear", "categorical"]
    reference: float | None = None
    exponent: float | None = None
    levels: dict[float, float] | None = None


class Parameter(BaseModel):
    """A structural parameter: typical value, unit, eta and covariate effects."""

    model_config = _STRICT
    value: float
    unit: str = ""
    eta: str | None = None
    covariates: list[Effect] = Field(default_factory=list)


class Covariate(BaseModel):
    """A covariate with its unit and caps."""

    model_config = _STRICT
    unit: str = "1"
    min: float | None = None
    max: float | None = None


class Error(BaseModel):
    """Residual error: additive and/or proportional, or on the log scale."""

    model_config = _STRICT
    additive_sd: float | None = None
    additive_var: float | None = None
    proportional_sd: float | None = None
    proportional_var: float | None = None
    proportional_cv_percent: float | None = None
    log_scale: bool = False


class ObservationInfo(BaseModel):
    """What the observations are."""

    model_config = _STRICT
    loinc: str | None = None


class ClosedFormFile(BaseModel):
    """A 1-3 compartment population PK model (NONMEM's parameter names)."""

    model_config = _STRICT
    name: str = Field(min_length=1)
    title: str | None = None
    source: str = ""
    structure: Structure = Field(default_factory=Structure)
    units: dict[str, str] = Field(default_factory=dict)
    covariates: dict[str, Covariate | None] = Field(default_factory=dict)
    covariate_interpolation: Literal["nocb", "locf"] = Field(
        "nocb", description="Which record's covariates hold between two records when they "
        "change within a subject: the next one (NOCB, NONMEM's and mrgsolve's default) or the "
        "last one (LOCF).")
    parameters: dict[Literal["CL", "V", "Q", "V2", "Q3", "V3", "KA", "F", "ALAG"],
                     Parameter | float]
    omega: Omega
    error: Error
    lloq: float | None = Field(None, gt=0)
    observation: ObservationInfo = Field(default_factory=ObservationInfo)


def closed_form_json_schema() -> dict[str, Any]:
    """The published JSON Schema of common-case (closed-form) model files."""
    return published_schema(ClosedFormFile, "medtwin PK model (closed form)")
