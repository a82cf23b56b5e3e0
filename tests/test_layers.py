"""The layer contract of DESIGN.md ("an import only ever points down this list"), checked over
the whole package by import-linter (grimp's import graph) with the repository's
``.importlinter``: nothing below ``api`` imports ``api``, ``api`` does not import ``ui``, the
edge (cli, commands, demo) is imported by nothing, ``models`` imports only ``core``."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from importlinter.application import use_cases
from importlinter.configuration import configure

import medtwin

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
PACKAGE = Path(medtwin.__file__).resolve().parent
#: folders of Python files that are not imported as modules (Alembic loads them by path)
NOT_MODULES = {PACKAGE / "store" / "migrations", PACKAGE / "store" / "migrations" / "versions"}


def _lint(config: Path) -> bool:
    configure()  # import-linter's readers and printer (its CLI does the same)
    return use_cases.lint_imports(config_filename=str(config), cache_dir=None, no_logo=True)


def test_every_folder_of_modules_is_a_package() -> None:
    """A folder without ``__init__.py`` is a namespace package: grimp leaves it out of the
    graph and the contract would not see its imports (and setuptools leaves it out of a
    wheel)."""
    missing = sorted(str(d.relative_to(PACKAGE)) for d in {p.parent for p in
                     PACKAGE.rglob("*.py")} if d not in NOT_MODULES
                     and not (d / "__init__.py").exists())
    assert not missing, f"add an __init__.py to: {', '.join(missing)}"


def test_layer_contract_holds() -> None:
    """Every import of the package points down the layers (the report names each broken
    chain of imports, file and line)."""
    assert _lint(CONFIG), "an import points up the layers: see the report above"


def test_contract_sees_the_real_graph(tmp_path: Path) -> None:
    """The same contract with ``twin`` moved above ``ui`` is broken (``ui`` imports the twin
    service): the check runs on the package's actual imports and can fail."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    section = "importlinter:contract:layers"
    layers = [x.strip() for x in parser[section]["layers"].splitlines() if x.strip()]
    assert "twin" in layers and "ui" in layers
    layers.remove("twin")
    layers.insert(layers.index("ui"), "twin")
    parser[section]["layers"] = "\n" + "\n".join(layers)
    swapped = tmp_path / "swapped.ini"
    with swapped.open("w") as fh:
        parser.write(fh)
    assert not _lint(swapped)


@pytest.mark.parametrize("layer", ["api", "ui", "demo", "commands", "cli", "service"])
def test_nothing_low_imports_the_top(layer: str) -> None:
    """The layers' order itself: ``api``, ``ui`` and the edge stay above every capability."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    layers = [x.strip() for x in parser["importlinter:contract:layers"]["layers"].splitlines()
              if x.strip()]
    index = next(i for i, x in enumerate(layers) if layer in x.split(" : "))
    for low in ("twin", "live", "security", "models", "core", "store"):
        assert index < layers.index(low), f"{layer} must sit above {low}"
