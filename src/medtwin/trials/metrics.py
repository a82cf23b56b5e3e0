"""Per-subject glycaemic outcome metrics of an in-silico trial, from glucose traces in mg/dL.

Definitions (all computed per subject over every sample of its trace; samples are assumed equally
spaced, so a percentage of samples is a percentage of time):

- time in ranges (International Consensus on Time in Range, Battelino et al., Diabetes Care
  2019;42:1593-1603): % of samples < 54, < 70, in 70-180 (both ends included), > 180, > 250 mg/dL;
- CV% = 100 * SD / mean (population SD, ``ddof=0``);
- GMI % = 3.31 + 0.02392 * mean glucose [mg/dL] (Bergenstal et al., Diabetes Care 2018;41:2275);
- LBGI, HBGI, risk index (Kovatchev et al., Diabetes Care 1997/2006): with
  f(BG) = 1.509 * (ln(BG)^1.084 - 5.381), rl = 10 f^2 where f < 0 else 0, rh = 10 f^2 where
  f > 0 else 0; LBGI = mean(rl), HBGI = mean(rh) over all samples, risk index = LBGI + HBGI.
  simglucose's ``risk_index`` averages rl over only the samples with f < 0; for one sample (its
  per-row LBGI/HBGI/Risk columns) the two agree, over a window medtwin follows Kovatchev;
- CVGA (Magni et al., J Diabetes Sci Technol 2008;2(4):630-635): see :func:`cvga_zones`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.models.glucose.constants import (
    HYPER_THRESHOLD,
    HYPO_THRESHOLD,
    SEVERE_HYPER_THRESHOLD,
    SEVERE_HYPO_THRESHOLD,
)

#: Percentiles of a subject's trace plotted on the CVGA axes (Magni et al. 2008).
CVGA_PERCENTILES: tuple[float, float] = (2.5, 97.5)
#: CVGA x axis (minimum BG, mg/dL): values are clamped to this range, boundaries between columns.
CVGA_MIN_RANGE: tuple[float, float] = (50.0, 110.0)
CVGA_MIN_BOUNDS: tuple[float, float] = (70.0, 90.0)
#: CVGA y axis (maximum BG, mg/dL): values are clamped to this range, boundaries between rows.
CVGA_MAX_RANGE: tuple[float, float] = (110.0, 400.0)
CVGA_MAX_BOUNDS: tuple[float, float] = (180.0, 300.0)

#: The nine CVGA cells: name -> (zone letter, min-BG column 0..2 left->right, max-BG row 0..2).
#: Column 0: min BG in (90, 110]; 1: (70, 90]; 2: <= 70.  Row 0: max BG < 180; 1: [180, 300);
#: 2: >= 300.  (Boundaries as in Magni 2008 and simglucose's ``CVGA_analysis``.)
CVGA_CELLS: dict[str, tuple[str, int, int]] = {
    "A": ("A", 0, 0),
    "Lower B": ("B", 1, 0),
    "Upper B": ("B", 0, 1),
    "B": ("B", 1, 1),
    "Lower C": ("C", 2, 0),
    "Upper C": ("C", 0, 2),
    "Lower D": ("D", 2, 1),
    "Upper D": ("D", 1, 2),
    "E": ("E", 2, 2),
}
_CELL_BY_INDEX = {(col, row): name for name, (_, col, row) in CVGA_CELLS.items()}

METRIC_COLUMNS: tuple[str, ...] = (
    "mean [mg/dL]",
    "sd [mg/dL]",
    "cv [%]",
    "gmi [%]",
    "time <54 [%]",
    "time <70 [%]",
    "time 70-180 [%]",
    "time >180 [%]",
    "time >250 [%]",
    "lbgi",
    "hbgi",
    "risk index",
    "cvga min [mg/dL]",
    "cvga max [mg/dL]",
    "cvga zone",
    "cvga cell",
)


def _as_glucose(glucose: np.ndarray) -> np.ndarray:
    """Return ``glucose`` as a 2-D float array (subjects x samples), checked positive and finite."""
    g = np.asarray(glucose, dtype=float)
    if g.ndim == 1:
        g = g[None, :]
    if g.ndim != 2 or g.shape[0] == 0 or g.shape[1] == 0:
        raise ValidationError(
            f"expected a non-empty array shaped (subjects, samples), got shape {g.shape}",
            where="glucose",
        )
    if not np.all(np.isfinite(g)) or np.any(g <= 0):
        bad = np.argwhere(~np.isfinite(g) | (g <= 0))[0]
        raise ValidationError(
            f"glucose must be finite and > 0 mg/dL; subject {bad[0]}, sample {bad[1]} is "
            f"{g[tuple(bad)]!r}",
            where="glucose",
        )
    return g


def risk_function(glucose: np.ndarray) -> np.ndarray:
    """Kovatchev's symmetrised BG risk scale f(BG) = 1.509 (ln(BG)^1.084 - 5.381), BG in mg/dL."""
    g = np.asarray(glucose, dtype=float)
    return 1.509 * (np.log(g) ** 1.084 - 5.381)


