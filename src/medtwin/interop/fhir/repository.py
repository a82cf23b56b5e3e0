"""FHIR interactions on the store: create, update, delete, read, vread, history, search,
transactions and ``$everything``, with the typed records derived in the same transaction.

Every write validates the resource (:mod:`.validate`), resolves ``urn:uuid`` references of
a transaction to ``Type/id``, maps what medtwin models to typed records (:mod:`.read`),
applies the clinical-data policy to observations (:func:`medtwin.interop.quality.admit`:
implausible values refuse the write; readings dated in the future are kept quarantined) and
writes resource and records in one database transaction. The HTTP layer (``api/routes``)
turns results and errors into FHIR responses; see ``/work/notes/h5_api.md``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.engine import Connection

from medtwin.core.errors import (
    NotFoundError,
    PreconditionFailedError,
    ValidationError,
)
from medtwin.interop.fhir.issues import FhirImportError, FhirIssue
from medtwin.interop.fhir.read import ParsedInput, parse_fhir
from medtwin.interop.fhir.search import PARAMS, Search, parse_search, resource_write
from medtwin.interop.fhir.validate import model_class
from medtwin.interop.quality import FUTURE_TOLERANCE
from medtwin.store.event_store import EventStore
from medtwin.store.resources import (
    Page,
    ResourceStore,
    ResourceWrite,
    StoredResource,
    check_id,
)
from medtwin.store.rows import Batch, prepare_rows


@dataclass
class SearchResult:
    """A search's page: ``matches`` (mode match) and ``included`` (mode include, from
    ``_include`` / ``_revinclude``, deduplicated, never a match again), the total
    (None with ``_total=none``), whether more pages follow, and the parsed search
    (``search.unknown``: parameters ignored; ``search.used``: the ones applied)."""

    matches: list[StoredResource]
    included: list[StoredResource]
    total: int | None
    more: bool
    offset: int
    count: int
    search: Search


@dataclass(frozen=True)
class TxEntry:
    """One entry of a transaction Bundle: ``method`` POST, PUT or DELETE, ``url`` as in
    ``Bundle.entry.request.url`` (``Type``, ``Type/id``, or ``Type?params`` for a
    conditional delete or update), the resource, its ``fullUrl`` and the conditional
    headers."""

    method: str
    url: str
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    if_match: str | int | None = None
    if_none_exist: str | None = None


@dataclass(frozen=True)
class TxResult:
    """What a transaction entry did: the stored version (None for a delete of nothing),
    and the HTTP status FHIR gives it (201, 200, 204)."""

    stored: StoredResource | None
    status: int
    outcome: list[FhirIssue] = field(default_factory=list)


class FhirRepository:
    """FHIR resources of one store, with the typed records derived from them."""

    def __init__(self, events: EventStore, *,
                 future_tolerance: timedelta = FUTURE_TOLERANCE, max_count: int = 1000
                 ) -> None:
        self.events = events
        self.store = ResourceStore(events)
        self.future_tolerance = future_tolerance
        self.max_count = max_count

    # --- writes --------------------------------------------------------------------------
    def create(self, resource: dict[str, Any], *,
               if_none_exist: str | Sequence[tuple[str, str]] | None = None,
               may_amend: bool = False) -> StoredResource:
        """Create ``resource`` under a new server-assigned id (any id it carries is
        replaced, as FHIR create says). ``if_none_exist`` (the If-None-Exist header's
        query): an existing single match is returned unchanged (``created`` False), several
        matches raise :class:`PreconditionFailedError`."""
        (result,) = self.transaction([TxEntry("POST", _type_of(resource), resource,
                                              if_none_exist=_query_text(if_none_exist))],
                                     may_amend=may_amend)
        assert result.stored is not None
        return result.stored

    def update(self, resource_type: str, resource_id: str, resource: dict[str, Any], *,
               if_match: str | int | None = None, may_amend: bool = True) -> StoredResource:
        """Update (or create, when absent: ``created`` True) ``resource_type/resource_id``.
        The resource's type and id must match the URL's (an absent id is taken from the
        URL). ``if_match`` (a version or an ETag ``W/"n"``) must be the current version,
        else :class:`PreconditionFailedError`. ``may_amend`` False refuses a change to a
        stored typed record (a device's writes)."""
        (result,) = self.transaction([TxEntry("PUT", f"{resource_type}/{resource_id}",
                                              resource, if_match=if_match)],
                                     may_amend=may_amend)
        assert result.stored is not None
        return result.stored

    def delete(self, resource_type: str, resource_id: str, *,
               if_match: str | int | None = None) -> StoredResource | None:
        """Logically delete: a new version without content (reads then raise
        :class:`~medtwin.core.errors.GoneError`); None when there was nothing to delete
        (never stored, or deleted already)."""
        (result,) = self.transaction([TxEntry("DELETE", f"{resource_type}/{resource_id}",
                                              if_match=if_match)])
        return result.stored

    def transaction(self, entries: Sequence[TxEntry], *, may_amend: bool = True
                    ) -> list[TxResult]:
        """Run ``entries`` as one FHIR transaction: all of them in one database
        transaction, or (on any error) none. Processed in the FHIR order (DELETE, POST,
        PUT), answered in the entries' order. ``urn:uuid`` (and any other ``fullUrl``)
        references between entries become ``Type/id`` of the ids assigned here.
        Errors: :class:`FhirImportError` (invalid resources, with issues naming the entry),
        :class:`ValidationError` (bad urls, ids), :class:`PreconditionFailedError`
        (If-Match, conditional matches), :class:`NotFoundError` (a record's patient is
        not stored), :class:`~medtwin.core.errors.ConflictError` (a typed record its writer
        may not change)."""
        plans = [_plan(i, e) for i, e in enumerate(entries)]
        order = sorted(range(len(plans)),
                       key=lambda i: ({"DELETE": 0, "POST": 1, "PUT": 2}[plans[i].method], i))
        results: list[TxResult | None] = [None] * len(plans)
        with self.store.transaction() as conn:
            for i in order:  # conditional creates and updates find their targets first
                p = plans[i]
                if p.method == "POST" and p.condition is not None:
                    found = self._match(conn, p.resource_type, p.condition, i)
                    if found is not None:
                        p.existing = found
                        p.id = found.id
                elif p.method in ("PUT", "DELETE") and p.condition is not None:
                    found = self._match(conn, p.resource_type, p.condition, i)
                    p.id = found.id if found is not None else (
                        str(uuid.uuid4()) if p.method == "PUT" else None)
            urls = {p.full_url: (p.resource_type, p.id) for p in plans
                    if p.full_url and p.id and p.method in ("POST", "PUT")}
            writes, batch, parsed_at = self._prepare(plans, urls)
            if batch.rows or batch.patients:
                try:
                    self.events.append_in(conn, [batch], may_amend=may_amend,
                                          on_conflict="raise")
                except NotFoundError as exc:
                    raise ValidationError(f"{exc}: a record's subject must be a stored "
                                          "Patient (create it first or in the same "
                                          "transaction)", where="subject") from None
            deletes = [p for p in (plans[i] for i in order) if p.method == "DELETE"]
            for p in deletes:
                if p.id is None:
                    results[p.index] = TxResult(None, 204)
                    continue
                before = self.store.current(p.resource_type, p.id, conn=conn)
                (gone,) = self.store.write_in(conn, [ResourceWrite(
                    p.resource_type, p.id, None, if_match=p.if_match)])
                if gone.changed and before is not None and before.content is not None:
                    self.events.tombstone_in(conn, _record_sources(before))
                results[p.index] = TxResult(gone if gone.changed else None,
                                            200 if gone.changed else 204)
            ordered = [i for i in order if plans[i].method != "DELETE"
                       and plans[i].existing is None]
            stored = self.store.write_in(conn, [writes[parsed_at[i]] for i in ordered])
            for i, s in zip(ordered, stored, strict=True):
                results[i] = TxResult(s, 201 if s.created else 200)
            for p in plans:
                if p.existing is not None:
                    results[p.index] = TxResult(p.existing, 200)
        return [r for r in results if r is not None]

    def _match(self, conn: Connection, rtype: str, query: str, entry: int
               ) -> StoredResource | None:
        search = parse_search(rtype, parse_qsl(query, keep_blank_values=True))
        if search.unknown:
            raise ValidationError(f"conditional request on {rtype}?{query}: unknown "
                                  f"parameter(s) {', '.join(search.unknown)}",
                                  where=f"entry[{entry}]")
        page = self.store.search(search.query, count=2, total=False, conn=conn)
        if len(page.resources) > 1:
            raise PreconditionFailedError(f"{rtype}?{query} matches more than one resource; "
                                          "make the condition more selective")
        return page.resources[0] if page.resources else None

    def _prepare(self, plans: list[_Plan], urls: dict[str, tuple[str, str]]
                 ) -> tuple[list[ResourceWrite], Batch, dict[int, int]]:
        """Validate, resolve and map the resources of ``plans`` as one transaction bundle;
        the writes, the typed records' batch, and each plan's index in the writes."""
        from medtwin.interop.importer import admit_all

        with_res = [p for p in plans if p.method in ("POST", "PUT") and p.existing is None]
        entries = []
        for p in with_res:
            res = dict(p.resource or {})
            res["id"] = p.id
            entry: dict[str, Any] = {"resource": res,
                                     "request": {"method": p.method,
                                                 "url": f"{p.resource_type}/{p.id}"}}
            entry["fullUrl"] = p.full_url or f"urn:uuid:{uuid.uuid4()}"
            entries.append(entry)
        if not entries:
            return [], Batch(), {}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        extra = {u: v for u, v in urls.items() if u not in {e["fullUrl"] for e in entries}}
        parsed = _parse(bundle, extra)
        records, quality, refused = admit_all(parsed.records, "transaction",
                                              self.future_tolerance)
        if refused:
            raise FhirImportError([issue for issue, _ in refused],
                                  summary="transaction refused (all-or-nothing): a value "
                                  "breaks the clinical-data policy")
        writes = [resource_write(r, if_match=p.if_match)
                  for p, r in zip(with_res, parsed.resources, strict=True)]
        at = {p.index: n for n, p in enumerate(with_res)}
        return writes, Batch(parsed.patients, (), (), prepare_rows(records, quality)), at

    # --- reads ---------------------------------------------------------------------------
    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        """The current version (NotFoundError / GoneError)."""
        _known_type(resource_type)
        return self.store.read(resource_type, check_id(resource_id))

    def vread(self, resource_type: str, resource_id: str, version: int | str
              ) -> StoredResource:
        """One version (NotFoundError / GoneError for a delete)."""
        _known_type(resource_type)
        return self.store.vread(resource_type, check_id(resource_id), _version(version))

    def history(self, resource_type: str | None = None, resource_id: str | None = None, *,
                since: datetime | str | None = None, count: int = 100, offset: int = 0,
                patients: Iterable[str] | None = None, shared: bool = True) -> Page:
        """Versions newest first (instance, type or system history); ``since`` a FHIR
        instant or datetime; ``patients`` / ``shared`` restrict as in :meth:`search`."""
        if resource_type is not None:
            _known_type(resource_type)
        if resource_id is not None:
            check_id(resource_id)
        if isinstance(since, str):
            from medtwin.interop.fhir.search import date_range

            since = date_range(since, where="_since")[0]
        return self.store.history(resource_type, resource_id, since=since,
                                  count=min(count, self.max_count), offset=offset,
                                  patients=patients, shared=shared)

    def search(self, resource_type: str | None, params: Iterable[tuple[str, str]], *,
               count: int | None = None, offset: int | None = None,
               patients: Iterable[str] | None = None, shared: bool = True,
               default_count: int = 50) -> SearchResult:
        """Search ``resource_type`` (None: every type, common parameters only) with the
        URL's (name, value) pairs. ``count`` / ``offset`` override ``_count`` /
        ``_offset``. ``patients`` restricts every match and every included resource to
        those patients' compartments (the caller's visible patients); ``shared`` also lets
        through resources in no patient compartment (Organization, Practitioner ...).
        ``_summary=count`` gives the total only (no matches)."""
        if resource_type is not None:
            _known_type(resource_type)
        patients = None if patients is None else frozenset(patients)
        search = parse_search(resource_type, params, max_count=self.max_count)
        n = count if count is not None else search.count
        n = default_count if n is None else min(n, self.max_count)
        off = offset if offset is not None else search.offset
        if search.summary == "count":
            n = 0
        page = self.store.search(search.query, count=n, offset=off,
                                 total=search.total != "none" or n == 0,
                                 patients=patients, shared=shared)
        included: dict[tuple[str, str], StoredResource] = {}
        seen = {(r.resource_type, r.id) for r in page.resources}
        for src, pname, target in search.include:
            mine = [r for r in page.resources if r.resource_type == src]
            for r in self.store.include(mine, pname, target, patients=patients,
                                        shared=shared):
                included.setdefault((r.resource_type, r.id), r)
        for src, pname, target in search.revinclude:
            found = [r for r in page.resources if target is None or r.resource_type == target]
            for r in self.store.revinclude(found, src, pname, patients=patients,
                                           shared=shared):
                included.setdefault((r.resource_type, r.id), r)
        return SearchResult(page.resources, [r for k, r in included.items() if k not in seen],
                            page.total, page.more, off, n, search)

    def everything(self, patient_id: str, *, types: Iterable[str] | None = None,
                   since: datetime | None = None, count: int = 1000, offset: int = 0
                   ) -> Page:
        """``Patient/{id}/$everything``: the Patient and its compartment (NotFoundError /
        GoneError when the Patient is absent or deleted), and the resources outside any
        compartment they refer to are left to the caller (see :meth:`references`)."""
        self.store.read("Patient", check_id(patient_id))
        return self.store.compartment(patient_id, types=types, since=since,
                                      count=min(count, self.max_count), offset=offset)

    def references(self, found: Sequence[StoredResource], *,
                   patients: Iterable[str] | None = None, shared: bool = True
                   ) -> list[StoredResource]:
        """The stored resources ``found`` refer to (through any indexed reference
        parameter), not among ``found``: what a self-contained export adds."""
        have = {(r.resource_type, r.id) for r in found}
        out: dict[tuple[str, str], StoredResource] = {}
        by_type: dict[str, list[StoredResource]] = {}
        for r in found:
            by_type.setdefault(r.resource_type, []).append(r)
        for rtype, mine in by_type.items():
            for p in PARAMS.get(rtype, ()):
                if p.kind != "reference":
                    continue
                for r in self.store.include(mine, p.name, patients=patients, shared=shared):
                    key = (r.resource_type, r.id)
                    if key not in have:
                        out.setdefault(key, r)
        return list(out.values())

    def reseal(self, keyring: Any) -> int:
        """Key rotation of the stored resources: re-encrypt every version under
        ``keyring``'s current key (it must still hold the old keys) and, when unsealed rows
        were found (a store that had no key ring before), rebuild the search index so that
        its identifying rows become keyed hashes. Returns the versions resealed."""
        done, plain = self.store.reseal(keyring)
        if plain:
            self.events.keyring = keyring
            batch: list[ResourceWrite] = []
            for r in self.store.iter_current():
                batch.append(resource_write(r.resource()))
                if len(batch) >= 2000:
                    self.store.replace_index(batch)
                    batch = []
            if batch:
                self.store.replace_index(batch)
        return done

    def iter_resources(self, *, types: Iterable[str] | None = None,
                       patients: Iterable[str] | None = None, shared: bool = True,
                       since: datetime | None = None) -> Iterator[StoredResource]:
        """Every current resource (Bulk Data ``$export``), by type then write order."""
        return self.store.iter_current(types=types, patients=patients, shared=shared,
                                       since=since)


# --- transaction plans -------------------------------------------------------------------
@dataclass
class _Plan:
    index: int
    method: str
    resource_type: str
    id: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_match: int | None
    condition: str | None
    existing: StoredResource | None = None


def _plan(i: int, e: TxEntry) -> _Plan:
    where = f"entry[{i}]"
    method = e.method.upper()
    if method not in ("POST", "PUT", "DELETE"):
        raise ValidationError(f"method {e.method!r} is not supported in a transaction here "
                              "(POST, PUT, DELETE; GET entries are read after it)",
                              where=f"{where}.request.method")
    path, _, query = e.url.partition("?")
    parts = [x for x in path.strip("/").split("/") if x]
    if not parts:
        raise ValidationError("request.url is empty", where=f"{where}.request.url")
    rtype = parts[0]
    _known_type(rtype, where=f"{where}.request.url")
    rid = None
    if len(parts) == 2:
        rid = check_id(parts[1], where=f"{where}.request.url")
    elif len(parts) > 2:
        raise ValidationError(f"request.url {e.url!r}: use Type, Type/id or Type?query",
                              where=f"{where}.request.url")
    version = None if e.if_match in (None, "") else _version(e.if_match)
    res = e.resource
    if method in ("POST", "PUT"):
        if not isinstance(res, dict):
            raise ValidationError("needs a resource", where=f"{where}.resource")
        if res.get("resourceType") != rtype:
            raise ValidationError(f"resourceType {res.get('resourceType')!r} does not match "
                                  f"the url's {rtype!r}", where=f"{where}.resource")
    if method == "POST":
        if rid is not None:
            raise ValidationError("POST goes to Type (the server assigns the id)",
                                  where=f"{where}.request.url")
        return _Plan(i, method, rtype, str(uuid.uuid4()), res, e.full_url, None,
                     e.if_none_exist or None)
    if rid is None and not query:
        raise ValidationError(f"{method} needs Type/id or Type?query",
                              where=f"{where}.request.url")
    if method == "PUT" and rid is not None:
        rid_in = res.get("id") if res else None
        if rid_in is not None and rid_in != rid:
            raise ValidationError(f"resource id {rid_in!r} differs from the url's id {rid!r}",
                                  where=f"{where}.resource.id")
    return _Plan(i, method, rtype, rid, res, e.full_url, version,
                 query if rid is None else None)


def _parse(bundle: dict[str, Any], extra: dict[str, tuple[str, str]]) -> ParsedInput:
    """parse_fhir of a transaction bundle, with references to ``extra`` fullUrls (entries
    resolved elsewhere, e.g. a conditional create that matched) resolved too."""
    return parse_fhir(bundle, source="transaction", known_urls=extra)


def _record_sources(stored: StoredResource) -> list[str]:
    """The source ids of the typed records derived from ``stored``: ``Type/id`` (an
    import or FHIR write) and any ``urn:medtwin:source-id`` identifier (a record written
    as a typed record first: a live reading, a REST POST, HL7 v2)."""
    from medtwin.interop.fhir.write import SOURCE_ID_SYSTEM

    out = [stored.reference]
    for ident in json.loads(stored.content or "{}").get("identifier", []):
        if isinstance(ident, dict) and ident.get("system") == SOURCE_ID_SYSTEM \
                and isinstance(ident.get("value"), str):
            out.append(ident["value"])
    return out


def _type_of(resource: Any) -> str:
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise ValidationError("a resource must be a JSON object with a resourceType",
                              where="resourceType")
    return resource["resourceType"]


def _known_type(rtype: str, *, where: str = "type") -> None:
    if not (rtype[:1].isupper() and rtype.isalpha()) or model_class(rtype) is None:
        raise ValidationError(f"{rtype!r} is not a FHIR R4 resource type", where=where)


def _version(value: str | int) -> int:
    text = str(value).strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit() or int(text) < 1:
        raise ValidationError(f"not a version id: {value!r} (a number, or an ETag W/\"n\")",
                              where="version")
    return int(text)


def _query_text(q: str | Sequence[tuple[str, str]] | None) -> str | None:
    if q is None or isinstance(q, str):
        return q.lstrip("?").split("?", 1)[-1] if isinstance(q, str) else None
    from urllib.parse import urlencode

    return urlencode(list(q))


def now_utc() -> datetime:
    """The server time (for callers stamping Bundle.meta)."""
    return datetime.now(UTC)


def export_patient(repo: FhirRepository, patient_id: str, *,
                   bundle_type: str = "collection") -> dict[str, Any]:
    """A patient's record as one self-contained Bundle: the stored Patient, its
    compartment (every type), the resources those refer to (Organization, Practitioner
    ...) and the typed records that have no stored resource (live device readings)."""
    from medtwin.core.records import Consent
    from medtwin.interop.fhir.write import export_bundle, to_bundle

    who = repo.events.patient(patient_id)
    records = [r for r in repo.events.timeline(patient_id) if not isinstance(r, Consent)]
    try:
        repo.store.read("Patient", patient_id)
    except NotFoundError:  # stored before resources were kept: the typed records only
        return to_bundle(who, records, bundle_type=bundle_type)
    found: list[StoredResource] = []
    offset = 0
    while True:
        page = repo.everything(patient_id, count=repo.max_count, offset=offset)
        found += page.resources
        if not page.more:
            break
        offset += page.count
    more = repo.references(found)
    while more:
        found += more
        more = repo.references(found)
    return export_bundle([r.resource() for r in found], patient=who, records=records,
                         bundle_type=bundle_type)
