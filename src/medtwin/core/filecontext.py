"""Where-am-I while validating a file a user writes (ops model, scenario, PK model): file
name, key path and line for error messages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, NoReturn

from medtwin.core.errors import ModelFileError
from medtwin.core.yamlio import line_of, plain

_SCI = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


@dataclass(frozen=True)
class Where:
    """A position in a model file: the file, the dotted key path and the node holding it."""

    file: str
    path: str
    node: Any = None
    key: Any = None

    def at(self, key: Any, node: Any = None) -> Where:
        """The position of ``key`` inside this one (``node`` is the container holding it)."""
        sub = f"{self.path}.{key}" if self.path else str(key)
        if isinstance(key, int):
            sub = f"{self.path}[{key}]"
        return Where(self.file, sub, node, key)

    def child(self, key: Any) -> Where:
        """The position of ``self.value[key]``: the value here becomes the container."""
        return self.at(key, self.value)

    @property
    def value(self) -> Any:
        """The value at this position (the whole node when there is no key)."""
        if self.key is None:
            return self.node
        return self.node[self.key]

    @property
    def line(self) -> int | None:
        """1-based line in the file, when known."""
        if self.node is None:
            return None
        return line_of(self.node, self.key)

    def fail(self, message: str, fix: str) -> NoReturn:
        """Raise :class:`ModelFileError` for this position."""
        raise ModelFileError(message, file=self.file, key=self.path, line=self.line, fix=fix)


def number(w: Where, *, positive: bool = False, nonneg: bool = False,
           integer: bool = False) -> float:
    """Read a number at ``w``, checking its sign (and integrality)."""
    v = w.value
    if isinstance(v, str) and _SCI.fullmatch(v.strip()):
        v = float(v)  # YAML 1.1 reads 1e-9 (no dot) as text; take it as the number meant
    if isinstance(v, bool) or not isinstance(v, int | float):
        w.fail(f"expected a number, got {v!r}", "write a plain number, e.g. 3 or 2.5")
    if v != v or v in (float("inf"), float("-inf")):
        w.fail(f"expected a finite number, got {v!r}", "write a finite number")
    if integer and int(v) != v:
        w.fail(f"expected a whole number, got {v!r}", "write an integer, e.g. 2")
    if positive and v <= 0:
        w.fail(f"must be > 0, got {v!r}", "use a positive value")
    if nonneg and v < 0:
        w.fail(f"must be >= 0, got {v!r}", "use zero or a positive value (rates cannot be "
               "negative)")
    return int(v) if integer else float(v)


def mapping(w: Where, what: str) -> dict:
    """Check that the value at ``w`` is a mapping."""
    if not isinstance(w.value, dict):
        w.fail(f"{what} must be a mapping (key: value), got {type(w.value).__name__}",
               f"write {what} as indented 'key: value' lines")
    return w.value


def need(w: Where, key: str, what: str) -> Where:
    """The position of a required key inside the mapping at ``w``."""
    d = w.value
    if not isinstance(d, dict) or key not in d:
        w.fail(f"{what} lacks required key '{key}'", f"add '{key}:' under {w.path or 'the top'}")
    return w.child(key)


def nearest(name: object, options: object) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when none is close."""
    close = get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_keys(w: Where, allowed: set[str]) -> None:
    """Refuse keys outside ``allowed`` (a typo should not be silently ignored)."""
    for k in w.value:
        if k not in allowed:
            w.child(k).fail(f"unknown key '{k}'{nearest(k, allowed)}",
                            f"use one of {sorted(allowed)}")


def check_schema(schema: Any, w: Where) -> Any:
    """Validate the value at ``w`` with a strict pydantic model (unknown keys forbidden);
    the first error becomes :class:`ModelFileError` at its file and line, an unknown key
    naming the nearest allowed one."""
    from pydantic import ValidationError as PydanticError

    try:
        return schema.model_validate(plain(w.value), strict=True)
    except PydanticError as exc:
        err = exc.errors()[0]
        here = w
        for part in err["loc"]:
            try:
                here.value[part]
            except (KeyError, IndexError, TypeError):
                break
            here = here.child(part)
        if err["type"] == "extra_forbidden":
            key = err["loc"][-1]
            allowed = sorted(_fields_at(schema, err["loc"][:-1]))
            here.fail(f"unknown key '{key}'{nearest(key, allowed)}", f"use one of {allowed}")
        here.fail(err["msg"], f"correct '{here.path or 'the file'}' (quote text, e.g. "
                  "name: '2024'); the JSON Schema lists every key and type")


def _fields_at(schema: Any, loc: tuple) -> list[str]:
    """Field names of the (nested) pydantic model at ``loc`` inside ``schema`` (the top
    level's when the path cannot be followed)."""
    import typing

    from pydantic import BaseModel

    def models(tp: Any) -> list[type[BaseModel]]:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [tp]
        out: list[type[BaseModel]] = []
        for arg in typing.get_args(tp):
            out += models(arg)
        return out

    current: list[type[BaseModel]] = [schema]
    for part in loc:
        if isinstance(part, int) or not current:
            continue  # a list index or dict key: stay on the item model
        nxt: list[type[BaseModel]] = []
        for m in current:
            if part in m.model_fields:
                nxt += models(m.model_fields[part].annotation)
        if nxt:
            current = nxt
        # else: ``part`` is a dict key (e.g. a compartment name); the models stay
    return list(current[0].model_fields) if current else list(schema.model_fields)