def risk_components(glucose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample low and high risk rl, rh (10 f^2 on the low or the high side, 0 on the other)."""
    f = risk_function(glucose)
    r = 10.0 * f**2
    return np.where(f < 0, r, 0.0), np.where(f > 0, r, 0.0)


def risk_indices(glucose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LBGI, HBGI and risk index per subject (mean of rl, rh over all samples of each row)."""
    g = _as_glucose(glucose)
    rl, rh = risk_components(g)
    lbgi = rl.mean(axis=1)
    hbgi = rh.mean(axis=1)
    return lbgi, hbgi, lbgi + hbgi


def cvga_points(glucose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CVGA coordinates per subject: 2.5th/97.5th percentile of BG, clamped to the plot axes."""
    g = _as_glucose(glucose)
    lo, hi = np.percentile(g, CVGA_PERCENTILES, axis=1)
    return np.clip(lo, *CVGA_MIN_RANGE), np.clip(hi, *CVGA_MAX_RANGE)


def cvga_zones(bg_min: np.ndarray, bg_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CVGA zone letter (A..E) and cell name ("Lower B", "Upper D", ...) for each point.

    Column of min BG: (90, 110] -> 0, (70, 90] -> 1, <= 70 -> 2; row of max BG: < 180 -> 0,
    [180, 300) -> 1, >= 300 -> 2 (points are first clamped to the axes, min BG to [50, 110] and
    max BG to [110, 400]). A = accurate control, B = benign deviations, C = over-correction,
    D = failure to deal with glucose excursions, E = erroneous control.
    """
    lo = np.clip(np.asarray(bg_min, dtype=float), *CVGA_MIN_RANGE)
    hi = np.clip(np.asarray(bg_max, dtype=float), *CVGA_MAX_RANGE)
    col = np.where(lo > CVGA_MIN_BOUNDS[1], 0, np.where(lo > CVGA_MIN_BOUNDS[0], 1, 2))
    row = np.where(hi < CVGA_MAX_BOUNDS[0], 0, np.where(hi < CVGA_MAX_BOUNDS[1], 1, 2))
    cells = np.array([_CELL_BY_INDEX[(int(c), int(r))] for c, r in zip(col.ravel(), row.ravel(),
                                                                         strict=True)],
                     dtype=object).reshape(lo.shape)
    letters = np.array([CVGA_CELLS[c][0] for c in cells.ravel()], dtype=object).reshape(lo.shape)
    return letters, cells


def outcome_metrics(
    glucose: np.ndarray,
    sample_time: float,
    *,
    insulin: np.ndarray | None = None,
    subjects: list[str] | None = None,
) -> pd.DataFrame:
    """Outcome table, one row per subject, from glucose (subjects x samples, mg/dL).

    ``sample_time`` is the spacing of the samples in minutes. ``insulin`` (optional, U/min, same
    shape and spacing as ``glucose``) adds the total insulin delivered [U] and per day [U/day].
    ``subjects`` labels the rows (default ``"0"``, ``"1"``, ...).
    """
    g = _as_glucose(glucose)
    if not np.isfinite(sample_time) or sample_time <= 0:
        raise ValidationError(f"must be a positive number of minutes, got {sample_time!r}",
                              where="sample_time")
    n = g.shape[0]
    if subjects is None:
        subjects = [str(i) for i in range(n)]
    if len(subjects) != n:
        raise ValidationError(f"{len(subjects)} subject labels for {n} glucose rows",
                              where="subjects")
    mean = g.mean(axis=1)
    sd = g.std(axis=1)
    lbgi, hbgi, ri = risk_indices(g)
    lo, hi = cvga_points(g)
    letters, cells = cvga_zones(lo, hi)
    table = {
        "mean [mg/dL]": mean,
        "sd [mg/dL]": sd,
        "cv [%]": 100.0 * sd / mean,
        "gmi [%]": 3.31 + 0.02392 * mean,
        "time <54 [%]": 100.0 * (g < SEVERE_HYPO_THRESHOLD).mean(axis=1),
        "time <70 [%]": 100.0 * (g < HYPO_THRESHOLD).mean(axis=1),
        "time 70-180 [%]": 100.0 * ((g >= HYPO_THRESHOLD) & (g <= HYPER_THRESHOLD)).mean(axis=1),
        "time >180 [%]": 100.0 * (g > HYPER_THRESHOLD).mean(axis=1),
        "time >250 [%]": 100.0 * (g > SEVERE_HYPER_THRESHOLD).mean(axis=1),
        "lbgi": lbgi,
        "hbgi": hbgi,
        "risk index": ri,
        "cvga min [mg/dL]": lo,
        "cvga max [mg/dL]": hi,
        "cvga zone": letters,
        "cvga cell": cells,
    }
    if insulin is not None:
        u = np.asarray(insulin, dtype=float)
        if u.ndim == 1:
            u = u[None, :]
        if u.shape != g.shape:
            raise ValidationError(f"shape {u.shape} differs from glucose shape {g.shape}",
                                  where="insulin")
        if not np.all(np.isfinite(u)) or np.any(u < 0):
            raise ValidationError("insulin rates must be finite and >= 0 U/min", where="insulin")
        total = u.sum(axis=1) * sample_time
        days = g.shape[1] * sample_time / 1440.0
        table["total insulin [U]"] = total
        table["insulin per day [U/day]"] = total / days
    df = pd.DataFrame(table, index=pd.Index(subjects, name="subject"))
    return df
