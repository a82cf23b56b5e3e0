"""YAML reading that keeps line numbers, so a model-file error can point at its line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from medtwin.core.errors import ModelFileError


class LineDict(dict):
    """A mapping read from YAML; ``lines[key]`` is the 1-based line of each key."""

    line: int = 0
    lines: dict[Any, int]


class LineList(list):
    """A sequence read from YAML; ``lines[i]`` is the 1-based line of item ``i``."""

    line: int = 0
    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records ``node.start_mark.line`` on every mapping and sequence."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [n.start_mark.line + 1 for n in node.value]
    return out


# YAML 1.1 (PyYAML) reads 1e-8 and 2E5 as text because they have no dot; a number is meant
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str, file: str = "<model>") -> Any:
    """Parse YAML text into LineDict/LineList trees; a syntax error becomes ModelFileError."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ModelFileError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=file,
                             line=mark.line + 1 if mark else None,
                             fix="correct the YAML syntax (indentation, colons, quotes)") from None


def read_yaml(path: Path) -> Any:
    """Read a YAML file with line numbers."""
    return load_yaml(path.read_text(encoding="utf-8"), file=str(path))


def line_of(container: Any, key: Any = None) -> int | None:
    """Line of ``container[key]`` (or of the container itself) when it was read from YAML."""
    if key is not None:
        lines = getattr(container, "lines", None)
        try:
            return lines[key] if lines is not None else None
        except (KeyError, IndexError, TypeError):
            pass
    return getattr(container, "line", None) or None


def plain(value: Any) -> Any:
    """Deep copy as plain dicts/lists (for writing YAML back out or pickling)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
