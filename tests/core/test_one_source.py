"""One source for each constant (issue 14): a LOINC code medtwin names in code is typed only in
``core/codes.py``, and the insulin unit factor and glucose thresholds only in
``models/glucose/constants.py``; everything else imports them."""

from __future__ import annotations

import ast
from pathlib import Path

from medtwin.core import codes
from medtwin.models.glucose import constants

SRC = Path(codes.__file__).resolve().parents[1]
CODES_FILE = Path(codes.__file__).resolve()
LOINC = {v for k, v in vars(codes).items() if k.isupper() and isinstance(v, str)}


def _literals(path: Path) -> list[tuple[int, object]]:
    """Every constant in ``path`` except docstrings, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef |
                                ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and id(n) not in docstrings]


def test_the_codes_file_names_known_loinc_codes():
    assert {"8867-4", "99504-3", "8480-6"} <= LOINC  # the scan below looks for something


def test_loinc_codes_are_typed_only_in_core_codes():
    offenders = [f"{p.relative_to(SRC)}:{line} {value!r}"
                 for p in sorted(SRC.rglob("*.py")) if p.resolve() != CODES_FILE
                 for line, value in _literals(p) if isinstance(value, str) and value in LOINC]
    assert not offenders, "import these from medtwin.core.codes:\n" + "\n".join(offenders)


def test_the_insulin_unit_factor_is_typed_once():
    assert constants.INSULIN_PMOL_PER_UNIT == 6000.0
    own = Path(constants.__file__).resolve()
    offenders = [f"{p.relative_to(SRC)}:{line}" for p in sorted(SRC.rglob("*.py"))
                 if p.resolve() != own and p.name != "vancomycin.py"  # a 6000 mg dose cap
                 for line, value in _literals(p) if value == 6000.0]
    assert not offenders, "use models.glucose.constants.INSULIN_PMOL_PER_UNIT:\n" + "\n".join(
        offenders)
