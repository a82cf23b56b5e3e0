"""Typed errors for hospital-operations model files: each names the file, key path, line and fix."""

from __future__ import annotations

from medtwin.core.errors import ModelFileError, NotFoundError

__all__ = ["ModelFileError", "ModelNotFoundError"]


class ModelNotFoundError(NotFoundError):
    """A model name or path that is neither a shipped example nor an existing file."""
