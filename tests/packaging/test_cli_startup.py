"""Issue 16: `medtwin --version` and `--help` import no command module and no heavy library
(the command tree is the same: every summary in the root help is the loaded command's), and a
missing optional extra ends in "install medtwin[X]", never a traceback."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medtwin.cli import COMMANDS, app, load_command
from medtwin.extras import EXTRA_OF, MissingExtraError, extra_for, require

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "pandas", "scipy", "numba", "sqlalchemy", "alembic", "fhir", "pint",
         "tqdm", "yaml", "cryptography", "fastapi", "uvicorn", "nicegui", "plotly",
         "matplotlib", "dask", "distributed", "paho", "hl7", "wfdb", "simpy", "psycopg",
         "medtwin.commands", "medtwin.store", "medtwin.core.model", "rich")
RUN_CLI = textwrap.dedent("""
    import json, sys
    sys.argv = ["medtwin", *json.loads(sys.argv[1])]
    from medtwin.cli import main
    try:
        main()
    except SystemExit:
        pass
    print(json.dumps(sorted(m for m in sys.modules)), file=sys.stderr)
""")


def _modules_after(args: list[str]) -> tuple[str, set[str]]:
    out = subprocess.run([sys.executable, "-c", RUN_CLI, json.dumps(args)], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout, set(json.loads(out.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_start_up_imports_no_command_module_nor_heavy_library(args):
    out, loaded = _modules_after(args)
    assert "medtwin" in out
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    if args == ["--help"]:  # typer draws the help with rich; nothing else heavy
        heavy = [m for m in heavy if not m.split(".")[0] == "rich"]
    assert heavy == []


def test_the_root_help_summaries_are_the_loaded_commands(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    lazy_help = CliRunner().invoke(app, ["--help"]).output
    for name, (_, summary) in COMMANDS.items():
        cmd = load_command(name)
        assert cmd.name == name
        shown = inspect.cleandoc(cmd.short_help or cmd.help or "").split("\n\n")[0].strip()
        assert shown == summary, name
        assert CliRunner().invoke(app, [name, "--help"]).exit_code == 0, name
    group = typer.main.get_command(app)
    assert group.list_commands(None) == list(COMMANDS)  # nothing registered elsewhere
    for name in COMMANDS:
        assert group.get_command(None, name).name == name
    loaded_help = CliRunner().invoke(app, ["--help"]).output
    assert lazy_help == loaded_help and "simulate" in lazy_help and "db" in lazy_help


def test_a_typo_still_gets_a_suggestion_of_a_command_not_loaded():
    out = CliRunner().invoke(app, ["simulat"])
    assert out.exit_code == 2 and "Did you mean 'simulate'" in out.output


BLOCK = textwrap.dedent("""
    import importlib.abc, json, sys
    blocked = set(json.loads(sys.argv[1]))
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    sys.argv = ["medtwin", *json.loads(sys.argv[2])]
    from medtwin.cli import main
    main()
""")


@pytest.mark.parametrize(("blocked", "args", "extra"), [
    (["fastapi", "uvicorn", "argon2"], ["serve", "--db", "x.sqlite"], "server"),
    (["psycopg"], ["db", "upgrade", "--db", "postgresql://nobody@127.0.0.1:1/x"], "server"),
    (["paho"], ["live", "--db", "x.sqlite"], "live"),
    (["distributed", "dask"], ["trial", "glucose", "--subjects", "adult#001", "--days",
                               "1"], "trials"),
])
def test_a_missing_extra_says_which_to_install(blocked, args, extra, tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCK, json.dumps(blocked), json.dumps(args)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"pip install 'medtwin[{extra}]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_extras_map_names_extras_that_pyproject_declares(monkeypatch):
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    assert set(EXTRA_OF.values()) <= set(extras)
    assert {"server", "ui", "plot", "live", "trials", "all", "dev"} <= set(extras)
    core = " ".join(meta["dependencies"]).lower()
    for dist in ("fastapi", "uvicorn", "nicegui", "plotly", "matplotlib", "dask", "paho",
                 "hl7", "wfdb", "psycopg", "httpx"):
        assert dist not in core, dist  # the light core
    assert extra_for("paho.mqtt.client") == "live" and extra_for("numpy") is None
    monkeypatch.setitem(EXTRA_OF, "surely_missing_module_x", "server")
    with pytest.raises(MissingExtraError, match=r"a thing needs the 'server' extra.*"
                       r"pip install 'medtwin\[server\]'") as err:
        require("surely_missing_module_x.sub", "a thing")
    assert isinstance(err.value, ModuleNotFoundError)
    assert err.value.name == "surely_missing_module_x"
    with pytest.raises(ModuleNotFoundError) as plain:  # a module of no extra stays plain
        require("surely_not_a_module_of_medtwin")
    assert not isinstance(plain.value, MissingExtraError)
