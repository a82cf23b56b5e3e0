"""Request and response bodies (kept apart: what comes in is never what goes out)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from medtwin.core.records import LOINC

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,100}$")]
Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
Code = Annotated[str, StringConstraints(min_length=1, max_length=100,
                                        pattern=r"^[^\s\x00-\x1f]+$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """An RFC 9457 problem body."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[str] | None = None


# --- auth ---------------------------------------------------------------------------------
class TokenOut(BaseModel):
    """An OAuth2 token response."""

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    scope: str | None = None  # the SMART scopes granted, when the sign-in asked for some


class RefreshIn(_In):
    """A refresh token to exchange for new tokens."""

    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


# --- users, teams, keys -------------------------------------------------------------------
class UserIn(_In):
    """A new user."""

    username: Name
    role: Literal["clinician", "patient", "researcher", "admin"]
    password: Annotated[str, StringConstraints(min_length=10, max_length=1024)]
    patient_id: Id | None = None


class UserOut(BaseModel):
    """A user as the admin sees it (never the password hash)."""

    id: str
    username: str
    role: str
    patient_id: str | None
    disabled: bool


class TeamMemberIn(_In):
    """A clinician to add to a care team."""

    username: Name


class TeamPatientIn(_In):
    """A patient to add to a care team."""

    patient_id: Id


class DeviceKeyIn(_In):
    """A device to issue an API key for, bound to one patient."""

    device_id: Name
    patient_id: Id


class DeviceKeyOut(BaseModel):
    """The new key: shown once, only its hash is stored."""

    api_key: str
    device_id: str
    patient_id: str


# --- patients -----------------------------------------------------------------------------
class PatientSummary(BaseModel):
    """A patient in a list (no identifying fields)."""

    id: str
    gender: str | None
    birth_year: int | None
    events: int


class PatientOut(BaseModel):
    """A patient with identity fields (for those allowed to see them)."""

    id: str
    gender: str | None
    birth_year: int | None
    deceased: bool
    identity: dict[str, Any]


class TimelineItem(BaseModel):
    """One event of a timeline."""

    kind: str
    time: datetime | None
    code: str | None
    display: str | None
    value: float | None
    unit: str | None
    source_id: str
    quality: str | None = Field(None, description="A data-quality flag (e.g. future-dated): "
                                "the reading is kept but not used as the latest nor scored.")


class TimelineOut(BaseModel):
    """A page of a patient's events in time order (``count`` is the page's)."""

    patient_id: str
    count: int
    items: list[TimelineItem]
    next: str | None = Field(None, description="Cursor of the next page (pass as `cursor`); "
                             "absent on the last page.")


class VersionOut(BaseModel):
    """One stored version of a record."""

    version: int
    recorded_at: datetime
    quality: str | None
    time: datetime | None
    code: str | None
    value: float | None
    unit: str | None
    status: str | None
    record: dict[str, Any]


class HistoryOut(BaseModel):
    """Every version of one record, oldest first (records are append-only)."""

    patient_id: str
    source_id: str
    versions: list[VersionOut]


class ObservationIn(_In):
    """A numeric reading to store (e.g. from a device)."""

    code: Code
    time: AwareDatetime
    value: float = Field(allow_inf_nan=False)
    unit: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    system: Annotated[str, StringConstraints(min_length=1, max_length=200)] = LOINC
    display: Annotated[str, StringConstraints(max_length=200)] | None = None
    source_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-./_:]{1,150}$")] | None \
        = None


class StoredOut(BaseModel):
    """What a write stored."""

    stored: int
    duplicates: int
    patients_added: int = 0
    source_ids: list[str] = []
    quarantined: list[str] = Field([], description="Source ids stored with a data-quality "
                                   "flag (e.g. dated in the future): kept, never scored.")


# --- research -----------------------------------------------------------------------------
class ResearchPatient(BaseModel):
    """A consenting patient under a pseudonym."""

    pseudonym: str
    gender: str | None
    birth_year: int | None = Field(None, description="None when over 89 (Safe Harbor).")
    age_group: str | None = Field(None, description='"90 or older", else None.')


