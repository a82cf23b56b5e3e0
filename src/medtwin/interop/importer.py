"""Import FHIR files and folders into the store, with a summary of what happened.

Parsing and validation (the cost) can run in worker processes; the store write stays in the
calling process, one transaction per file, so a failure never leaves half a file stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtwin.core.errors import MedtwinError
from medtwin.interop.fhir.issues import FhirImportError, FhirIssue
from medtwin.interop.fhir.read import MAPPED_TYPES, ParsedInput, read_fhir_file
from medtwin.interop.fhir.validate import model_class
from medtwin.store.event_store import AppendResult, EventStore, prepare_rows

log = logging.getLogger(__name__)


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
    not_modelled: Counter[str] = field(default_factory=Counter)
    issues: list[FhirIssue] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with an OperationOutcome-like list of issues."""
        return {
            "files": self.files, "files_refused": self.files_refused,
            "resources_read": self.resources_read, "stored": self.stored,
            "duplicates_skipped": self.duplicates, "rejected": self.rejected,
            "patients_added": self.patients_added,
            "not_modelled": dict(sorted(self.not_modelled.items())),
            "issues": [i.to_dict() for i in self.issues],
        }

    def text(self) -> str:
        """A short human summary."""
        nm = sum(self.not_modelled.values())
        lines = [
            f"files: {self.files} ({self.files_refused} refused)",
            f"resources read: {self.resources_read}",
            f"stored: {self.stored}   duplicates skipped: {self.duplicates}   "
            f"rejected: {self.rejected}   patients added: {self.patients_added}",
        ]
        if nm:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.not_modelled.items()))
            lines.append(f"read but not modelled (validated, not stored): {nm} ({kinds})")
        for issue in self.issues[:30]:
            lines.append(f"  {issue.severity}: {issue}")
        if len(self.issues) > 30:
            lines.append(f"  ... {len(self.issues) - 30} more issues (use --json for all)")
        return "\n".join(lines)


def iter_fhir_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Expand files and folders (recursively) into ``*.json`` / ``*.ndjson``-free file paths."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*.json") if q.is_file())
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")


def _parse(path: Path) -> tuple[ParsedInput, list[dict[str, Any]]] | FhirImportError:
    """Read, validate, map and prepare the store rows of one file (runs in a worker)."""
    try:
        parsed = read_fhir_file(path)
    except FhirImportError as exc:
        return exc
    return parsed, prepare_rows(parsed.records)


def _warm() -> None:
    """Build the fhir.resources model classes once per worker process."""
    for name in (*MAPPED_TYPES, "Bundle", "Claim", "ExplanationOfBenefit", "Procedure",
                 "Immunization", "DiagnosticReport", "Organization", "Practitioner"):
        model_class(name)


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
                 progress: Callable[[int], None] | None = None) -> ImportSummary:
    """Import every FHIR JSON file under ``paths`` into ``store``.

    A refused file (bad JSON, bad Bundle, a transaction with any bad entry) stores nothing
    and is reported; rejected entries of other bundles are reported and kept in the
    dead-letter table with their reason. ``progress`` is called with 1 after each file.
    """
    files = list(iter_fhir_files(paths))
    summary = ImportSummary()
    pool = (ProcessPoolExecutor(max_workers=workers, initializer=_warm)
            if workers > 1 and len(files) > 1 else None)
    try:
        results = pool.map(_parse, files, chunksize=1) if pool else map(_parse, files)
        for path, parsed in zip(files, results, strict=True):
            summary.files += 1
            if isinstance(parsed, FhirImportError):
                summary.files_refused += 1
                summary.issues.extend(parsed.issues)
                summary.rejected += len({(i.entry, i.resource_id) for i in parsed.issues})
                _dead_letter(store, path, parsed.issues)
            else:
                _store(store, path, *parsed, summary)
            if progress:
                progress(1)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return summary


def _label(path: Path) -> str:
    """A file's name for logs: EHR exports are often named after the patient, and logs must
    not carry identifying data, so logs get a short digest of the name instead."""
    return "file-" + hashlib.sha256(path.name.encode()).hexdigest()[:10]


def _dead_letter(store: EventStore, path: Path, issues: list[FhirIssue]) -> None:
    reason = "; ".join(str(i) for i in issues[:20])
    try:
        store.append(dead_letters=[(path.name, reason, _raw_entries(path, [None])[None])])
    except MedtwinError as exc:  # keeping the evidence must not hide the real problem
        log.warning("could not keep refused file %s in dead letters: %s", _label(path),
                    type(exc).__name__)


def _store(store: EventStore, path: Path, parsed: ParsedInput, rows: list[dict[str, Any]],
           summary: ImportSummary) -> None:
    summary.resources_read += parsed.resources_read
    summary.not_modelled.update(parsed.not_modelled)
    summary.issues.extend(parsed.issues)
    summary.rejected += parsed.rejected
    by_entry: dict[int | None, list[str]] = {}
    for i in parsed.issues:  # one dead letter per rejected entry, with all its reasons
        by_entry.setdefault(i.entry, []).append(str(i))
    raw = _raw_entries(path, by_entry) if by_entry else {}
    letters = [(path.name, "; ".join(why), raw[e]) for e, why in by_entry.items()]
    result: AppendResult = store.append(parsed.patients, parsed.records, dead_letters=letters,
                                        rows=rows)
    summary.stored += result.stored
    summary.duplicates += result.duplicates
    summary.patients_added += result.patients_added
    log.info("%s: %d stored, %d duplicates, %d rejected", _label(path), result.stored,
             result.duplicates, parsed.rejected)
