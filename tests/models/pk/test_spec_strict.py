"""The common-case (closed-form) model file is strict: a typo is an error with its line."""

from __future__ import annotations

import pytest

from medtwin.core.errors import ModelFileError
from medtwin.models.pk.spec import library, load_model
from medtwin.models.pk.spec_schema import closed_form_json_schema

ORAL = """\
name: oral
structure: {compartments: 1, absorption: first-order}
parameters:
  CL: {value: 4.0, unit: L/h, eta: ETA1}
  V: {value: 70.0, unit: L}
  KA: {value: 1.0, unit: 1/h}
omega: {etas: [ETA1], variance: [0.2]}
error: {proportional_var: 0.05}
"""


def _load(tmp_path, text: str):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return load_model(path)


def test_the_file_loads(tmp_path):
    m = _load(tmp_path, ORAL)
    assert m.absorption and m.compartments == 1


@pytest.mark.parametrize("change, line, words", [
    (("first-order", "first_order"), 2, "'first-order' or 'none'"),
    (("  V: {value", "  VC: {value"), 5, "VC"),
    (("unit: L/h,", "units: L/h,"), 4, "unknown key 'units'"),
    (("error: {", "error: {additive: 1, "), 8, "unknown key 'additive'"),
])
def test_typos_are_errors_naming_file_line_and_key(tmp_path, change, line, words):
    with pytest.raises(ModelFileError) as exc:
        _load(tmp_path, ORAL.replace(*change))
    assert exc.value.line == line
    assert words in str(exc.value)
    assert str(tmp_path / "model.yaml") in str(exc.value)


def test_every_library_model_is_valid_and_round_trips():
    from medtwin.models.pk.spec import PopulationModel, parse_model

    for name in library():
        m = load_model(name)
        if isinstance(m, PopulationModel):
            again = parse_model(m.to_dict())
            assert again.name == m.name and (again.omega == m.omega).all()


def test_closed_form_json_schema_is_strict():
    schema = closed_form_json_schema()
    assert schema["additionalProperties"] is False
    assert "structure" in schema["properties"]