class ResearchRow(BaseModel):
    """One de-identified event: its year (Safe Harbor) or its shifted time (limited)."""

    year: int | None = None
    time: datetime | None = Field(None, description="Only in a limited data set (shifted).")
    kind: str
    code: str | None
    display: str | None
    value: float | None
    unit: str | None


class ResearchTimeline(BaseModel):
    """A de-identified timeline, named for its mode."""

    pseudonym: str
    mode: str = Field(description="safe-harbor or limited (a limited data set)")
    notice: str = Field(description="What the data is and the rules that come with it.")
    count: int
    items: list[ResearchRow]


# --- audit --------------------------------------------------------------------------------
class VerifyOut(BaseModel):
    """The audit chain check."""

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problems: list[str]


# --- trials -------------------------------------------------------------------------------
class TrialIn(_In):
    """An in-silico glucose trial to run in the background."""

    cohort: Literal["uva-padova"] = "uva-padova"
    subjects: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9#*?,_\- ]{1,200}$")] | None \
        = None
    controller: Annotated[str, StringConstraints(pattern=r"^[a-z0-9\-_]{1,40}$")] = "pid"
    days: float = Field(1.0, gt=0, le=365)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class TrialJobOut(BaseModel):
    """A trial job's state."""

    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    error: str | None = None
    submitted_by: str
    progress: float = Field(0.0, description="0..1")
    message: str | None = None


class TrialResultOut(BaseModel):
    """A finished trial: one outcome row per subject."""

    id: str
    meta: dict[str, Any]
    rows: list[dict[str, Any]]


class HealthOut(BaseModel):
    """Liveness and store reachability."""

    status: Literal["ok", "degraded"]
    store: Literal["ok", "unreachable"]
    version: str


class AlertOut(BaseModel):
    """An alert and its state."""

    id: int
    patient: str
    rule: str
    severity: int = Field(ge=1, le=3, description="1 advisory, 2 urgent, 3 emergency")
    message: str
    detail: dict[str, Any]
    raised_at: datetime
    data_time: datetime | None
    acknowledged_by: str | None
    resolved: bool


class ForecastPoint(BaseModel):
    """Predicted glucose at one time, with its 90% band."""

    time: datetime
    mean: float
    p05: float
    p95: float


class GlucoseTwinOut(BaseModel):
    """The glucose twin brought up to date, its forecast and its hypoglycaemia risk."""

    patient_id: str
    twin_time: datetime
    glucose: float = Field(description="filtered glucose now [mg/dL]")
    insulin_sensitivity: float = Field(description="estimated Vmx [mg/kg/min per pmol/L]")
    hypo_probability: float = Field(description="P(glucose < 70 mg/dL within 30 min)")
    minutes_to_hypo: float | None
    forecast: list[ForecastPoint]
    what_if: list[ForecastPoint] | None = None
    model: str
    model_version: str


Grams = Annotated[float, Field(gt=0, le=300, description="carbohydrate [g]")]
Units = Annotated[float, Field(gt=0, le=50, description="insulin [U]")]


class PlannedIn(_In):
    """A what-if: meals and insulin boluses to add to what is recorded, and a basal rate."""

    meals: list[tuple[AwareDatetime, Grams]] = Field(default=[], max_length=20,
                                                     description="(time, grams)")
    boluses: list[tuple[AwareDatetime, Units]] = Field(default=[], max_length=20,
                                                       description="(time, units)")
    basal: float | None = Field(default=None, ge=0, le=10, description="basal insulin rate "
                                "[U/h] from the twin's time on; absent: unchanged")
    horizon: int = Field(default=120, ge=10, le=720, description="minutes ahead")


class DoseOut(BaseModel):
    """The regimen with the highest probability of target attainment under the posterior."""

    patient_id: str
    model: str
    dose_mg: float
    interval_h: float
    infusion_h: float
    target: str
    probability: float
    median: float
    interval_90: tuple[float, float]
    parameters: dict[str, float]
    text: str


class TwinSummary(BaseModel):
    """One twin a patient has: what it is, whether it can run, what it last believed."""

    kind: Literal["glucose", "vancomycin", "cardio"]
    model: str
    ready: bool = Field(description="the patient has the data this twin needs")
    path: str = Field(description="where to ask it")
    last_version: int | None = None
    last_time: datetime | None = None
