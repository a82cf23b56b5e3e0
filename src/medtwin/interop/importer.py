"""Import FHIR files and folders into the store, with a summary of what happened.

Parsing, validation, mapping and the store rows (the cost) can run in worker processes, which
hand back rows ready to insert; the store write stays in the calling process. Parsed files
are written in groups, one transaction per group (a file is never half stored); when a group
cannot be written, its files are written again one transaction each, so a file at fault
keeps none of the others out, exactly as with one transaction per file.

Every observation passes the clinical-data policy (:func:`medtwin.interop.quality.admit`):
an implausible value is a rejected entry with the reason, a reading dated beyond the
clock-skew tolerance in the future is stored quarantined (never scored) and raises a
data-quality alert. An EHR import is the one writer that may amend: a changed resource under
a stored id becomes a new version (the previous one kept), except when it would move the
record to another patient or code, which is rejected with the reason.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
import typing
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.pool import SingletonThreadPool

from medtwin.core.errors import MedtwinError, ValidationError
from medtwin.core.processes import die_with_parent
from medtwin.core.records import ClinicalRecord, Observation, Patient
from medtwin.interop import units
from medtwin.interop.fhir.issues import FhirImportError, FhirIssue
from medtwin.interop.fhir.read import MAPPED_TYPES, ParsedInput, read_fhir_file
from medtwin.interop.fhir.search import resource_write
from medtwin.interop.fhir.validate import model_class
from medtwin.interop.quality import FUTURE_TOLERANCE, admit
from medtwin.store.alerts import AlertStore
from medtwin.store.event_store import EventStore
from medtwin.store.resources import ResourceBatch, ResourceStore, ResourceWrite, WriteCounts
from medtwin.store.rows import AppendResult, Batch, prepare_rows

log = logging.getLogger(__name__)

GROUP_FILES = 64        # at most this many files per transaction
GROUP_ROWS = 20_000     # ... or this many rows
GROUP_SECONDS = 0.25    # ... or what was parsed in this long: then it is written
AUTO_MIN_FILES = 8      # an import this large (files and bytes) runs in parallel by default
AUTO_MIN_BYTES = 4_000_000


@dataclass
class ImportSummary:
    """Totals of one import: resources read / stored / duplicates skipped / rejected."""

    files: int = 0
    files_refused: int = 0
    resources_read: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    patients_added: int = 0
    quarantined: int = 0
    not_modelled: Counter[str] = field(default_factory=Counter)
    issues: list[FhirIssue] = field(default_factory=list)
    resources_stored: int = 0      # FHIR resource versions written
    resources_unchanged: int = 0   # ... already stored with the same content
    notes: list[FhirIssue] = field(default_factory=list)  # stored, not mapped: why

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with an OperationOutcome-like list of issues."""
        return {
            "files": self.files, "files_refused": self.files_refused,
            "resources_read": self.resources_read, "stored": self.stored,
            "duplicates_skipped": self.duplicates, "rejected": self.rejected,
            "patients_added": self.patients_added, "quarantined": self.quarantined,
            "not_modelled": dict(sorted(self.not_modelled.items())),
            "resources_stored": self.resources_stored,
            "resources_unchanged": self.resources_unchanged,
            "issues": [i.to_dict() for i in self.issues],
            "notes": [i.to_dict() for i in self.notes],
        }

    def text(self) -> str:
        """A short human summary."""
        nm = sum(self.not_modelled.values())
        lines = [
            f"files: {self.files} ({self.files_refused} refused)",
            f"resources read: {self.resources_read}",
            f"resources stored: {self.resources_stored} (new versions)   unchanged: "
            f"{self.resources_unchanged}",
            f"records stored: {self.stored}   duplicates skipped: {self.duplicates}   "
            f"rejected: {self.rejected}   patients added: {self.patients_added}",
        ]
        if self.quarantined:
            lines.append(f"quarantined (dated in the future; kept, never scored): "
                         f"{self.quarantined}")
        if nm:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.not_modelled.items()))
            lines.append(f"stored as FHIR only (no typed record): {nm} ({kinds})")
        for issue in self.issues[:30]:
            lines.append(f"  {issue.severity}: {issue}")
        if len(self.issues) > 30:
            lines.append(f"  ... {len(self.issues) - 30} more issues (use --json for all)")
        return "\n".join(lines)


