"""Typed errors shared by every layer: each says what was wrong and how to fix it."""

from __future__ import annotations


class MedtwinError(Exception):
    """Base of every error medtwin raises on purpose."""


class ValidationError(MedtwinError, ValueError):
    """A value, record or file does not meet medtwin's rules.

    ``where`` names the place (a resource, an element path, a parameter), so a user can find it.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class UnitError(ValidationError):
    """A unit is unknown, or cannot be converted to the unit a code needs."""


class NotFoundError(MedtwinError, LookupError):
    """A named thing (patient, subject, model, controller) does not exist."""


class StoreError(MedtwinError):
    """The store could not be reached or refused a write; nothing was half-written."""


class ConflictError(MedtwinError):
    """A write would change a stored record its writer may not change (records are
    append-only: only an allowed writer adds a version); nothing was written."""


class SimulationError(MedtwinError):
    """A simulation could not proceed (bad input found at a step, a controller misbehaved)."""


class GoneError(NotFoundError):
    """The named thing existed and was deleted (a FHIR resource whose current version is a
    delete): reads say gone (HTTP 410), its history keeps every version."""


class PreconditionFailedError(ConflictError):
    """A conditional write's precondition does not hold (a stale ``If-Match`` version, or a
    conditional create matching several resources): nothing was written (HTTP 412)."""


class ModelFileError(ValidationError):
    """A file a user writes (YAML model, scenario, PK model) breaks a rule; raised while
    loading, before anything runs.

    ``file``, ``key`` (dotted path such as ``activities.triage.duration.mean``), ``line``
    (1-based, when known) and ``fix`` (what to change) are kept as attributes.
    """

    def __init__(self, message: str, *, file: str = "<model>", key: str = "",
                 line: int | None = None, fix: str = "") -> None:
        self.file, self.key, self.line, self.fix = file, key, line, fix
        where = f"{file}:{line}" if line else file
        if key:
            where += f" [{key}]"
        text = f"{message}; fix: {fix}" if fix else message
        super().__init__(text, where=where)
