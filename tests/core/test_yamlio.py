"""YAML files a user writes: numbers as people write them, lines kept for errors."""

from __future__ import annotations

from medtwin.core.yamlio import line_of, load_yaml


def test_scientific_notation_without_a_dot_is_a_number():
    data = load_yaml("rtol: 1e-8\nn: 2E5\nx: 1.5e-3\nname: '1e-8'\nword: 1e\n")
    assert data["rtol"] == 1e-8 and data["n"] == 2e5 and data["x"] == 1.5e-3
    assert data["name"] == "1e-8" and data["word"] == "1e"  # quoted or not a number: text


def test_lines_are_kept():
    data = load_yaml("a: 1\nb:\n  c: [1, 2]\n")
    assert line_of(data, "b") == 2 and line_of(data["b"], "c") == 3
