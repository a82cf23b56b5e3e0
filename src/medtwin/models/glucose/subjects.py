"""The 30 UVA/Padova virtual subjects shipped with medtwin, loaded by name as a Cohort.

Data: ``data/uva_padova_subjects.csv`` (from simglucose 0.2.11, MIT; see the file's header and
``data/README.md``). Columns are named with their units and addressed by name.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache
from importlib.resources import files

import pandas as pd

from medtwin.core.cohort import Cohort
from medtwin.core.errors import NotFoundError

DATA_FILE = "uva_padova_subjects.csv"

#: covariate columns a clinic knows (used by the basal-bolus controller)
CR = "CR [g/U]"
CF = "CF [mg/dL/U]"
BW = "BW [kg]"
U2SS = "u2ss [pmol/kg/min]"
GB = "Gb [mg/dL]"


@cache
def _table() -> pd.DataFrame:
    text = (files("medtwin.models.glucose") / "data" / DATA_FILE).read_text(encoding="utf-8")
    # header lines start with "# "; subject names contain '#', so no comment= parsing
    body = "".join(line for line in text.splitlines(True) if not line.startswith("# "))
    return pd.read_csv(io.StringIO(body)).set_index("name")


def subject_names() -> list[str]:
    """Names of the 30 subjects: adolescent#001-010, adult#001-010, child#001-010."""
    return list(_table().index)


def uva_padova_cohort(subjects: str | Sequence[str] | None = None) -> Cohort:
    """The shipped subjects as a :class:`Cohort` (all, a list of names, or a shell pattern
    such as ``"adult#*"``); :class:`NotFoundError` lists the known names otherwise."""
    cohort = Cohort(_table())
    if subjects is None:
        return cohort
    try:
        return cohort.select(subjects)
    except NotFoundError as e:
        raise NotFoundError(f"UVA/Padova: {e}") from None
