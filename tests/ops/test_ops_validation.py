"""Bad model files get a typed error naming the file, the line, the key and the fix."""

from __future__ import annotations

import pytest

from medtwin.core.errors import ValidationError
from medtwin.ops.errors import ModelFileError, ModelNotFoundError
from medtwin.ops.loader import load_model, shipped_models

GOOD = """\
name: tiny
time_unit: minutes
resources:
  cubicles: {capacity: 2}
  doctors: {capacity: 1}
activities:
  assess: {resource: doctors, duration: {dist: exponential, mean: 10}}
  treat: {resource: cubicles, duration: {dist: lognormal, mean: 30, variance: 25}}
classes:
  minor:
    pathway:
      - assess
      - branch: {treat: 0.7, exit: 0.3}
      - treat
arrivals:
  - {name: walk_in, rate_per_hour: 4, class: minor}
"""

BAD = {
    "unknown resource": (
        GOOD.replace("resource: cubicles,", "resource: cubicle,"),
        8, "activities.treat.resource", "unknown resource 'cubicle'", "cubicles"),
    "probabilities do not sum to 1": (
        GOOD.replace("{treat: 0.7, exit: 0.3}", "{treat: 0.7, exit: 0.2}"),
        13, "classes.minor.pathway[1].branch", "sum to 0.9", "add up to 1"),
    "negative rate": (
        GOOD.replace("rate_per_hour: 4", "rate_per_hour: -4"),
        16, "arrivals[0].rate_per_hour", "must be >= 0", "negative"),
    "impossible distribution": (
        GOOD.replace("mean: 30, variance: 25", "mean: 30, variance: -25"),
        8, "activities.treat.duration.variance", "must be > 0", "positive"),
    "zero mean exponential": (
        GOOD.replace("mean: 10}", "mean: 0}"),
        7, "activities.assess.duration.mean", "must be > 0", "positive"),
    "cycle with no exit": (
        GOOD.replace("      - treat\n", "      - {activity: treat, next: assess}\n")
            .replace("{treat: 0.7, exit: 0.3}", "{treat: 1.0}"),
        12, "classes.minor.pathway[0]", "cycle with no exit", "exit"),
    "unknown activity in pathway": (
        GOOD.replace("      - assess\n", "      - asess\n"),
        12, "classes.minor.pathway[0]", "unknown activity 'asess'", "assess"),
    "typo in a key": (
        GOOD.replace("{capacity: 1}", "{capacty: 1}"),
        5, "resources.doctors.capacty", "unknown key", "capacity"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_model_file_names_file_line_key_and_fix(tmp_path, case):
    text, line, key, what, fix = BAD[case]
    path = tmp_path / "bad_model.yaml"
    path.write_text(text)
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    e = err.value
    assert isinstance(e, ValidationError)
    msg = str(e)
    assert str(path) in msg and f":{line}" in msg, msg
    assert e.line == line and e.key == key, (e.line, e.key)
    assert what in msg and "fix:" in msg and fix in e.fix, msg


def test_good_file_loads(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    m = load_model(path)
    assert m.classes["minor"].steps[1].next == (("treat", 0.7), ("exit", 0.3))


def test_yaml_syntax_error_has_a_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(GOOD.replace("resources:\n", "resources:\n  - [\n"))
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    assert err.value.line is not None and str(path) in str(err.value)


def test_unknown_model_name_is_not_found():
    with pytest.raises(ModelNotFoundError):
        load_model("no_such_model")


def test_every_shipped_model_loads():
    names = shipped_models()
    assert {"nelson_treatment_centre", "ed_inpatient", "mm1", "mm2", "mm3"} <= set(names)
    for n in names:
        assert load_model(n).name == n