def iter_fhir_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Expand files and folders (recursively) into ``*.json`` and Bulk Data ``*.ndjson``
    files. In a folder, NDJSON files named after a type come Patient first (Bulk Data names
    files ``Patient.ndjson``, ``Observation.ndjson`` ...: records need their patient)."""
    for p in map(Path, paths):
        if p.is_dir():
            found = [q for q in p.rglob("*") if q.is_file()
                     and q.suffix.lower() in (".json", ".ndjson")]
            yield from sorted(found, key=_file_order)
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")


def _file_order(path: Path) -> tuple[int, str]:
    first = path.suffix.lower() == ".ndjson" and path.name.split(".")[0].split("-")[0] == \
        "Patient"
    return (0 if first else 1, str(path))


@dataclass
class _Parsed:
    """What parsing one file gives the writer: patients, store rows (not the records: rows
    are what is written, and what crosses from a worker process), issues and counts."""

    patients: list[Patient]
    rows: list[dict[str, Any]]
    resources: list[ResourceWrite]
    row_resource: list[int]
    notes: list[FhirIssue]
    issues: list[FhirIssue]
    resources_read: int
    rejected: int
    not_modelled: Counter[str]
    dead_letters: list[tuple[str, str, str]]
    quarantined: list[tuple[str, str, str | None]] = field(default_factory=list)


def _parse(path: Path, tolerance: timedelta = FUTURE_TOLERANCE) -> _Parsed | FhirImportError:
    """Read, validate, map and prepare the store rows of one file (runs in a worker)."""
    try:
        parsed = read_fhir_file(path)
    except FhirImportError as exc:
        return exc
    by_entry: dict[int | None, list[str]] = {}
    for i in parsed.issues:  # one dead letter per rejected entry, with all its reasons
        by_entry.setdefault(i.entry, []).append(str(i))
    raw = _raw_entries(path, by_entry) if by_entry else {}
    records, quality, refused, owner = _admit_owned(parsed, path.name, tolerance)
    gone = {parsed.record_resource[i] for i in refused_at(parsed.records, records)}
    keep = [j for j in range(len(parsed.resources)) if j not in gone]
    new_at = {j: n for n, j in enumerate(keep)}
    return _Parsed(patients=parsed.patients, rows=prepare_rows(records, quality),
                   resources=[resource_write(parsed.resources[j]) for j in keep],
                   row_resource=[new_at[j] for j in owner], notes=parsed.notes,
                   issues=parsed.issues + [issue for issue, _ in refused],
                   resources_read=parsed.resources_read,
                   rejected=parsed.rejected + len(refused), not_modelled=parsed.not_modelled,
                   dead_letters=[(path.name, "; ".join(why), raw[e])
                                 for e, why in by_entry.items()]
                   + [(path.name, str(issue), text) for issue, text in refused],
                   quarantined=[(r.subject, r.source_id, r.device)  # type: ignore[union-attr]
                                for r, q in zip(records, quality, strict=True) if q])


def refused_at(records: list[ClinicalRecord], kept: list[ClinicalRecord]) -> list[int]:
    """Indexes of ``records`` the policy refused (not in ``kept``, which keeps order)."""
    kept_ids = {r.source_id for r in kept}
    return [i for i, r in enumerate(records) if r.source_id not in kept_ids]


def _admit_owned(parsed: ParsedInput, source: str, tolerance: timedelta
                 ) -> tuple[list[ClinicalRecord], list[str | None],
                            list[tuple[FhirIssue, str]], list[int]]:
    """:func:`admit_all` of a file's records, with each kept record's resource index."""
    records, quality, refused = admit_all(parsed.records, source, tolerance)
    kept_ids = {r.source_id for r in records}
    owner = [parsed.record_resource[i] for i, r in enumerate(parsed.records)
             if r.source_id in kept_ids]
    return records, quality, refused, owner


def admit_all(records: list[ClinicalRecord], source: str, tolerance: timedelta
              ) -> tuple[list[ClinicalRecord], list[str | None], list[tuple[FhirIssue, str]]]:
    """The clinical-data policy on every observation: the records to store, each one's
    data-quality flag, and the refused ones as (issue, record JSON)."""
    now = datetime.now(UTC)
    kept: list[ClinicalRecord] = []
    quality: list[str | None] = []
    refused: list[tuple[FhirIssue, str]] = []
    for rec in records:
        if not isinstance(rec, Observation):
            kept.append(rec)
            quality.append(None)
            continue
        try:
            admitted = admit(rec, now=now, tolerance=tolerance, where="")
        except ValidationError as exc:
            rtype, _, rid = rec.source_id.partition("/")
            refused.append((FhirIssue(exc.message, element=(exc.where or "").lstrip("."),
                                      resource_type=rtype, resource_id=rid, code="value",
                                      source=source), json.dumps(rec.to_dict())))
            continue
        kept.append(admitted.observation)
        quality.append(admitted.quality)
    return kept, quality, refused


_WARM_TYPES = (*sorted(MAPPED_TYPES), "Bundle", "Claim", "ExplanationOfBenefit", "Procedure",
               "Immunization", "DiagnosticReport", "Organization", "Practitioner")


def _field_types(annotation: Any) -> Iterator[Any]:
    args = typing.get_args(annotation)
    if not args:
        yield annotation
    for a in args:
        yield from _field_types(a)


_classes_warm = False


def warm_up(*, unit_registry: bool = True) -> None:
    """Build the fhir.resources model classes an import needs, with every element class
    they refer to (fhir.resources imports those lazily, at their first use), and the UCUM
    registry (about a second, so optional: a file whose units need no conversion never
    builds it). Done once in a parent process, forked workers start warm and share those
    pages."""
    global _classes_warm
    if not _classes_warm:
        from fhir_core.types import FhirBase

        todo = [c for c in map(model_class, _WARM_TYPES) if c is not None]
        seen: set[type] = set()
        while todo:
            cls = todo.pop()
            if cls in seen:
                continue
            seen.add(cls)
            for f in cls.model_fields.values():
                for ty in _field_types(f.annotation):
                    if isinstance(ty, type) and issubclass(ty, FhirBase):
                        todo.append(ty.get_model_klass())
        _classes_warm = True
    if unit_registry:
        units.is_ucum("mg/dL")  # builds the registry once (then a cached look-up)


def auto_workers(files: Sequence[Path]) -> int:
    """Parser processes for ``files``: one per available core for a large import (starting
    workers costs about as much as parsing a few files), else 1."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    if cores < 2 or len(files) < AUTO_MIN_FILES:
        return 1
    return cores if sum(map(_file_size, files)) >= AUTO_MIN_BYTES else 1


