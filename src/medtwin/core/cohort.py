"""Cohort: a table of subjects, one row each, holding parameter vectors and covariates.

Columns are addressed by name (parameter names carry their unit, ``"kabs [1/min]"``); the
index holds the subject ids. One patient is a cohort of one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.model import Model


class Cohort:
    """An immutable table of subjects (rows) x parameters and covariates (columns)."""

    def __init__(self, table: pd.DataFrame, *, id_column: str | None = None) -> None:
        t = table.copy()
        if id_column is not None:
            if id_column not in t.columns:
                raise ValidationError(f"no column {id_column!r}", where="cohort")
            t = t.set_index(id_column)
        t.index = t.index.map(str)
        t.index.name = "subject"
        if t.index.has_duplicates:
            dup = t.index[t.index.duplicated()].unique().tolist()
            raise ValidationError(f"duplicate subject ids {dup}", where="cohort")
        if len(t) == 0:
            raise ValidationError("a cohort needs at least one subject", where="cohort")
        self._table = t
        self._ids: tuple[str, ...] = tuple(str(i) for i in t.index)

    @property
    def table(self) -> pd.DataFrame:
        """A copy of the table (index: subject id)."""
        return self._table.copy()

    @property
    def ids(self) -> tuple[str, ...]:
        """Subject ids, in row order."""
        return self._ids

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        more = " ..." if len(self) > 3 else ""
        return f"Cohort({len(self)} subjects: {', '.join(self.ids[:3])}{more})"

    def column(self, name: str) -> np.ndarray:
        """One column as floats ``(n,)``; :class:`NotFoundError` if the cohort lacks it."""
        if name not in self._table.columns:
            raise NotFoundError(f"cohort has no column {name!r}")
        return self._table[name].to_numpy(dtype=float)

    def select(self, subjects: str | Sequence[str]) -> Cohort:
        """The sub-cohort of ``subjects`` (ids, or one shell pattern such as ``"adult#*"``)."""
        if isinstance(subjects, str):
            chosen = [s for s in self.ids if fnmatch.fnmatchcase(s, subjects)]
            if not chosen:
                raise NotFoundError(
                    f"no subject matches {subjects!r}; known subjects: {', '.join(self.ids)}"
                )
        else:
            chosen = list(subjects)
            unknown = [s for s in chosen if s not in self._table.index]
            if unknown:
                raise NotFoundError(
                    f"unknown subject(s) {unknown}; known subjects: {', '.join(self.ids)}"
                )
        return Cohort(self._table.loc[chosen])

    def with_values(self, column: str, values: float | Sequence[float] | np.ndarray) -> Cohort:
        """A new cohort with ``column`` set to ``values`` (scalar or one per subject)."""
        t = self._table.copy()
        t[column] = values
        return Cohort(t)

    def parameters(self, model: Model) -> np.ndarray:
        """The parameter matrix ``(n, n_parameters)`` in the model's order, checked finite."""
        missing = [c for c in model.parameter_labels if c not in self._table.columns]
        if missing:
            raise ValidationError(
                f"cohort lacks parameter column(s) {missing} needed by model {model.name!r}",
                where="cohort",
            )
        p = self._table.loc[:, list(model.parameter_labels)].to_numpy(dtype=float)
        bad = ~np.isfinite(p)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValidationError(
                f"parameter {model.parameter_labels[j]!r} is {p[i, j]} (must be finite); "
                f"{int(bad.sum())} non-finite value(s) in all",
                where=f"subject {self.ids[i]!r}",
            )
        # a fresh, writable array: pandas (copy-on-write) hands out a read-only view of a
        # one-subject table, which a caller (a filter moving its members) must be free to change
        return np.array(p, dtype=float, order="C")

    def with_parameters(self, model: Model, values: np.ndarray | Sequence[Sequence[float]],
                        subjects: Sequence[str] | None = None) -> Cohort:
        """A new cohort with the parameter rows of ``subjects`` (default: every subject, in
        row order) replaced by ``values`` ``(len(subjects), n_parameters)`` in the model's
        order; covariates and the other subjects are kept. Values are checked finite."""
        chosen = list(self.ids if subjects is None else subjects)
        unknown = [s for s in chosen if s not in self._table.index]
        if unknown:
            raise NotFoundError(f"unknown subject(s) {unknown}; known subjects: "
                                f"{', '.join(self.ids)}")
        v = np.asarray(values, dtype=float)
        want = (len(chosen), len(model.parameter_labels))
        if v.shape != want:
            raise ValidationError(f"parameter values have shape {v.shape}, expected {want} "
                                  f"(subjects x parameters of model {model.name!r})",
                                  where="cohort.with_parameters")
        bad = ~np.isfinite(v)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValidationError(f"parameter {model.parameter_labels[j]!r} is {v[i, j]} "
                                  "(must be finite)", where=f"subject {chosen[i]!r}")
        t = self._table.copy()
        for j, label in enumerate(model.parameter_labels):
            if label not in t.columns:
                t[label] = np.nan
            t[label] = t[label].astype(float)
            t.loc[chosen, label] = v[:, j]
        return Cohort(t)

    def with_subject(self, subject: str, values: Mapping[str, float]) -> Cohort:
        """A new cohort with some columns of one subject changed (``{label: value}``), e.g. a
        filter's current estimate of that patient's parameters; unknown columns are errors."""
        if subject not in self._table.index:
            raise NotFoundError(f"unknown subject {subject!r}; known subjects: "
                                f"{', '.join(self.ids)}")
        unknown = [k for k in values if k not in self._table.columns]
        if unknown:
            raise ValidationError(f"unknown column(s) {unknown}", where=f"subject {subject!r}")
        t = self._table.copy()
        for k, v in values.items():
            x = float(v)
            if not np.isfinite(x):
                raise ValidationError(f"is {v} (must be finite)", where=f"{subject!r}: {k}")
            t[k] = t[k].astype(float)
            t.loc[subject, k] = x
        return Cohort(t)
