"""Cited device parameter tables shipped in ``devices/data/``, loaded and looked up by name."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import pandas as pd

from medtwin.core.errors import NotFoundError


@cache
def _read(filename: str) -> pd.DataFrame:
    with (files("medtwin.devices") / "data" / filename).open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh, comment="#").set_index("name")


def device_table(filename: str) -> pd.DataFrame:
    """The table ``devices/data/<filename>`` indexed by device name (a copy)."""
    return _read(filename).copy()


def device_row(filename: str, name: str, kind: str) -> pd.Series:
    """The parameter row of device ``name``; :class:`NotFoundError` lists the known names."""
    table = _read(filename)
    matches = [known for known in table.index if known.lower() == str(name).lower()]
    if not matches:
        raise NotFoundError(
            f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table.index))}"
        )
    return table.loc[matches[0]].copy()