def _init_worker(parent_pid: int) -> None:
    """A worker process: end with the importer (no orphan when it is killed), warm (a
    no-op when forked from a warm parent), then keep what is loaded out of the garbage
    collector's scans (and so out of copy-on-write)."""
    die_with_parent(parent_pid)
    warm_up(unit_registry=False)
    gc.freeze()


def _in_worker(parse: Callable[[Path], _Parsed | FhirImportError], path: Path
               ) -> _Parsed | FhirImportError:
    """``parse(path)`` in a worker process, with the cycle collector paused: parsing makes
    and frees many short-lived objects (reference counting frees them) and the collections
    they set off cost about a tenth of the parse; cycles left are collected after."""
    gc.disable()
    try:
        return parse(path)
    finally:
        gc.enable()


def _raw_entries(path: Path, entries: Iterable[int | None]) -> dict[int | None, str]:
    """The raw JSON of each entry (None: the whole input), read once, for dead letters."""
    try:
        data = json.loads(path.read_bytes())
    except Exception:  # the file itself is unreadable: keep its first bytes
        head = path.read_bytes()[:100_000].decode("utf-8", "replace")
        return dict.fromkeys(entries, head)
    bundle = data.get("resourceType") == "Bundle" if isinstance(data, dict) else False
    return {e: json.dumps(data["entry"][e].get("resource")) if e is not None and bundle
            else json.dumps(data)[:1_000_000] for e in entries}


