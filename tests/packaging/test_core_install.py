"""Issue 16: `pip install medtwin` with no extras, in a fresh venv, from a wheel built here:
the engine, `simulate`, `trial --scheduler serial`, `pk`, `dose` and `ops` work; `serve`, a
PostgreSQL URL and the Dask scheduler say which extra to install (no traceback).

Slow (a venv and the core dependencies, from the pip cache or the index): one venv for all
checks, built once per run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VANCO = """ID,TIME,EVID,AMT,CMT,RATE,II,ADDL,DV,MDV,WT,CRCL,DIAL
1,0,1,1000,1,1000,12,1,.,1,80,90,0
1,11.5,0,.,1,.,.,.,9.8,0,80,90,0
1,23.5,0,.,1,.,.,.,12.1,0,80,90,0
"""
ENGINE = """
import numpy as np
from medtwin.core.schedule import Schedule
from medtwin.core.simulate import simulate
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.models.glucose.uva_padova import UVAPadova
res = simulate(UVAPadova(), uva_padova_cohort(["adult#001", "adult#002"]),
               Schedule().with_meal(60, 50), np.arange(0.0, 241.0))
df = res.to_dataframe()
assert len(df) > 0 and df["subject"].nunique() == 2
print("engine ok", len(df))
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the medtwin wheel and nothing else (no extras); its bin folder."""
    tmp = tmp_path_factory.mktemp("core")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("medtwin-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=300)
    bin_ = tmp / "venv" / "bin"
    subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, timeout=1500)
    return bin_


def _run(core: Path, *args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MEDTWIN_KEY_FILE"] = str(cwd / "keys.json")
    out = subprocess.run([str(core / args[0]), *args[1:]], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=900)
    if ok:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def test_the_core_has_no_extra_and_its_commands_work(core, tmp_path):
    py = _run(core, "python", "-c", "import importlib.util as u, medtwin; print(medtwin."
              "__file__); print([m for m in ('fastapi', 'uvicorn', 'nicegui', 'plotly', "
              "'matplotlib', 'distributed', 'paho', 'hl7', 'wfdb', 'psycopg', 'httpx') "
              "if u.find_spec(m)])", cwd=tmp_path)
    where, present = py.stdout.splitlines()
    assert str(core.parent) in where and present == "[]"  # the wheel, no extra
    assert "medtwin 0" in _run(core, "medtwin", "--version", cwd=tmp_path).stdout
    _run(core, "python", "-c", ENGINE, cwd=tmp_path)
    sim = _run(core, "medtwin", "simulate", "glucose", "--subject", "adult#001", "--meal",
               "07:00=50", "--seed", "1", "--out", "trace.csv", cwd=tmp_path)
    assert "BG mean" in sim.stdout and (tmp_path / "trace.csv").stat().st_size > 1000
    trial = _run(core, "medtwin", "trial", "glucose", "--cohort", "uva-padova", "--subjects",
                 "adult#00[1-2]", "--controller", "basal-bolus", "--days", "1", "--seed", "7",
                 "--scheduler", "serial", "--out", "metrics.csv", cwd=tmp_path)
    assert "2 subjects x 1 days" in trial.stdout
    (tmp_path / "vanco.csv").write_text(VANCO)
    dose = _run(core, "medtwin", "dose", "--model", "vancomycin-goti2018", "--data",
                "vanco.csv", "--target", "auc24=400:600", cwd=tmp_path)
    assert "P(auc24 in 400-600" in dose.stdout
    pk = _run(core, "medtwin", "pk", "map", "--model", "vancomycin-goti2018", "--data",
              "vanco.csv", cwd=tmp_path)
    assert pk.stdout.startswith("ID 1: OFV")
    ops = _run(core, "medtwin", "ops", "run", "nelson", "--reps", "2", "--seed", "0",
               cwd=tmp_path)
    assert "2 replications" in ops.stdout and "95% CI" in ops.stdout


def test_the_core_names_the_extra_a_feature_needs(core, tmp_path):
    for args, extra in ((["serve"], "server"),
                        (["db", "upgrade", "--db", "postgresql://u@127.0.0.1:1/x"], "server"),
                        (["trial", "glucose", "--subjects", "adult#001", "--days", "1"],
                         "trials"),
                        (["live"], "live")):
        out = _run(core, "medtwin", *args, cwd=tmp_path, ok=False)
        assert out.returncode == 2, (args, out.stderr)
        assert f"pip install 'medtwin[{extra}]'" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
