"""What an export job writes: the NDJSON parts of a Bulk Data ``$export`` (one resource a
line, one type a file, at most :data:`PART_SIZE` lines a file).

A job's ``spec`` (fixed at kick-off, see ``export.py``) says what: ``level`` (system, patient,
group), ``types`` (None: every type), ``since`` (an instant: resources changed at or after
it), ``patients`` (None: every patient; else the patients the caller reached at kick-off),
``shared`` (resources in no patient compartment too), ``deidentify`` (researchers) and
``warnings`` (parameters ignored), written as an OperationOutcome error file.

Identified output is the stored resources as stored (``meta.versionId``/``lastUpdated``
set), read through :class:`~medtwin.interop.fhir.repository.FhirRepository`, so importing
the files again gives the same content. De-identified output is, per patient who still
consents to research when the job runs, the Safe Harbor bundle of
:meth:`~medtwin.security.deid.Deidentifier.bundle` (the allow-list the ``/research`` routes
use), its ``urn:uuid`` references turned into ``Type/<pseudonym>`` so that every reference
resolves among the exported files; resource types the allow-list does not know are left out
and named in the error file.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from medtwin.api.routes.fhir.export_jobs import ExportJob, Worker, ndjson_chunks
from medtwin.interop.fhir.repository import FhirRepository
from medtwin.security.consent import has_research_consent
from medtwin.security.deid import Deidentifier, DeidMode
from medtwin.security.deid_fhir import SHAPES
from medtwin.store.event_store import EventStore
from medtwin.store.resources import StoredResource, instant

PART_SIZE = 10_000
DEID_TYPES = frozenset(SHAPES)
Write = Callable[[str, str, int], None]


def make_worker(store: EventStore, deidentifier: Callable[[], Deidentifier]) -> Worker:
    """The job worker over ``store`` (``deidentifier``: the service's, keyed)."""
    def work(job: ExportJob, write: Write, progress: Callable[[str], None]) -> None:
        spec = job.spec
        if spec.get("deidentify"):
            _deidentified(store, deidentifier(), spec, write, progress)
        else:
            _identified(store, spec, write, progress)
        warnings = list(spec.get("warnings") or [])
        if spec.get("deidentify") and spec.get("types"):
            left = sorted(set(spec["types"]) - DEID_TYPES)
            if left:
                warnings.append(f"de-identified exports hold {', '.join(sorted(DEID_TYPES))}"
                                f" only; left out: {', '.join(left)}")
        if warnings:
            text = json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "warning", "code": "not-supported", "diagnostics": w}
                for w in warnings]}, separators=(",", ":")) + "\n"
            write("OperationOutcome", text, 1)

    return work


def _since(spec: dict[str, Any]) -> datetime | None:
    return datetime.fromisoformat(spec["since"]) if spec.get("since") else None


def _identified(store: EventStore, spec: dict[str, Any], write: Write,
                progress: Callable[[str], None]) -> None:
    repo = FhirRepository(store)
    found = repo.iter_resources(types=spec.get("types"), patients=spec.get("patients"),
                                shared=bool(spec.get("shared")), since=_since(spec))
    total = 0
    for rtype, group in itertools.groupby(found, key=lambda r: r.resource_type):
        lines = (ndjson_line(r) for r in group)
        for text, n in ndjson_chunks(lines, PART_SIZE):
            write(rtype, text, n)
            total += n
        progress(f"{total} resources written (last type {rtype})")


def ndjson_line(r: StoredResource) -> str:
    """A stored resource as one NDJSON line, ``meta.versionId``/``lastUpdated`` set. The
    stored text is canonical compact JSON (``store.resources.canonical``): when it has no
    ``meta`` of its own, the store's meta is put in front of it as text, with no parse and
    no re-serialisation (the export's main cost); otherwise through :meth:`resource`."""
    text = r.content
    if text is not None and text.startswith("{") and '"meta":' not in text:
        meta = json.dumps({"versionId": str(r.version), "lastUpdated": instant(r.last_updated)},
                          separators=(",", ":"))
        return f'{{"meta":{meta},{text[1:]}'
    return json.dumps(r.resource(), separators=(",", ":"), ensure_ascii=False)


def _deidentified(store: EventStore, deid: Deidentifier, spec: dict[str, Any], write: Write,
                  progress: Callable[[str], None]) -> None:
    patients = list(spec.get("patients") or [])
    since = _since(spec)
    if since is not None:  # the patients whose record changed since: all of their record
        repo = FhirRepository(store)
        changed = {r.patient_id for r in repo.iter_resources(patients=patients, shared=False,
                                                            since=since)}
        patients = [p for p in patients if p in changed]
    wanted = DEID_TYPES & set(spec["types"]) if spec.get("types") else DEID_TYPES
    pending: dict[str, list[str]] = {}
    for done, pid in enumerate(patients, 1):
        if not has_research_consent(store, pid):  # withdrawn since the kick-off
            continue
        for res in _deidentified_resources(store, deid, pid):
            if res["resourceType"] in wanted:
                lines = pending.setdefault(res["resourceType"], [])
                lines.append(json.dumps(res, separators=(",", ":"), ensure_ascii=False))
                if len(lines) >= PART_SIZE:
                    write(res["resourceType"], "\n".join(lines) + "\n", len(lines))
                    lines.clear()
        progress(f"{done} of {len(patients)} patients de-identified")
    for rtype in sorted(pending):
        if pending[rtype]:
            write(rtype, "\n".join(pending[rtype]) + "\n", len(pending[rtype]))


def _deidentified_resources(store: EventStore, deid: Deidentifier, pid: str
                            ) -> Iterator[dict[str, Any]]:
    """One patient's Safe Harbor resources, with ``Type/id`` references."""
    bundle = deid.bundle(store.patient(pid), store.timeline(pid), DeidMode.SAFE_HARBOR)
    urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in bundle.get("entry", []) if "id" in e["resource"]}
    for e in bundle.get("entry", []):
        if "id" in e["resource"]:
            yield _rewrite(e["resource"], urls)


def _rewrite(node: Any, urls: dict[str, str]) -> Any:
    """``node`` with every ``urn:uuid`` reference replaced by the ``Type/id`` it names
    (references to resources left out were dropped by the allow-list already)."""
    if isinstance(node, dict):
        return {k: (urls.get(v, v) if k == "reference" and isinstance(v, str)
                    else _rewrite(v, urls)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, urls) for v in node]
    return node