def import_paths(store: EventStore, paths: Iterable[str | Path], *, workers: int = 1,
                 progress: Callable[[int], None] | None = None,
                 future_tolerance: timedelta = FUTURE_TOLERANCE) -> ImportSummary:
    """Import every FHIR JSON file under ``paths`` into ``store``.

    A refused file (bad JSON, bad Bundle, a transaction with any bad entry) stores nothing
    and is reported; rejected entries of other bundles are reported and kept in the
    dead-letter table with their reason. ``progress`` is called with 1 after each file is
    written (from the writer thread). With ``workers > 1`` files are parsed in that many
    worker processes, forked from this one once it has built the model classes.
    Observations dated more than ``future_tolerance`` in the future are quarantined.
    """
    files = list(iter_fhir_files(paths))
    summary = ImportSummary()
    writer = _Writer(store, summary, progress)
    pool = None
    collector = None
    if workers > 1 and len(files) > 1:
        fork = sys.platform.startswith("linux")  # where forking a warm parent is safe
        if fork:  # once here: the forked workers inherit it (the UCUM registry only if
            warm_up(unit_registry=False)  # a file needs it: each worker builds its own)
            collector = _pause_full_collections()
        pool = ProcessPoolExecutor(
            max_workers=min(workers, len(files)), initializer=_init_worker, initargs=(os.getpid(),),
            mp_context=multiprocessing.get_context("fork") if fork else None)
    try:
        parse = (_parse if future_tolerance == FUTURE_TOLERANCE
                 else partial(_parse, tolerance=future_tolerance))
        results = _parse_in(pool, files, workers, parse) if pool else map(parse, files)
        writer.start()  # the workers are forked by now: no thread is copied into them
        for n, (path, parsed) in enumerate(zip(files, results, strict=True), 1):
            summary.files += 1
            writer.final = n >= len(files) - 1  # the last file gets a group of its own: the
            # write left after the parsing is done is as short as it can be
            if isinstance(parsed, FhirImportError):
                summary.files_refused += 1
                summary.issues.extend(parsed.issues)
                summary.rejected += len({(i.entry, i.resource_id) for i in parsed.issues})
                reason = "; ".join(str(i) for i in parsed.issues[:20])
                writer.add(path, ResourceBatch(Batch(dead_letters=[
                    (path.name, reason, _raw_entries(path, [None])[None])])), refused=True)
            else:
                summary.resources_read += parsed.resources_read
                summary.not_modelled.update(parsed.not_modelled)
                summary.issues.extend(parsed.issues)
                summary.notes.extend(parsed.notes)
                summary.rejected += parsed.rejected
                writer.add(path, ResourceBatch(
                    Batch(parsed.patients, (), parsed.dead_letters, parsed.rows),
                    parsed.resources, parsed.row_resource),
                    rejected=parsed.rejected, quarantined=parsed.quarantined)
    except BaseException as exc:
        writer.close_after_error(exc)  # what was parsed before the error is still written
        raise
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        if collector:
            _resume_full_collections(*collector)
    writer.close()
    return summary


def _pause_full_collections() -> tuple[int, int, int] | None:
    """For a parallel import: the warm heap out of the cycle collector's scans (and shared
    with the forked workers without copy-on-write), and full collections a tenth as often.
    The rows in flight from the workers are many objects that live a while, and each full
    collection scanned them all: a third of the importing process's work. Young
    generations are still collected as usual. Returns what :func:`_resume_full_collections`
    restores (None: the process froze its heap itself, so it is left as it is)."""
    if gc.get_freeze_count():
        return None
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(old[0], old[1], old[2] * 10)
    return old


