"""NONMEM-style event tables (read from CSV, or built from medtwin records) for PK models.

Columns (any case): ID, TIME, EVID, AMT, CMT, RATE, II, ADDL, SS, DV, MDV, optionally the
censoring columns below, and any other column is a covariate. Conventions follow NONMEM and
mrgsolve/mapbayr:

- EVID 0 observation, 1 dose, 2 other (e.g. a covariate change), 3 reset, 4 reset and dose;
  without EVID, a row with AMT > 0 is a dose.
- ADDL/II: ``ADDL`` more doses every ``II`` h after the record's dose (not steady-state).
- SS=1: the dose is at steady state on ``II`` and resets what came before; SS=2 adds a
  steady state without reset.
- RATE > 0: a zero-order infusion of duration AMT / RATE; RATE = -1 (-2): the infusion rate
  (duration) is a model parameter, as NONMEM's R1 (D1) — for model-language models, whose
  ``dosing`` gives a compartment's ``rate`` or ``duration``.
- DV "." or empty is missing; an observation with MDV=1 is not used.
- Time-varying covariates are carried backward (next observation carried backward, NOCB, as
  mrgsolve and mapbayr do); values after a subject's last given value carry forward.

Samples below the limit of quantification (BLQ) are fitted by Beal's M3 method (the
likelihood that the concentration is below the LLOQ). These ways of writing them are
accepted; each becomes ``BLQ = 1`` with its ``LLOQ`` (and DV missing) in :attr:`records`:

- **medtwin / mapbayr**: ``BLQ`` = 1 (or ``BQL``) with an ``LLOQ`` (or ``LOQ``) column; DV is
  then not used (mapbayr writes e.g. DV = -1). With an LLOQ column and *no* flag column, a DV
  below the LLOQ is BLQ (mapbayr's rule); with a flag column, the flag decides.
- **NONMEM M3**: ``BLQ`` = 1, MDV = 0 and DV = the LLOQ (no LLOQ column), or DV = 0 / "."
  with the LLOQ in an LLOQ column or in the model's ``lloq`` (as ``$ERROR`` would hold it).
  ``BLQ`` = 1 with MDV = 1 is NONMEM's M1: the record is excluded, like any MDV = 1 row.
- **Monolix / nlmixr2**: ``CENS`` = 1 with DV = the LLOQ. ``LIMIT`` (the other bound of an
  interval) may be missing or, with an exponential (log-scale) error, <= 0, which is M3
  itself; a finite LIMIT otherwise is interval censoring and is refused with a typed error
  (write LIMIT "." to fit M3), as is ``CENS`` = -1 (above an upper limit).
- **Text in DV**: ``<0.5`` (the LLOQ is 0.5), or ``BLQ``, ``BQL``, ``BLOQ``, ``<LLOQ``,
  ``<LOQ`` with the LLOQ from an LLOQ column or the model.

Contradictions are typed errors naming the line and column: a flagged DV above its LLOQ, a
"<x" DV disagreeing with the LLOQ column, a flag that is not 0/1, both a BLQ and a CENS
column, or a BLQ sample whose LLOQ is known nowhere.

Every error names the CSV line (header = line 1) and the column.
"""

from __future__ import annotations

import math
import re
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
            "LLOQ", "LIMIT")
_DEFAULTS = {"AMT": 0.0, "CMT": 0, "RATE": 0.0, "II": 0.0, "ADDL": 0, "SS": 0, "MDV": 0,
             "BLQ": 0, "LLOQ": np.nan, "LIMIT": np.nan}
#: other spellings of the censoring columns (module docstring)
_ALIASES = {"BQL": "BLQ", "LOQ": "LLOQ", "CENS": "CENS"}
_LINE = "LINE"
#: DV text meaning "below the LLOQ": "<0.5" (the LLOQ) or a word
_BELOW_VALUE = re.compile(r"^<\s*=?\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)$")
_BELOW_WORDS = frozenset({"BLQ", "BQL", "BLOQ", "BLLOQ", "<LLOQ", "<LOQ", "<LQ", "<BLQ"})


def _where(line: int, column: str) -> str:
    return f"line {line}, column {column}"


