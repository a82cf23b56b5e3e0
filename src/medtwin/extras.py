"""Optional features and the pip extra that brings each one: a missing extra is reported as
``install medtwin[X]``, never as a bare ``ModuleNotFoundError``.

``pip install medtwin`` is the engine, the models, the store and the command line;
``[server]`` the HTTP service and PostgreSQL, ``[ui]`` the dashboard, ``[plot]`` figures and
HTML reports, ``[live]`` MQTT, HL7 v2 and WFDB, ``[trials]`` Dask, ``[all]`` everything.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from medtwin.core.errors import MedtwinError

#: top-level module -> the extra that installs it (one place; pyproject.toml lists the same)
EXTRA_OF: dict[str, str] = {
    "fastapi": "server", "starlette": "server", "uvicorn": "server", "psycopg": "server",
    "jwt": "server", "argon2": "server", "zxcvbn": "server", "multipart": "server",
    "python_multipart": "server", "swagger_ui_bundle": "server", "pycountry": "server",
    "prometheus_client": "server",
    "nicegui": "ui",
    "plotly": "plot", "matplotlib": "plot",
    "paho": "live", "hl7": "live", "wfdb": "live",
    "dask": "trials", "distributed": "trials",
}


class MissingExtraError(MedtwinError, ModuleNotFoundError):
    """An optional feature was used whose extra is not installed; says which to install."""

    def __init__(self, module: str, extra: str, feature: str | None = None) -> None:
        self.module, self.extra = module, extra
        what = feature or f"this feature (module {module!r})"
        super().__init__(f"{what} needs the {extra!r} extra, which is not installed: "
                         f"pip install 'medtwin[{extra}]' (or 'medtwin[all]')", name=module)


def extra_for(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted name is looked up by its top level)."""
    if not module:
        return None
    return EXTRA_OF.get(module.split(".", 1)[0])


def require(module: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = as_missing_extra(exc, feature)
        if missing is None:
            raise
        raise missing from exc


def as_missing_extra(exc: ModuleNotFoundError, feature: str | None = None
                     ) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for ``exc`` when the missing module belongs to an
    extra (None otherwise: a genuine bug stays a traceback)."""
    extra = extra_for(exc.name)
    if extra is None:
        return None
    return MissingExtraError(exc.name.split(".", 1)[0], extra, feature)  # type: ignore[union-attr]