def _resume_full_collections(*threshold: int) -> None:
    gc.set_threshold(*threshold)
    gc.unfreeze()


def _parse_in(pool: ProcessPoolExecutor, files: list[Path], workers: int,
              parse: Callable[[Path], _Parsed | FhirImportError] = _parse
              ) -> Iterator[_Parsed | FhirImportError]:
    """Parse ``files`` in ``pool``; results come in the files' order (the order they are
    stored in). Files go to the workers in that order too, so that the writer stores each
    file while the next ones are parsed (submitted largest first, a small first file such
    as ``Patient.ndjson`` held every write back until all the others were parsed), a
    window at a time; two windows are in flight, so the workers never wait for the writer
    and memory stays bounded."""
    size = max(16 * workers, 1)
    windows = [files[i:i + size] for i in range(0, len(files), size)]

    def submit(window: list[Path]) -> list[Future[_Parsed | FhirImportError]]:
        return [pool.submit(_in_worker, parse, path) for path in window]

    ahead = deque(submit(w) for w in windows[:2])  # now, not at the first next(): the
                                                   # workers are forked before it returns

    def in_order() -> Iterator[_Parsed | FhirImportError]:
        for nxt in range(2, len(windows) + 2):
            futures = ahead.popleft()
            if nxt < len(windows):
                ahead.append(submit(windows[nxt]))
            for f in futures:
                yield f.result()

    return in_order()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class _Pending:
    path: Path
    batch: ResourceBatch
    refused: bool
    rejected: int
    quarantined: list[tuple[str, str, str | None]] = field(default_factory=list)