@dataclass(frozen=True)
class EventTable:
    """A checked event table: ``records`` holds the standard columns, covariates and ``LINE``
    (the source line, for error messages); ``blq_column`` names the table's censoring flag
    column (``BLQ``, ``BQL`` or ``CENS`` as written; None without one: then a DV below a
    known LLOQ counts as BLQ)."""

    records: pd.DataFrame
    covariate_names: tuple[str, ...]
    blq_column: str | None = None

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
        upper = {c: _ALIASES.get(c.upper(), c.upper()) for c in df.columns
                 if c.upper() in STANDARD or c.upper() in _ALIASES}
        dup = pd.Series(list(upper.values())).duplicated()
        if dup.any():
            name = pd.Series(list(upper.values()))[dup].iloc[0]
            same = [c for c, u in upper.items() if u == name]
            raise ValidationError(f"column {name} appears twice ({', '.join(same)}; names are "
                                  "case-insensitive and BQL = BLQ, LOQ = LLOQ); keep one",
                                  where="header")
        if "BLQ" in upper.values() and "CENS" in upper.values():
            raise ValidationError("both a BLQ and a CENS column flag censored samples; keep one",
                                  where="header")
        flag_name = next((c for c, u in upper.items() if u in ("BLQ", "CENS")), None)
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
        covs = tuple(c for c in df.columns if c not in STANDARD and c != _LINE and c != "CENS")
        out = pd.DataFrame({_LINE: lines, "ID": df["ID"].astype(str).str.strip().to_numpy()})
        if (out["ID"] == "").any() or (out["ID"] == ".").any():
            i = int(np.flatnonzero((out["ID"] == "") | (out["ID"] == "."))[0])
            raise ValidationError("ID is empty", where=_where(int(lines[i]), "ID"))
        dv, text_flag, text_lloq = _dv_column(df["DV"], lines)
        for col in STANDARD[1:]:
            if col == "DV":
                out[col] = dv
            elif col in df.columns:
                out[col] = _numeric(df[col], col, lines)
            elif col == "EVID":
                out[col] = np.nan
            else:
                out[col] = _DEFAULTS[col]
        flag = None
        if "CENS" in df.columns:
            flag = _numeric(df["CENS"], "CENS", lines)
        elif "BLQ" in df.columns:
            flag = out["BLQ"].to_numpy(dtype=float)
        for col in covs:
            out[col] = _numeric(df[col], col, lines)
        if "EVID" not in df.columns:
            out["EVID"] = np.where(out["AMT"] > 0, 1, 0)
        _censoring(out, lines, flag, flag_name, text_flag, text_lloq)
        _check(out, lines)
        out = _carry_covariates(out, covs)
        return cls(out.reset_index(drop=True), covs, flag_name)

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
        """Observation rows (EVID 0): ID, TIME, DV, CMT, MDV, BLQ, LLOQ, LIMIT, LINE,
        covariates (DV is missing on BLQ rows)."""
        r = self.records
        o = r[r["EVID"] == 0]
        if not include_missing:
            o = o[o["MDV"] == 0]
        return o[["ID", "TIME", "DV", "CMT", "MDV", "BLQ", "LLOQ", "LIMIT", _LINE,
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
                          self.covariate_names, self.blq_column)

    def drop_lines(self, lines: Iterable[int]) -> EventTable:
        """The table without the records from these source lines."""
        drop = set(lines)
        return EventTable(self.records[~self.records[_LINE].isin(drop)].reset_index(drop=True),
                          self.covariate_names, self.blq_column)


def _numeric(col: pd.Series, name: str, lines: np.ndarray) -> np.ndarray:
    s = col.astype(str).str.strip() if col.dtype == object or pd.api.types.is_string_dtype(
        col) else col
    if s.dtype == object or pd.api.types.is_string_dtype(s):
        s = s.replace({".": "", "NA": "", "nan": "", "NaN": ""})
        vals = pd.to_numeric(s.where(s != "", None), errors="coerce").to_numpy(dtype=float)
        bad = np.isnan(vals) & (s != "").to_numpy() & s.notna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            hint = (" (write a number, '.' if missing, or a sample below the LLOQ as '<LLOQ "
                    "value>', e.g. '<0.5', or as BLQ=1 with an LLOQ column)") if name == "DV" \
                else ""
            raise ValidationError(f"{s.iloc[i]!r} is not a number{hint}",
                                  where=_where(int(lines[i]), name))
        return vals
    return pd.to_numeric(s, errors="raise").to_numpy(dtype=float)


def _dv_column(col: pd.Series, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DV as numbers, with the rows whose DV text says "below the LLOQ" ("<0.5", "BLQ"...)
    flagged and the LLOQ the text gives (NaN for a word)."""
    n = len(col)
    flag = np.zeros(n, bool)
    lloq = np.full(n, np.nan)
    if not (col.dtype == object or pd.api.types.is_string_dtype(col)):
        return _numeric(col, "DV", lines), flag, lloq
    s = col.astype(str).str.strip()
    key = s.str.upper().str.replace(" ", "", regex=False)
    for i in np.flatnonzero(key.str.startswith("<").to_numpy() | key.isin(_BELOW_WORDS)):
        if key.iloc[i] in _BELOW_WORDS:
            flag[i] = True
            continue
        m = _BELOW_VALUE.match(key.iloc[i])
        value = float(m.group(1)) if m else math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValidationError(f"{s.iloc[i]!r} is not a number nor '<LLOQ value>' with an "
                                  "LLOQ > 0 (e.g. '<0.5')", where=_where(int(lines[i]), "DV"))
        flag[i] = True
        lloq[i] = value
    return _numeric(s.where(~flag, "."), "DV", lines), flag, lloq


def _censoring(df: pd.DataFrame, lines: np.ndarray, flag: np.ndarray | None,
               flag_name: str | None, text_flag: np.ndarray, text_lloq: np.ndarray) -> None:
    """Turn the table's way of writing BLQ samples (module docstring) into ``BLQ`` 0/1, the
    ``LLOQ`` of each flagged sample (NaN: the model's) and DV missing on flagged rows."""
    def fail(mask: np.ndarray, column: str, message: str, values: np.ndarray | None = None
             ) -> None:
        if np.any(mask):
            i = int(np.flatnonzero(mask)[0])
            v = "" if values is None else f"{values[i]:g}"
            raise ValidationError(message.format(v=v), where=_where(int(lines[i]), column))

    evid = df["EVID"].to_numpy(dtype=float)
    mdv = np.nan_to_num(df["MDV"].to_numpy(dtype=float), nan=0.0)
    dv = df["DV"].to_numpy(dtype=float).copy()
    lloq = df["LLOQ"].to_numpy(dtype=float).copy()
    obs = (evid == 0) & (mdv == 0)
    given = np.zeros(len(df), bool) if flag is None else np.isfinite(flag)
    f = np.zeros(len(df)) if flag is None else np.nan_to_num(flag, nan=0.0)
    name = flag_name or "BLQ"
    if name.upper() == "CENS":
        fail(obs & (f == -1), name,
             "CENS = -1 (above an upper limit of quantification) is not supported, only "
             "samples below the LLOQ (CENS = 1, M3); drop the record or set MDV = 1")
    fail(obs & ~np.isin(f, [0, 1]), name, name + " must be 0 (quantified) or 1 (below the "
         "LLOQ), got {v}", f)
    below = (f == 1) & given
    # DV text "<0.5" / "BLQ" against the flag column
    fail(text_flag & given & (f == 0), name,
         "DV says the sample is below the LLOQ but " + name + " is 0; make them agree")
    below |= text_flag
    both = text_flag & np.isfinite(text_lloq) & np.isfinite(lloq)
    fail(both & ~np.isclose(text_lloq, lloq, rtol=1e-9, atol=0.0), "DV",
         "the LLOQ in DV ('<x') and the LLOQ column disagree; give one LLOQ")
    lloq = np.where(np.isfinite(lloq), lloq, text_lloq)
    # NONMEM M3 / Monolix: a flagged record without an LLOQ carries the LLOQ in DV
    carry = below & ~np.isfinite(lloq) & np.isfinite(dv) & (dv > 0)
    lloq[carry] = dv[carry]
    bad = obs & below & np.isfinite(lloq) & np.isfinite(dv) & (dv > lloq * (1 + 1e-9))
    fail(bad, "DV",
         "DV {v} is above the LLOQ on a record flagged below it; write DV as the LLOQ, 0 or "
         "'.' (or the flag as 0 if the sample was quantified)", dv)
    fail(obs & below & np.isfinite(lloq) & ~(lloq > 0), "LLOQ", "the LLOQ must be > 0, got {v}",
         lloq)
    if flag is None:
        # mapbayr: without a flag column, a DV below its record's LLOQ is BLQ
        below |= obs & np.isfinite(lloq) & np.isfinite(dv) & (dv < lloq)
    df["BLQ"] = below.astype(float)
    df["LLOQ"] = lloq
    df["DV"] = np.where(below, np.nan, dv)


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
    rate = df["RATE"].to_numpy()
    fail((rate < 0) & ~np.isin(rate, [-1, -2]), "RATE",
         "RATE {v} is not supported: give 0 (bolus), a rate > 0 (AMT / duration), -1 (the "
         "model's rate) or -2 (the model's duration)")
    fail(~np.isin(df["SS"].to_numpy(), [0, 1, 2]), "SS", "SS must be 0, 1 or 2, got {v}")
    addl = df["ADDL"].to_numpy()
    fail((addl < 0) | (addl != np.round(addl)), "ADDL", "ADDL must be a whole number >= 0, got {v}")
    need_ii = dose & ((addl > 0) | (df["SS"].to_numpy() > 0))
    fail(need_ii & ~(df["II"].to_numpy() > 0), "II", "II must be > 0 with ADDL or SS, got {v}")
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
