"""Typed errors for hospital-operations model files: each names the file, key path, line and fix."""

from __future__ import annotations

from medtwin.core.errors import NotFoundError, ValidationError


class ModelFileError(ValidationError):
    """A model file (YAML) breaks a rule; raised while loading, before anything runs.

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


class ModelNotFoundError(NotFoundError):
    """A model name or path that is neither a shipped example nor an existing file."""
