"""BLQ samples as NONMEM, Monolix/nlmixr2 and mapbayr tables write them: each convention gives
the MAP objective of the canonical form (BLQ = 1 with an LLOQ column), or a typed error that
names the line and column."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import ValidationError
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import load_model, parse_model
from medtwin.twin.pk import PKTwin

HEAD = "ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,MDV,CRCL,WT,DIAL"
DOSE = "A,0,1,1000,1,1000,12,3,1,80,75,0"
PEAK = "A,37,0,0,1,0,0,0,0,80,75,0"
TROUGH = "A,47.9,0,0,1,0,0,0,0,80,75,0"
LLOQ = 10.0


def _table(text: str) -> EventTable:
    return EventTable.from_frame(pd.read_csv(io.StringIO(text), dtype=str,
                                             keep_default_na=False))


def _csv(extra_head: str, dose: str, peak: str, trough: str, trough_row: str = TROUGH) -> str:
    """The vancomycin table with ``extra_head`` columns; the trough is the BLQ sample."""
    return (f"{HEAD},{extra_head}\n{DOSE},{dose}\n{PEAK},{peak}\n{trough_row},{trough}\n")


def _fit(text: str, model=None) -> PKTwin:
    return PKTwin(model or load_model("vancomycin-goti2018")).fit(_table(text))


def _model(**changes):
    return parse_model({**load_model("vancomycin-goti2018").to_dict(), **changes})


@pytest.fixture(scope="module")
def canonical() -> PKTwin:
    """BLQ = 1 with an LLOQ column, DV missing."""
    return _fit(_csv("DV,BLQ,LLOQ", ".,0,.", "28.5,0,.", f".,1,{LLOQ:g}"))


def _same(twin: PKTwin, ref: PKTwin) -> None:
    o, r = twin.data_.observed, ref.data_.observed
    assert o.blq.tolist() == r.blq.tolist() == [[False, True]]
    assert o.lloq[0, 1] == r.lloq[0, 1] == LLOQ
    assert twin.ofv_[0] == pytest.approx(ref.ofv_[0], rel=1e-12)
    np.testing.assert_allclose(twin.eta_, ref.eta_, rtol=0, atol=1e-12)


def test_canonical_form_is_m3_and_differs_from_a_quantified_sample(canonical):
    quantified = _fit(_csv("DV", ".", "28.5", f"{LLOQ:g}"))
    assert canonical.data_.observed.blq.sum() == 1
    assert abs(canonical.ofv_[0] - quantified.ofv_[0]) > 0.1


def test_nonmem_m3_blq_flag_with_dv_as_the_lloq(canonical):
    _same(_fit(_csv("DV,BLQ", ".,0", "28.5,0", f"{LLOQ:g},1")), canonical)


def test_nonmem_bql_spelling_and_lower_case(canonical):
    _same(_fit(_csv("dv,bql,loq", ".,0,.", "28.5,0,.", f"0,1,{LLOQ:g}")), canonical)


def test_nonmem_m3_dv_zero_takes_the_model_lloq(canonical):
    text = _csv("DV,BLQ", ".,0", "28.5,0", "0,1")
    _same(_fit(text, _model(lloq=LLOQ)), canonical)
    with pytest.raises(ValidationError) as exc:  # no LLOQ anywhere
        _fit(text)
    assert exc.value.where == "line 4, column BLQ" and "LLOQ" in exc.value.message


def test_nonmem_blq_with_mdv_1_is_m1_excluded():
    """BLQ = 1 and MDV = 1: the record is left out, exactly as if it were absent."""
    m1 = _fit(_csv("DV,BLQ", ".,0", "28.5,0", f"{LLOQ:g},1",
                   trough_row=TROUGH.replace(",0,80,", ",1,80,")))
    without = _fit(f"{HEAD},DV\n{DOSE},.\n{PEAK},28.5\n")
    assert m1.data_.observed.mask.sum() == 1
    assert m1.ofv_[0] == pytest.approx(without.ofv_[0], rel=1e-12)


def test_monolix_cens_with_dv_as_the_lloq_and_missing_limit(canonical):
    _same(_fit(_csv("DV,CENS", ".,0", "28.5,0", f"{LLOQ:g},1")), canonical)
    _same(_fit(_csv("DV,CENS,LIMIT", ".,0,.", "28.5,0,.", f"{LLOQ:g},1,.")), canonical)


def test_monolix_limit_zero_is_m3_only_on_the_log_scale():
    log_error = _model(error={"log_scale": True, "additive_sd": 0.25})
    ref = _fit(_csv("DV,BLQ,LLOQ", ".,0,.", "28.5,0,.", f".,1,{LLOQ:g}"), log_error)
    _same(_fit(_csv("DV,CENS,LIMIT", ".,0,.", "28.5,0,.", f"{LLOQ:g},1,0"), log_error), ref)
    with pytest.raises(ValidationError) as exc:  # interval (0, LLOQ) under an additive error
        _fit(_csv("DV,CENS,LIMIT", ".,0,.", "28.5,0,.", f"{LLOQ:g},1,0"))
    assert exc.value.where == "line 4, column LIMIT" and "LIMIT '.'" in exc.value.message
    with pytest.raises(ValidationError) as exc:  # a positive lower bound on any scale
        _fit(_csv("DV,CENS,LIMIT", ".,0,.", "28.5,0,.", f"{LLOQ:g},1,2"), log_error)
    assert exc.value.where == "line 4, column LIMIT"


def test_monolix_right_censoring_is_refused():
    with pytest.raises(ValidationError) as exc:
        _table(_csv("DV,CENS", ".,0", "28.5,-1", "5,0"))
    assert exc.value.where == "line 3, column CENS" and "CENS = -1" in exc.value.message


def test_mapbayr_blq_and_lloq_columns_dv_not_used(canonical):
    # mapbayr's BLQ example writes DV = -1 on the BLQ record and the LLOQ on every record
    _same(_fit(_csv("DV,BLQ,LLOQ", f".,0,{LLOQ:g}", f"28.5,0,{LLOQ:g}", f"-1,1,{LLOQ:g}")),
          canonical)


def test_mapbayr_lloq_column_without_flag_makes_dv_below_it_blq(canonical):
    _same(_fit(_csv("DV,LLOQ", f".,{LLOQ:g}", f"28.5,{LLOQ:g}", f"4.2,{LLOQ:g}")), canonical)
    # with a flag column the flag decides (mapbayr): BLQ = 0 keeps 4.2 as quantified
    flagged = _fit(_csv("DV,BLQ,LLOQ", f".,0,{LLOQ:g}", f"28.5,0,{LLOQ:g}", f"4.2,0,{LLOQ:g}"))
    quantified = _fit(_csv("DV", ".", "28.5", "4.2"))
    assert flagged.data_.observed.blq.sum() == 0
    assert flagged.ofv_[0] == pytest.approx(quantified.ofv_[0], rel=1e-12)


@pytest.mark.parametrize("dv", ["<10", "< 10", "<=10", "<1e1"])
def test_dv_text_with_the_lloq(canonical, dv):
    _same(_fit(_csv("DV", ".", "28.5", dv)), canonical)


@pytest.mark.parametrize("word", ["BLQ", "bql", "<LLOQ", "BLOQ"])
def test_dv_text_word_takes_the_lloq_column_or_the_model(canonical, word):
    _same(_fit(_csv("DV,LLOQ", ".,.", "28.5,.", f"{word},{LLOQ:g}")), canonical)
    _same(_fit(_csv("DV", ".", "28.5", word), _model(lloq=LLOQ)), canonical)
    with pytest.raises(ValidationError) as exc:
        _fit(_csv("DV", ".", "28.5", word))
    assert exc.value.where == "line 4, column DV" and "'<LLOQ'" in exc.value.message


@pytest.mark.parametrize("extra, dose, peak, trough, where, what", [
    ("DV,BLQ,LLOQ", ".,0,.", "28.5,0,.", "12,1,10", "line 4, column DV", "above the LLOQ"),
    ("DV,LLOQ", ".,.", "28.5,.", "<5,10", "line 4, column DV", "disagree"),
    ("DV,BLQ", ".,0", "28.5,2", "10,1", "line 3, column BLQ", "must be 0"),
    ("DV,BLQ", ".,0", "28.5,0", "<10,0", "line 4, column BLQ", "make them agree"),
    ("DV", ".", "28.5", "ND", "line 4, column DV", "'<LLOQ value>'"),
    ("DV", ".", "28.5", "<abc", "line 4, column DV", "e.g. '<0.5'"),
    ("DV,BLQ,CENS", ".,0,0", "28.5,0,0", "10,1,1", "header", "keep one"),
    ("DV,BLQ,BQL", ".,0,0", "28.5,0,0", "10,1,1", "header", "appears twice"),
])
def test_contradictions_are_typed_errors(extra, dose, peak, trough, where, what):
    with pytest.raises(ValidationError) as exc:
        _table(_csv(extra, dose, peak, trough))
    assert exc.value.where == where
    assert what in exc.value.message


def test_dv_zero_under_a_log_scale_error_is_refused_unless_flagged():
    log_error = _model(error={"log_scale": True, "additive_sd": 0.25})
    with pytest.raises(ValidationError) as exc:
        _fit(_csv("DV", ".", "28.5", "0"), log_error)
    assert exc.value.where == "line 4, column DV" and "BLQ=1" in exc.value.message
