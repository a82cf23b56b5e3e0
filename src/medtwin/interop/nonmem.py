"""NONMEM-style event tables (read from CSV, or built from medtwin records) for PK models.

Columns (any case): ID, TIME, EVID, AMT, CMT, RATE, II, ADDL, SS, DV, MDV, optionally BLQ and
LLOQ, and any other column is a covariate. Conventions follow NONMEM and mrgsolve/mapbayr:

- EVID 0 observation, 1 dose, 2 other (e.g. a covariate change), 3 reset, 4 reset and dose;
  without EVID, a row with AMT > 0 is a dose.
- ADDL/II: ``ADDL`` more doses every ``II`` h after the record's dose (not steady-state).
- SS=1: the dose is at steady state on ``II`` and resets what came before; SS=2 adds a
  steady state without reset.
- RATE > 0: a zero-order infusion of duration AMT / RATE.
- DV "." or empty is missing; an observation with MDV=1 is not used.
- Time-varying covariates are carried backward (next observation carried backward, NOCB, as
  mrgsolve and mapbayr do); values after a subject's last given value carry forward.

Every error names the CSV line (header = line 1) and the column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.core.records import Intervention, InterventionKind, Observation
from medtwin.interop.units import convert

STANDARD = ("ID", "TIME", "EVID", "AMT", "CMT", "RATE", "II", "ADDL", "SS", "DV", "MDV", "BLQ",
            "LLOQ")
_DEFAULTS = {"AMT": 0.0, "CMT": 0, "RATE": 0.0, "II": 0.0, "ADDL": 0, "SS": 0, "MDV": 0,
             "BLQ": 0, "LLOQ": np.nan}
_LINE = "LINE"


def _where(line: int, column: str) -> str:
    return f"line {line}, column {column}"


@dataclass(frozen=True)
class EventTable:
    """A checked event table: ``records`` holds the standard columns, covariates and ``LINE``
    (the source line, for error messages)."""

    records: pd.DataFrame
    covariate_names: tuple[str, ...]

    # --- construction -------------------------------------------------------------------
    @classmethod
    def read_csv(cls, path: str | Path) -> EventTable:
        """Read a NONMEM-style CSV file (``.`` is missing)."""
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ValidationError(f"cannot read the event table: {exc}", where=str(path)) from None
        return cls.from_frame(raw)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, first_line: int = 2) -> EventTable:
        """Check a table (strings or numbers); row ``i`` is reported as line ``first_line + i``."""
        df = frame.copy()
        df.columns = [str(c).strip() for c in df.columns]
        upper = {c: c.upper() for c in df.columns if c.upper() in STANDARD}
        dup = pd.Series(list(upper.values())).duplicated()
        if dup.any():
            raise ValidationError(f"column {pd.Series(list(upper.values()))[dup].iloc[0]} appears "
                                  "twice (names are case-insensitive)", where="header")
        df = df.rename(columns=upper)
        for need in ("ID", "TIME"):
            if need not in df.columns:
                raise ValidationError(f"missing column {need}; found {list(frame.columns)}",
                                      where="header")
        if "EVID" not in df.columns and "AMT" not in df.columns:
            raise ValidationError("missing column EVID (or AMT to tell doses from "
                                  "observations)", where="header")
        if "DV" not in df.columns:
            raise ValidationError(f"missing column DV; found {list(frame.columns)}",
                                  where="header")
        lines = np.arange(len(df)) + first_line
        df.insert(0, _LINE, lines)
        covs = tuple(c for c in df.columns if c not in STANDARD and c != _LINE)
        out = pd.DataFrame({_LINE: lines, "ID": df["ID"].astype(str).str.strip().to_numpy()})
        if (out["ID"] == "").any() or (out["ID"] == ".").any():
            i = int(np.flatnonzero((out["ID"] == "") | (out["ID"] == "."))[0])
            raise ValidationError("ID is empty", where=_where(int(lines[i]), "ID"))
        for col in STANDARD[1:]:
            if col == "ID":
                continue
            if col in df.columns:
                out[col] = _numeric(df[col], col, lines)
            elif col == "EVID":
                out[col] = np.nan
            else:
                out[col] = _DEFAULTS[col]
        for col in covs:
            out[col] = _numeric(df[col], col, lines)
        if "EVID" not in df.columns:
            out["EVID"] = np.where(out["AMT"] > 0, 1, 0)
        _check(out, lines)
        out = _carry_covariates(out, covs)
        return cls(out.reset_index(drop=True), covs)

    # --- views --------------------------------------------------------------------------
    @property
    def subjects(self) -> tuple[str, ...]:
        """Subject ids in order of first appearance."""
        return tuple(pd.unique(self.records["ID"]))

    def doses(self) -> pd.DataFrame:
        """Every dose with ADDL expanded: ID, TIME, AMT, CMT, RATE, DUR, SS, II, RESET, LINE.

        ``RESET`` is True for a dose that resets the system (SS=1, EVID 4); an EVID 3 row is
        kept as a zero-amount reset.
        """
        r = self.records
        d = r[r["EVID"].isin([1, 3, 4])].copy()
        d["RESET"] = (d["EVID"] >= 3) | (d["SS"] == 1)
        d["DUR"] = np.where(d["RATE"] > 0, d["AMT"] / d["RATE"].where(d["RATE"] > 0, 1.0), 0.0)
        d.loc[d["EVID"] == 3, "AMT"] = 0.0
        rows = [d]
        extra = d[(d["ADDL"] > 0) & (d["EVID"] != 3)]
        for _, row in extra.iterrows():
            k = np.arange(1, int(row["ADDL"]) + 1)
            rep = pd.DataFrame([row] * k.size)
            rep["TIME"] = row["TIME"] + k * row["II"]
            rep["SS"] = 0
            rep["RESET"] = False
            rows.append(rep)
        out = pd.concat(rows, ignore_index=True)
        out = out.sort_values(["ID", "TIME", _LINE], kind="stable")
        cols = ["ID", "TIME", "AMT", "CMT", "RATE", "DUR", "SS", "II", "RESET", _LINE]
        return out[cols].reset_index(drop=True)

    def observations(self, *, include_missing: bool = False) -> pd.DataFrame:
        """Observation rows (EVID 0): ID, TIME, DV, CMT, MDV, BLQ, LLOQ, LINE, covariates."""
        r = self.records
        o = r[r["EVID"] == 0]
        if not include_missing:
            o = o[o["MDV"] == 0]
        return o[["ID", "TIME", "DV", "CMT", "MDV", "BLQ", "LLOQ", _LINE,
                  *self.covariate_names]].reset_index(drop=True)

    def subject_covariates(self, names: Sequence[str], *, at: str = "last") -> pd.DataFrame:
        """One row per subject: covariates at its ``last`` (or ``first``) record; a typed error
        names the subject's line and the column when one is missing."""
        r = self.records
        out = {}
        for name in names:
            if name not in r.columns:
                raise ValidationError(f"the model needs covariate {name!r} but the table has "
                                      f"no such column (columns: {list(r.columns[1:])})",
                                      where=f"column {name}")
            g = r.groupby("ID", sort=False)[name]
            vals = g.last() if at == "last" else g.first()
            bad = vals[~np.isfinite(vals.to_numpy(dtype=float))]
            if len(bad):
                sid = bad.index[0]
                line = int(r.loc[r["ID"] == sid, _LINE].iloc[0])
                raise ValidationError(f"covariate {name!r} is missing for subject {sid!r}",
                                      where=_where(line, name))
            out[name] = vals
        return pd.DataFrame(out, index=pd.Index(self.subjects, name="ID")) if out else \
            pd.DataFrame(index=pd.Index(self.subjects, name="ID"))

    def select(self, subjects: Iterable[str]) -> EventTable:
        """The table of some subjects only."""
        keep = set(map(str, subjects))
        return EventTable(self.records[self.records["ID"].isin(keep)].reset_index(drop=True),
                          self.covariate_names)

    def drop_lines(self, lines: Iterable[int]) -> EventTable:
        """The table without the records from these source lines."""
        drop = set(lines)
        return EventTable(self.records[~self.records[_LINE].isin(drop)].reset_index(drop=True),
                          self.covariate_names)


