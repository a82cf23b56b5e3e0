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
    test_cmd = _blocks("bash")[1].strip()
    assert test_cmd.startswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_import_walkthrough_runs_as_written(tmp_path):
    (block,) = re.findall(r"```bash\n(.*?)```", _section("Bring a patient's record in"), re.S)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("MEDTWIN_DB", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["stored"] == 0 and again["duplicates_skipped"] > 0
    bundle = json.loads((tmp_path / "bundle.json").read_text())
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) > 10
    assert "8867-4" in done.stdout  # the timeline printed heart rates


def test_python_example_runs(tmp_path, monkeypatch):
    (block,) = re.findall(r"```python\n(.*?)```", _section("Bring a patient's record in"), re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
