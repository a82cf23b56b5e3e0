"""Request and response bodies of the durable jobs (``/jobs``, ``/trials``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
_Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobOut(BaseModel):
    """A job's state, the same from every service worker."""

    id: str
    kind: str
    status: JobStatus
    progress: float = Field(description="0..1")
    message: str | None = None
    error: str | None = None
    attempts: int
    submitted_by: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobResultOut(BaseModel):
    """A finished job's result (its shape depends on the kind)."""

    id: str
    kind: str
    result: dict[str, Any]


class OpsJobIn(_In):
    """Replications of a hospital operations model: a shipped model or your model's YAML."""

    model: _Name | None = None
    model_yaml: Annotated[str, StringConstraints(max_length=200_000)] | None = None
    reps: int | None = Field(None, ge=2, le=10_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class OpsOptimiseJobIn(OpsJobIn):
    """The cheapest resource mix meeting a service target."""

    target: Annotated[str, StringConstraints(max_length=100)]
    vary: dict[_Name, tuple[int, int]] = Field(default_factory=dict)


class PkPopulationJobIn(_In):
    """A population PK fit (FOCE-I) of an event table."""

    model: _Name | None = None
    model_yaml: Annotated[str, StringConstraints(max_length=200_000)] | None = None
    data_csv: Annotated[str, StringConstraints(max_length=20_000_000)]
    estimate: list[_Name] | None = None
    omega: Literal["diagonal", "full"] = "diagonal"


class CardioTrialJobIn(_In):
    """A drug (or any) scenario of the cardiovascular twin over a seeded virtual population:
    every parameter in ``cv`` log-normal around the resting adult with that coefficient of
    variation (default: resistance, arterial elastance, contractility, stressed volume and
    heart period). This server's limits on subjects and seconds apply."""

    scenario: _Name = Field(description="hfref, haemorrhage, fluid-bolus, vasodilator, "
                            "inotrope, beta-blocker or diuretic")
    subjects: int = Field(ge=1, le=100_000, description="virtual subjects")
    duration: float = Field(60.0, gt=0, le=86_400, allow_inf_nan=False,
                            description="seconds compared, after the warm-up")
    warmup: float = Field(30.0, ge=0, le=86_400, allow_inf_nan=False,
                          description="seconds to steady state first")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    cv: dict[Annotated[str, StringConstraints(min_length=1, max_length=100)],
             Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] | None = Field(
        None, max_length=50, description="parameter label -> coefficient of variation")
