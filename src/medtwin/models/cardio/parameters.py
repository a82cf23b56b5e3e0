"""The cardio model's cited parameter sets, loaded by name, and cohorts built from them.

Data: ``data/smith2004.csv`` and ``data/ursino1998.csv`` (columns ``name,value,source``; the
provenance is in each file's ``# `` header and ``data/README.md``). Parameters are addressed by
their labels ``"name [unit]"``, never by position.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files

import numpy as np
import pandas as pd

from medtwin.core.cohort import Cohort
from medtwin.core.errors import ValidationError
from medtwin.models.cardio.smith_ursino import PARAMETERS

DATA_FILES = ("smith2004.csv", "ursino1998.csv")

#: parameters that must be > 0 for the model to mean anything (all others may be any finite
#: number: zero-pressure volumes, thoracic pressure, the sympathetic gain on the period ...)
_POSITIVE = {
    "E_es_lvf", "E_es_rvf", "E_es_spt", "P_0_lvf", "P_0_rvf", "P_0_spt", "P_0_pcd",
    "lambda_lvf", "lambda_rvf", "lambda_spt", "lambda_pcd", "E_ao", "E_vc", "E_pa", "E_pu",
    "R_sys", "R_pul", "R_mt", "R_av", "R_tc", "R_pv", "L_mt", "L_av", "L_tc", "L_pv",
    "A_drv", "B_drv", "C_drv", "T_ref", "V_stressed", "k_a", "f_min", "f_max", "tau_z",
    "tau_p", "k_es", "k_ev", "tau_E", "tau_R", "tau_T_s", "tau_T_v", "D_s", "D_v", "T_0",
    "E_max_lv_0", "E_max_rv_0", "R_sp_0", "R_ep_0",
}


def _read(name: str) -> pd.DataFrame:
    text = (files("medtwin.models.cardio") / "data" / name).read_text(encoding="utf-8")
    body = "".join(line for line in text.splitlines(True) if not line.startswith("# "))
    return pd.read_csv(io.StringIO(body))


@cache
def parameter_table() -> pd.DataFrame:
    """Every parameter with its value and source (index: label ``"name [unit]"``)."""
    table = pd.concat([_read(f) for f in DATA_FILES]).set_index("name")
    labels = [v.label for v in PARAMETERS]
    missing = [lab for lab in labels if lab not in table.index]
    extra = [lab for lab in table.index if lab not in labels]
    if missing or extra:  # the data files and the model must name the same things
        raise ValidationError(f"missing {missing}, unknown {extra}", where="cardio data files")
    return table.loc[labels]


def default_parameters() -> dict[str, float]:
    """The resting adult: Smith 2004's values with Ursino 1998's reflex, by label."""
    return {k: float(v) for k, v in parameter_table()["value"].items()}


def check_parameters(values: Mapping[str, float]) -> None:
    """Refuse, naming the field, a non-finite value or a non-positive one where it must be > 0,
    and a reflex gain outside [0, 1]."""
    for v in PARAMETERS:
        if v.label not in values:
            continue
        x = float(values[v.label])
        if not np.isfinite(x):
            raise ValidationError(f"is {x}; must be a finite number", where=v.label)
        if v.name in _POSITIVE and x <= 0:
            raise ValidationError(f"is {x:g} {v.unit}; must be > 0", where=v.label)
    g = values.get("baroreflex [1]")
    if g is not None and not 0.0 <= float(g) <= 1.0:
        raise ValidationError(f"is {g}; must be within [0, 1] (0: loop open)",
                              where="baroreflex [1]")


def cardio_cohort(
    n: int = 1,
    *,
    changes: Mapping[str, float] | None = None,
    ids: Sequence[str] | None = None,
) -> Cohort:
    """``n`` identical resting adults (ids ``cardio#001`` ...) with ``changes`` applied by label,
    every value checked (:func:`check_parameters`)."""
    values = default_parameters()
    for k, v in (changes or {}).items():
        if k not in values:
            raise ValidationError(f"unknown parameter; known: {', '.join(values)}", where=k)
        values[k] = float(v)
    check_parameters(values)
    names = list(ids) if ids is not None else [f"cardio#{i + 1:03d}" for i in range(n)]
    return Cohort(pd.DataFrame([values] * len(names), index=names))


def check_cohort(cohort: Cohort) -> np.ndarray:
    """The cohort's parameter matrix, each row checked like :func:`check_parameters`."""
    from medtwin.models.cardio.smith_ursino import SmithUrsino

    p = cohort.parameters(SmithUrsino())
    labels = [v.label for v in PARAMETERS]
    for i, row in enumerate(p):
        try:
            check_parameters(dict(zip(labels, row, strict=True)))
        except ValidationError as e:
            where = f"subject {cohort.ids[i]!r}, {e.where}"
            raise ValidationError(e.message, where=where) from None
    return p
