"""The append-only event store: records in, timelines out.

Every record is appended with an idempotency key (its kind, source id and content hash), so
re-importing a file or a retried message stores nothing twice. A record whose source id was
seen before with other content is a new version: it is appended too, and reads show the
latest version. Nothing is updated in place. One ``append`` is one transaction.

Identifying fields are sealed by an :class:`IdentityCipher` (medtwin's ``security.crypto.
KeyRing``) handed in at open, and stored as ``{"enc": ciphertext}``; a store opened without
one keeps them as plain JSON (tests, throw-away stores) and refuses to show sealed ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import pandas as pd
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from medtwin.core.errors import NotFoundError, StoreError
from medtwin.core.records import KIND_OF, RECORD_OF_KIND, ClinicalRecord, Patient
from medtwin.store import schema as t
from medtwin.store.engine import describe, make_engine, migrate

log = logging.getLogger(__name__)

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class AppendResult:
    """How many records a write stored, and how many it skipped as already stored."""

    stored: int = 0
    duplicates: int = 0
    patients_added: int = 0

    def __add__(self, other: AppendResult) -> AppendResult:
        return AppendResult(self.stored + other.stored, self.duplicates + other.duplicates,
                            self.patients_added + other.patients_added)


def idempotency_key(kind: str, source_id: str, content_hash: str) -> str:
    """SHA-256 over kind, source id and content hash: equal only for the same record."""
    return hashlib.sha256(f"{kind}\x1f{source_id}\x1f{content_hash}".encode()).hexdigest()


def prepare_rows(records: Iterable[ClinicalRecord]) -> list[dict[str, Any]]:
    """The ``events`` rows of ``records`` (payload, keys): the CPU part of a write, which an
    importer may do in worker processes before handing the rows to :meth:`EventStore.append`."""
    return [_record_row(r) for r in records]


def _record_row(rec: ClinicalRecord) -> dict[str, Any]:
    kind = KIND_OF[type(rec)]
    payload = rec.to_dict()
    content = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"))
                             .encode()).hexdigest()
    time = getattr(rec, "time", None) or getattr(rec, "start", None) or getattr(rec, "onset",
                                                                                None)
    return {
        "idem_key": idempotency_key(kind, rec.source_id, content),
        "kind": kind,
        "patient_id": rec.subject or None,
        "source_id": rec.source_id,
        "code": getattr(rec, "code", None),
        "time": time,
        "value": getattr(rec, "value", None) if kind == "observation" else getattr(
            rec, "amount", None),
        "unit": getattr(rec, "unit", None),
        "payload": payload,
    }


class IdentityCipher(Protocol):
    """Seals and opens JSON values bound to a context (the patient id)."""

    def encrypt_json(self, value: Any, *, context: str) -> str: ...

    def decrypt_json(self, token: str, *, context: str) -> Any: ...


class EventStore:
    """medtwin's store on one database (SQLite file by default, PostgreSQL by URL)."""

    def __init__(self, engine: Engine, *, keyring: IdentityCipher | None = None) -> None:
        self.engine = engine
        self.keyring = keyring

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, *, schema: str | None = None,
             create: bool = True, keyring: IdentityCipher | None = None) -> EventStore:
        """Open (and by default create or migrate) the store at ``db`` (path or URL);
        ``keyring`` seals identifying fields at rest."""
        engine = make_engine(db, schema=schema)
        try:
            if create:
                migrate(engine, schema=schema)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the store at {describe(engine)}: {exc.orig or exc}"
                             "; check the URL and that the server is running") from exc
        return cls(engine, keyring=keyring)

    def close(self) -> None:
        """Release connections."""
        self.engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventStore({describe(self.engine)})"

    # --- writing ---------------------------------------------------------------------------
    def _insert_ignore(self, table: t.Table) -> Any:
        name = self.engine.dialect.name
        if name == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        if name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return insert(table)

    def append(self, patients: Sequence[Patient] = (), records: Sequence[ClinicalRecord] = (),
               *, dead_letters: Sequence[tuple[str, str, str]] = (),
               rows: list[dict[str, Any]] | None = None) -> AppendResult:
        """Append patients and records in one transaction; already-stored ones are skipped.

        ``dead_letters`` are (source, reason, raw payload) rows kept for rejected input.
        ``rows`` may carry :func:`prepare_rows` of ``records``, computed beforehand.
        A record whose subject is not a known patient (here or in ``patients``) is refused
        with :class:`NotFoundError` and nothing is written.
        """
        now = datetime.now(UTC)
        rows = prepare_rows(records) if rows is None else rows
        try:
            with self.engine.begin() as conn:
                known = {p.id for p in patients}
                wanted = {r["patient_id"] for r in rows if r["patient_id"]} - known
                for chunk in _chunks(sorted(wanted)):
                    known |= set(conn.scalars(select(t.patients.c.id).where(
                        t.patients.c.id.in_(chunk))))
                missing = wanted - known
                if missing:
                    raise NotFoundError(
                        f"records refer to unknown patient(s) {sorted(missing)[:5]}; import the "
                        "Patient resource first or in the same bundle")
                added = self._add_patients(conn, patients, now)
                keys = [r["idem_key"] for r in rows]
                existing: set[str] = set()
                for chunk in _chunks(keys):
                    existing |= set(conn.scalars(select(t.events.c.idem_key).where(
                        t.events.c.idem_key.in_(chunk))))
                fresh, seen = [], set(existing)
                for r in rows:
                    if r["idem_key"] not in seen:
                        seen.add(r["idem_key"])
                        fresh.append(r)
                if fresh:
                    conn.execute(self._insert_ignore(t.events),
                                 [{**r, "recorded_at": now} for r in fresh])
                if dead_letters:
                    conn.execute(insert(t.dead_letters), [
                        {"source": s, "reason": why, "payload": raw, "recorded_at": now}
                        for s, why, raw in dead_letters])
        except SQLAlchemyError as exc:
            raise StoreError(f"write to {describe(self.engine)} failed and was rolled back: "
                             f"{getattr(exc, 'orig', None) or exc}") from exc
        return AppendResult(stored=len(fresh), duplicates=len(rows) - len(fresh),
                            patients_added=added)

    def _add_patients(self, conn: Any, patients: Sequence[Patient], now: datetime) -> int:
        if not patients:
            return 0
        ids = [p.id for p in patients]
        existing = set(conn.scalars(select(t.patients.c.id).where(t.patients.c.id.in_(ids))))
        new = {p.id: p for p in patients if p.id not in existing}
        if not new:
            return 0
        conn.execute(self._insert_ignore(t.patients), [
            {"id": p.id, "source_id": p.source_id, "gender": p.gender,
             "birth_year": p.birth_year, "deceased": p.deceased, "recorded_at": now}
            for p in new.values()])
        conn.execute(self._insert_ignore(t.patient_identity), [
            {"patient_id": p.id, "data": self._seal(p.id, p.identity), "recorded_at": now}
            for p in new.values()])
        return len(new)

    def _seal(self, patient_id: str, identity: dict[str, Any]) -> dict[str, Any]:
        if self.keyring is None:
            return identity
        return {"enc": self.keyring.encrypt_json(identity, context=patient_id)}

    def _open_identity(self, patient_id: str, data: Any,
                       keyring: IdentityCipher | None = None) -> dict[str, Any]:
        keyring = keyring or self.keyring
        if isinstance(data, dict) and set(data) == {"enc"} and isinstance(data["enc"], str):
            if keyring is None:
                raise StoreError(f"the identity of patient {patient_id!r} is encrypted; open "
                                 "the store with its key ring (MEDTWIN_KEY or MEDTWIN_KEY_FILE)")
            return keyring.decrypt_json(data["enc"], context=patient_id)
        return data or {}

    def reseal_identities(self, keyring: IdentityCipher) -> int:
        """Re-encrypt every identity under ``keyring``'s current key (key rotation; plain
        rows get sealed too) in one transaction; ``keyring`` must still hold the old keys.
        Each value is checked to open again before it is written. Returns the row count."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(t.patient_identity.c.patient_id,
                                       t.patient_identity.c.data)).all()
            for pid, data in rows:
                plain = self._open_identity(pid, data, keyring)
                sealed = keyring.encrypt_json(plain, context=pid)
                if keyring.decrypt_json(sealed, context=pid) != plain:
                    raise StoreError(f"re-encryption of patient {pid!r} did not round-trip")
                conn.execute(update(t.patient_identity)
                             .where(t.patient_identity.c.patient_id == pid)
                             .values(data={"enc": sealed}))
        self.keyring = keyring
        return len(rows)

    # --- reading ---------------------------------------------------------------------------
    def patients(self) -> pd.DataFrame:
        """All patients with their number of stored events (no identifying fields)."""
        counts = (select(t.events.c.patient_id, func.count().label("events"))
                  .group_by(t.events.c.patient_id).subquery())
        q = (select(t.patients.c.id, t.patients.c.gender, t.patients.c.birth_year,
                    t.patients.c.deceased, func.coalesce(counts.c.events, 0).label("events"))
             .outerjoin(counts, counts.c.patient_id == t.patients.c.id)
             .order_by(t.patients.c.id))
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(q).mappings().all(),
                                columns=["id", "gender", "birth_year", "deceased", "events"])

    def has_patient(self, patient_id: str) -> bool:
        """Whether ``patient_id`` is stored (reads no identifying field)."""
        with self.engine.connect() as conn:
            return conn.scalar(select(t.patients.c.id).where(t.patients.c.id == patient_id)
                               ) is not None

    def patient(self, patient_id: str) -> Patient:
        """One patient with identity fields; :class:`NotFoundError` if not stored."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.patients).where(t.patients.c.id == patient_id)
                               ).mappings().first()
            if row is None:
                raise _unknown_patient(patient_id)
            ident = conn.scalar(select(t.patient_identity.c.data).where(
                t.patient_identity.c.patient_id == patient_id))
        return Patient(id=row["id"], source_id=row["source_id"], gender=row["gender"],
                       birth_year=row["birth_year"], deceased=bool(row["deceased"]),
                       identity=self._open_identity(patient_id, ident))

    def _select(self, patient_id: str, kinds: Iterable[str] | None, codes: Iterable[str] | None,
                since: datetime | None, until: datetime | None) -> Any:
        q = select(t.events.c.seq, t.events.c.kind, t.events.c.source_id, t.events.c.payload,
                   t.events.c.code, t.events.c.time, t.events.c.value, t.events.c.unit
                   ).where(t.events.c.patient_id == patient_id)
        if kinds:
            q = q.where(t.events.c.kind.in_(list(kinds)))
        if codes:
            q = q.where(t.events.c.code.in_(list(codes)))
        if since is not None:
            q = q.where(t.events.c.time >= since)
        if until is not None:
            q = q.where(t.events.c.time < until)
        return q.order_by(t.events.c.time, t.events.c.seq)

    def _rows(self, patient_id: str, kinds: Iterable[str] | None, codes: Iterable[str] | None,
              since: datetime | None, until: datetime | None) -> list[Any]:
        if not self.has_patient(patient_id):
            raise _unknown_patient(patient_id)
        with self.engine.connect() as conn:
            rows = conn.execute(self._select(patient_id, kinds, codes, since, until)).all()
        latest: dict[tuple[str, str], Any] = {}
        for r in rows:  # a newer version of the same source record replaces the older
            key = (r.kind, r.source_id)
            if key not in latest or r.seq > latest[key].seq:
                latest[key] = r
        keep = {id(r) for r in latest.values()}
        return [r for r in rows if id(r) in keep]

    def timeline(self, patient_id: str, *, kinds: Iterable[str] | None = None,
                 codes: Iterable[str] | None = None, since: datetime | None = None,
                 until: datetime | None = None) -> list[ClinicalRecord]:
        """A patient's records in time order, filtered by kind, code and [since, until)."""
        return [RECORD_OF_KIND[r.kind].from_dict(r.payload)
                for r in self._rows(patient_id, kinds, codes, since, until)]

    def timeline_entries(self, patient_id: str, *, kinds: Iterable[str] | None = None,
                         codes: Iterable[str] | None = None, since: datetime | None = None,
                         until: datetime | None = None) -> list[dict[str, Any]]:
        """The timeline as plain rows (time, kind, code, display, value, unit, source_id),
        without rebuilding records: the fast path for listing."""
        return [{"time": r.time, "kind": r.kind, "code": r.code,
                 "display": r.payload.get("display"), "value": r.value, "unit": r.unit,
                 "source_id": r.source_id}
                for r in self._rows(patient_id, kinds, codes, since, until)]

    def timeline_frame(self, patient_id: str, *, kinds: Iterable[str] | None = None,
                       codes: Iterable[str] | None = None, since: datetime | None = None,
                       until: datetime | None = None) -> pd.DataFrame:
        """The timeline as a tidy DataFrame: time, kind, code, display, value, unit, source_id."""
        rows = self.timeline_entries(patient_id, kinds=kinds, codes=codes, since=since,
                                     until=until)
        frame = pd.DataFrame(rows, columns=["time", "kind", "code", "display", "value", "unit",
                                            "source_id"])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        frame["value"] = frame["value"].astype("Float64")
        return frame

    def records_after(self, patient_id: str, after_seq: int, *,
                      kinds: Iterable[str] | None = None, limit: int = 1000
                      ) -> list[tuple[int, ClinicalRecord]]:
        """(sequence number, record) of the patient's events appended after ``after_seq``, in
        append order: what a live feed pushes next. ``after_seq=-1`` means "from now": it
        returns only the current last number, with a ``None``-free empty list."""
        q = (select(t.events.c.seq, t.events.c.kind, t.events.c.payload)
             .where(t.events.c.patient_id == patient_id, t.events.c.seq > after_seq)
             .order_by(t.events.c.seq).limit(limit))
        if kinds:
            q = q.where(t.events.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [(r.seq, RECORD_OF_KIND[r.kind].from_dict(r.payload)) for r in rows]

    def last_seq(self) -> int:
        """The number of the last appended event (0 for an empty store)."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.max(t.events.c.seq))) or 0)

    def counts(self, patient_id: str | None = None) -> dict[str, int]:
        """Number of stored events by kind (all versions), for one patient or all."""
        q = select(t.events.c.kind, func.count()).group_by(t.events.c.kind)
        if patient_id is not None:
            q = q.where(t.events.c.patient_id == patient_id)
        with self.engine.connect() as conn:
            return {k: n for k, n in conn.execute(q).all()}

    def dead_letters(self) -> pd.DataFrame:
        """Rejected input kept with its reason."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.dead_letters).order_by(t.dead_letters.c.id)).mappings()
            return pd.DataFrame(rows.all(),
                                columns=["id", "source", "reason", "payload", "recorded_at"])


def _unknown_patient(patient_id: str) -> NotFoundError:
    return NotFoundError(f"no patient {patient_id!r} in the store; `medtwin patients` lists them")


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]
