"""The search index of stored FHIR resources, as plain data: what a write indexes and what a
search asks for. The FHIR side (:mod:`medtwin.interop.fhir.search`) fills these from
resources and from search URLs; :class:`~medtwin.store.resources.ResourceStore` turns them
into SQL. Dates are half-open UTC ranges ``[lo, hi)``; an open end is ``LOW`` / ``HIGH``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

LOW = datetime(1, 1, 1, tzinfo=UTC)          # a period without a start
HIGH = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # ... without an end
MAX_TEXT = 255  # index columns hold this many characters (longer values are cut)
MAX_PREFIX = 32  # identifying strings are indexed blind by their prefixes up to this length


class IndexRow(NamedTuple):
    """One search-parameter value of a resource: a token (sys=system, value=code), a
    reference (sys=target type, value=id), a string (value=normalised, raw=as written) or
    a date range (lo, hi). A ``blind`` row holds an identifying value: a store with a key
    ring keeps its ``value`` and ``raw`` only as keyed hashes (a blind index; ``sys``,
    ``lo`` and ``hi`` stay as given, so the caller puts nothing identifying there)."""

    param: str
    sys: str | None = None
    value: str | None = None
    raw: str | None = None
    lo: datetime | None = None
    hi: datetime | None = None
    blind: bool = False


ANY = "\x00any"  # TokenTest.system: any system (``code=x``), unlike None (``code=|x``)


@dataclass(frozen=True, slots=True)
class TokenTest:
    """``[system]|[code]``: system ``ANY`` matches any system, None matches no system;
    code None matches any code of the system."""

    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class ReferenceTest:
    """A reference to ``id`` (of ``type`` when given)."""

    type: str | None
    id: str


@dataclass(frozen=True, slots=True)
class StringTest:
    """A string: ``mode`` is "start" (default), "contains" (both on the normalised text)
    or "exact" (as written)."""

    text: str
    mode: str = "start"


@dataclass(frozen=True, slots=True)
class DateTest:
    """A date with its prefix (eq ne lt le gt ge sa eb) and its precision's range."""

    prefix: str
    lo: datetime
    hi: datetime


Test = TokenTest | ReferenceTest | StringTest | DateTest


@dataclass(frozen=True, slots=True)
class Clause:
    """One search parameter of a query: its tests are OR-ed (comma); the clauses of a query
    are AND-ed (repeated parameters). ``param`` is an index parameter name or one of the
    columns ``_id``, ``_lastUpdated`` and ``patient`` (the compartment). ``negate`` is the
    ``:not`` modifier; ``missing`` (True/False) is ``:missing`` (then ``tests`` is empty).
    A ``blind`` clause searches blind rows (:class:`IndexRow`): only equality of a token's
    code or of an exact string (``raw``) can be asked, which the store compares as keyed
    hashes; a starts-with search is a token test on the prefix rows."""

    param: str
    tests: tuple[Test, ...] = ()
    negate: bool = False
    missing: bool | None = None
    blind: bool = False


@dataclass(frozen=True, slots=True)
class SortKey:
    """A ``_sort`` key: ``_id``, ``_lastUpdated`` or an index parameter; descending with '-'."""

    param: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """A search over the current versions of one type (None: every type)."""

    resource_type: str | None
    clauses: tuple[Clause, ...] = ()
    sort: tuple[SortKey, ...] = field(default_factory=tuple)