def _numeric(col: pd.Series, name: str, lines: np.ndarray) -> np.ndarray:
    s = col.astype(str).str.strip() if col.dtype == object or pd.api.types.is_string_dtype(
        col) else col
    if s.dtype == object or pd.api.types.is_string_dtype(s):
        s = s.replace({".": "", "NA": "", "nan": "", "NaN": ""})
        vals = pd.to_numeric(s.where(s != "", None), errors="coerce").to_numpy(dtype=float)
        bad = np.isnan(vals) & (s != "").to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValidationError(f"{s.iloc[i]!r} is not a number",
                                  where=_where(int(lines[i]), name))
        return vals
    return pd.to_numeric(s, errors="raise").to_numpy(dtype=float)


def _check(df: pd.DataFrame, lines: np.ndarray) -> None:
    def fail(mask: np.ndarray, column: str, message: str) -> None:
        if np.any(mask):
            i = int(np.flatnonzero(mask)[0])
            raise ValidationError(message.format(v=df[column].iloc[i]),
                                  where=_where(int(lines[i]), column))

    evid = df["EVID"].to_numpy()
    fail(~np.isfinite(df["TIME"].to_numpy()), "TIME", "TIME is missing")
    fail(df["TIME"].to_numpy() < 0, "TIME", "TIME is negative ({v})")
    fail(~np.isin(evid, [0, 1, 2, 3, 4]), "EVID", "EVID must be 0-4, got {v}")
    df.fillna({c: _DEFAULTS[c] for c in ("AMT", "RATE", "II", "ADDL", "SS", "MDV", "BLQ",
                                         "CMT")}, inplace=True)
    dose = np.isin(evid, [1, 4])
    fail(dose & ~(df["AMT"].to_numpy() > 0), "AMT", "a dose needs AMT > 0, got {v}")
    fail(df["RATE"].to_numpy() < 0, "RATE",
         "RATE {v} is not supported (only RATE = 0 or a rate > 0); give RATE = AMT / duration")
    fail(~np.isin(df["SS"].to_numpy(), [0, 1, 2]), "SS", "SS must be 0, 1 or 2, got {v}")
    addl = df["ADDL"].to_numpy()
    fail((addl < 0) | (addl != np.round(addl)), "ADDL", "ADDL must be a whole number >= 0, got {v}")
    need_ii = dose & ((addl > 0) | (df["SS"].to_numpy() > 0))
    fail(need_ii & ~(df["II"].to_numpy() > 0), "II", "II must be > 0 with ADDL or SS, got {v}")
    dur = np.where(df["RATE"] > 0, df["AMT"] / df["RATE"].where(df["RATE"] > 0, 1.0), 0.0)
    fail(dose & (df["SS"].to_numpy() > 0) & (dur > df["II"].to_numpy()), "RATE",
         "a steady-state infusion must end within II (AMT / RATE > II)")
    obs = (evid == 0) & (df["MDV"].to_numpy() == 0)
    dv = df["DV"].to_numpy()
    fail(obs & ~np.isfinite(dv) & (df["BLQ"].to_numpy() == 0), "DV",
         "an observation (EVID 0, MDV 0) needs a DV; set MDV=1 to skip it")
    fail(obs & (dv < 0), "DV", "concentration DV is negative ({v})")
    for sid, g in df.groupby("ID", sort=False):
        t = g["TIME"].to_numpy()
        if np.any(np.diff(t) < 0):
            i = int(np.flatnonzero(np.diff(t) < 0)[0]) + 1
            raise ValidationError(f"TIME goes back ({t[i - 1]} -> {t[i]}) within subject "
                                  f"{sid!r}; sort the records by ID and TIME",
                                  where=_where(int(g[_LINE].iloc[i]), "TIME"))


