"""README examples run as written, and CI runs exactly README's test command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _section(title: str) -> str:
    return README.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_ci_runs_the_readme_test_command():
    """Quick start installs everything (``[all]``); the tests install ``[dev]`` and CI runs
    exactly README's test command after installing the same."""
    assert 'pip install -e ".[all]" && medtwin demo' in _blocks("bash")[0]
    install, test_cmd = _blocks("bash")[1].strip().splitlines()
    assert install == 'pip install -e ".[dev]"' and test_cmd.startswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert '-m pip install --quiet -e ".[dev]"' in ci
    assert test_cmd in ci.splitlines()


def test_shell_examples_run_as_written(tmp_path):
    """The records, twins and service walkthroughs, in order, in one scratch folder."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "XDG_DATA_HOME": str(tmp_path / "data")}
    for name in ("MEDTWIN_DB", "MEDTWIN_KEY", "MEDTWIN_KEY_FILE", "MEDTWIN_PASSWORD"):
        env.pop(name, None)
    outputs = {}
    for title in ("Bring a patient's record in", "HL7 v2 from the EHR", "Try the twins",
                  "Pharmacometric models", "The service"):
        (block,) = re.findall(r"```bash\n(.*?)```", _section(title), re.S)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (title, done.stderr[-3000:])
        outputs[title] = done.stdout
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["stored"] == 0 and again["duplicates_skipped"] > 0
    bundle = json.loads((tmp_path / "bundle.json").read_text())
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) > 10
    deid = (tmp_path / "deid.json").read_text()
    assert "1ff7fa6a-81f4-565e-9469-63082af2cb97" not in deid and "urn:medtwin:mrn" not in deid
    records = outputs["Bring a patient's record in"]
    assert "8867-4" in records and "NEWS2" in records
    twins = outputs["Try the twins"]
    assert "BG mean" in twins and "P(auc24 in 400-600" in twins and "wait:triage" in twins
    for f in ("trace.csv", "trace.png", "metrics.csv", "report.html", "course.png", "ops.html",
              "cardio_trial.csv", "by_hour.csv", "ops.json"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert "audit chain intact" in outputs["The service"]
    pk = outputs["Pharmacometric models"]
    assert "ID 1: OFV" in pk and "ECL=" in pk and "NOT converged" not in pk
    table = (tmp_path / "records.csv").read_text().splitlines()
    assert table[0].startswith("ID,TIME,DV") and len(table) == 6
    assert "warfarin-hamberg2007" in pk and "language" in pk
    schema = json.loads((tmp_path / "pk-model.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert "MSA|AA|MSG00001" in outputs["HL7 v2 from the EHR"]
    assert "MSA|AA|LAB-1" in outputs["HL7 v2 from the EHR"]


def test_python_example_runs(tmp_path, monkeypatch):
    (block,) = re.findall(r"```python\n(.*?)```", _section("Bring a patient's record in"), re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})


def test_pk_python_example_runs(tmp_path, monkeypatch):
    """The pharmacometrics API example, on the files its shell example writes."""
    section = _section("Pharmacometric models")
    (shell,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    files = re.findall(r"cat > (\S+) <<'EOF'\n(.*?)\nEOF\n", shell, re.S)
    assert [f for f, _ in files] == ["parent-metabolite.yaml", "pm.csv"]
    for name, text in files:
        (tmp_path / name).write_text(text + "\n")
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