class _Writer:
    """Writes parsed files in groups, one transaction per group, in a thread of its own, so
    that the database's share (SQLite's pages and fsync, PostgreSQL's round trips and server
    work, all outside the GIL) overlaps the parsing of the next files. Groups are written in
    order; after a failure nothing more is written and the error is raised to the caller."""

    def __init__(self, store: EventStore, summary: ImportSummary,
                 progress: Callable[[int], None] | None) -> None:
        self.store, self.summary, self.progress = store, summary, progress
        self.resources = ResourceStore(store)
        self.pending: list[_Pending] = []
        self.rows = 0
        self.since = 0.0
        self.final = False  # set for the last files: write them as they come
        self.error: BaseException | None = None
        self.queue: queue.Queue[list[_Pending] | None] = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, name="medtwin-import-writer",
                                       daemon=True)
        self.started = False
        # a pool with one connection per thread (in-memory SQLite) would give the writer
        # thread a database of its own: write in the calling thread there
        self.threaded = not isinstance(store.engine.pool, SingletonThreadPool)

    def start(self) -> None:
        """Start the writer thread (after any worker process is forked)."""
        if not self.started and self.threaded:
            self.started = True
            self.thread.start()

    def add(self, path: Path, batch: Batch, *, refused: bool = False, rejected: int = 0,
            quarantined: list[tuple[str, str, str | None]] | None = None) -> None:
        """Queue one file's batch; hand the group to the writer once large or old enough."""
        self._raise_if_failed()
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append(_Pending(path, batch, refused, rejected, quarantined or []))
        self.rows += len(batch.batch.rows or ()) + len(batch.resources)
        if (self.final or len(self.pending) >= GROUP_FILES or self.rows >= GROUP_ROWS
                or time.monotonic() - self.since >= GROUP_SECONDS):
            self._submit()

    def close(self) -> None:
        """Write what is queued, wait for the writer, and raise its error if it had one."""
        self.start()
        try:
            self._submit()
        finally:
            if self.threaded:
                self.queue.put(None)
                self.thread.join()
        self._raise_if_failed()

    def close_after_error(self, error: BaseException) -> None:
        """As :meth:`close` while ``error`` is on its way out (what was parsed before it is
        still written); never raises: the first error is the one to report."""
        try:
            self.close()
        except BaseException as exc:
            if exc is not error:
                log.warning("could not write the files parsed before an error: %s",
                            type(exc).__name__)

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _submit(self) -> None:
        pending, self.pending, self.rows = self.pending, [], 0
        if pending and self.threaded:
            self.queue.put(pending)  # blocks while the writer is two groups behind
        elif pending and self.error is None:
            try:
                self._write(pending)
            except BaseException as exc:
                self.error = exc
                raise

    def _run(self) -> None:
        while (group := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self._write(group)
                except BaseException as exc:  # handed to the importing thread
                    self.error = exc

    def _write(self, pending: list[_Pending]) -> None:
        """One transaction for the group; if it fails, one per file, as without groups:
        the file at fault raises, the ones before it are kept."""
        if len(pending) > 1:
            try:
                results = self.resources.write_batches([p.batch for p in pending],
                                                       **_AMEND)
            except MedtwinError as exc:
                log.info("a group of %d files could not be written together (%s); writing "
                         "them one by one", len(pending), type(exc).__name__)
            else:
                for p, (result, counts) in zip(pending, results, strict=True):
                    self._done(p, result, counts)
                return
        for p in pending:
            self._one(p)

    def _one(self, p: _Pending) -> None:
        if p.refused:  # keeping the evidence must not hide the real problem
            try:
                result, counts = self.resources.write_batches([p.batch], **_AMEND)[0]
            except MedtwinError as exc:
                log.warning("could not keep refused file %s in dead letters: %s",
                            _label(p.path), type(exc).__name__)
                result, counts = AppendResult(), WriteCounts()
        else:
            result, counts = self.resources.write_batches([p.batch], **_AMEND)[0]
        self._done(p, result, counts)

    def _done(self, p: _Pending, result: AppendResult, counts: WriteCounts) -> None:
        if not p.refused:
            self.summary.resources_stored += counts.stored
            self.summary.resources_unchanged += counts.unchanged
            self.summary.stored += result.stored
            self.summary.duplicates += result.duplicates
            self.summary.patients_added += result.patients_added
            self.summary.rejected += result.refused
            self.summary.issues.extend(FhirIssue(why, code="conflict", source=p.path.name)
                                       for _, why in result.refusals)
            self.summary.quarantined += len(p.quarantined)
            if p.quarantined:
                _data_quality_alerts(self.store, p.quarantined)
            log.info("%s: %d stored, %d duplicates, %d rejected", _label(p.path),
                     result.stored, result.duplicates, p.rejected + result.refused)
        if self.progress:
            self.progress(1)


# an EHR import is the writer that may amend (a corrected export); a version that would move
# a record to another patient or code is still refused, and kept as a dead letter
_AMEND: dict[str, Any] = {"may_amend": True, "on_conflict": "dead-letter"}


def _data_quality_alerts(store: EventStore, quarantined: list[tuple[str, str, str | None]]
                         ) -> None:
    """One advisory alert per patient and sender whose imported readings are quarantined."""
    groups: dict[tuple[str, str], list[str]] = {}
    for patient, source_id, device in quarantined:
        groups.setdefault((patient, device or "EHR import"), []).append(source_id)
    alerts = AlertStore(store)
    for (patient, sender), ids in groups.items():
        alerts.raise_alert(patient, f"data-quality:{sender}"[:64], 1,
                           f"{sender} sent {len(ids)} reading(s) dated in the future; "
                           "quarantined, not scored: check the sender's clock",
                           {"device": sender, "flag": "future-dated", "source_ids": ids[:20]},
                           data_time=None)


def _label(path: Path) -> str:
    """A file's name for logs: EHR exports are often named after the patient, and logs must
    not carry identifying data, so logs get a short digest of the name instead."""
    return "file-" + hashlib.sha256(path.name.encode()).hexdigest()[:10]