def _carry_covariates(df: pd.DataFrame, covs: Sequence[str]) -> pd.DataFrame:
    """NOCB within each subject, then LOCF for values after the last given one."""
    if not covs:
        return df
    g = df.groupby("ID", sort=False)[list(covs)]
    df[list(covs)] = g.bfill()
    df[list(covs)] = df.groupby("ID", sort=False)[list(covs)].ffill()
    return df


# --- from medtwin records (FHIR MedicationAdministration / Observation) ----------------------
def events_from_records(
    interventions: Iterable[Intervention],
    observations: Iterable[Observation],
    *,
    codes: Sequence[str],
    origin: datetime | None = None,
    amount_unit: str = "mg",
    concentration_unit: str = "mg/L",
    dose_cmt: int = 1,
    observation_cmt: int = 1,
    covariates: pd.DataFrame | None = None,
) -> EventTable:
    """Turn drug doses/infusions and drug-level observations (``codes``, e.g. LOINC 4092-3)
    into an event table: times in hours since ``origin`` (default: the earliest record),
    amounts and levels converted by unit name. ``covariates`` (index: subject) adds columns.
    """
    doses = [i for i in interventions
             if i.kind in (InterventionKind.DRUG_DOSE, InterventionKind.INFUSION)]
    levels = [o for o in observations if o.code in set(codes) and o.value is not None]
    if not doses and not levels:
        raise ValidationError(f"no drug doses and no observations with codes {list(codes)}",
                              where="records")
    t0 = origin or min(r.time for r in [*doses, *levels])
    rows = []
    for i in doses:
        amt = convert(i.amount, i.unit, amount_unit)
        dur = i.duration.total_seconds() / 3600.0 if i.duration else 0.0
        rows.append({"ID": i.subject, "TIME": (i.time - t0).total_seconds() / 3600.0,
                     "EVID": 1, "AMT": amt, "CMT": dose_cmt,
                     "RATE": amt / dur if dur > 0 else 0.0, "DV": math.nan, "MDV": 1,
                     "SOURCE": i.source_id})
    for o in levels:
        rows.append({"ID": o.subject, "TIME": (o.time - t0).total_seconds() / 3600.0,
                     "EVID": 0, "AMT": 0.0, "CMT": observation_cmt, "RATE": 0.0,
                     "DV": convert(o.value, o.unit or concentration_unit, concentration_unit),
                     "MDV": 0, "SOURCE": o.source_id})
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False],
                              kind="stable")
    bad = frame["TIME"] < 0
    if bad.any():
        raise ValidationError(f"record {frame.loc[bad, 'SOURCE'].iloc[0]} is before the origin "
                              f"{t0.isoformat()}", where="records")
    frame = frame.drop(columns="SOURCE")
    if covariates is not None:
        cov = covariates.copy()
        cov.index = cov.index.map(str)
        frame = frame.join(cov, on="ID")
    return EventTable.from_frame(frame.reset_index(drop=True))
