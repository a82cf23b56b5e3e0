"""The append-only event store: records in, timelines out.

Every record is appended with an idempotency key (its kind, source id and content hash), so
re-importing a file or a retried message stores nothing twice. A record whose source id was
seen before with other content is a new version: it is appended too, and reads show the
latest version. Nothing is updated in place. One ``append`` (or one ``append_batches``) is one
transaction.

A record is serialised once, to its canonical JSON (sorted keys, compact): that text is both
what the content hash covers and the stored payload. Events go to the database in bulk (one
``executemany`` on SQLite, one ``INSERT ... SELECT FROM unnest(...)`` per few thousand rows
on PostgreSQL), each with ``ON CONFLICT DO NOTHING``, so the count of stored rows comes from
the database itself.

A record whose FHIR resource is deleted gets a tombstone version (quality ``"deleted"``,
:meth:`EventStore.tombstone_in`): reads and live feeds leave it out, its history keeps it.
A write may carry the FHIR resource of each record (``resources``), stored in the same
transaction (:class:`~medtwin.store.resources.ResourceStore`).

Identifying fields are sealed by an :class:`IdentityCipher` (medtwin's ``security.crypto.
KeyRing``) handed in at open, and stored as ``{"enc": ciphertext}``; a store opened without
one keeps them as plain JSON (tests, throw-away stores) and refuses to show sealed ones.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
from sqlalchemy import (
    DateTime,
    Engine,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from medtwin.core.errors import ConflictError, NotFoundError, StoreError
from medtwin.core.records import RECORD_OF_KIND, ClinicalRecord, Patient
from medtwin.store import schema as t
from medtwin.store.engine import describe, make_engine
from medtwin.store.rows import AppendResult, Batch, idempotency_key, prepare_rows
from medtwin.store.versions import version_conflicts

if TYPE_CHECKING:
    from medtwin.store.migrate import Upgrade

log = logging.getLogger(__name__)

_CHUNK = 500
_BULK = 5000  # events per INSERT statement on PostgreSQL
_SQLITE_ROWS = 500  # ... and at most this many on SQLite
_EVENT_COLUMNS = ("idem_key", "kind", "patient_id", "source_id", "code", "time", "value",
                  "unit", "payload", "quality")
_PG_ARRAY_TYPES = ("text", "text", "text", "text", "text", "timestamptz", "float8", "text",
                   "json", "text")
REFUSED_SOURCE = "append-only"  # the dead letters' source for refused versions
DELETED = "deleted"  # events.quality of a tombstone: the record's source was deleted


class IdentityCipher(Protocol):
    """Seals and opens JSON values bound to a context (the patient id)."""

    def encrypt_json(self, value: Any, *, context: str) -> str: ...

    def decrypt_json(self, token: str, *, context: str) -> Any: ...


class EventStore:
    """medtwin's store on one database (SQLite file by default, PostgreSQL by URL)."""

    def __init__(self, engine: Engine, *, keyring: IdentityCipher | None = None) -> None:
        self.engine = engine
        self.keyring = keyring
        self.schema_upgrade: Upgrade | None = None  # what open() did to the schema

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, *, schema: str | None = None,
             create: bool = True, keyring: IdentityCipher | None = None) -> EventStore:
        """Open the store at ``db`` (path or URL), upgrading an older schema under the
        migration lock (``store.migrate``); ``create`` makes a missing store, else it is
        refused (:class:`~medtwin.store.migrate.StoreNotFoundError`), as is a schema newer
        than this medtwin. ``keyring`` seals identifying fields at rest."""
        from medtwin.store.migrate import ensure

        engine = make_engine(db, schema=schema, create=create)
        try:
            done = ensure(engine, schema=schema, create=create)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the store at {describe(engine)}: {exc.orig or exc}"
                             "; check the URL and that the server is running") from exc
        except StoreError:
            engine.dispose()
            raise
        store = cls(engine, keyring=keyring)
        store.schema_upgrade = done
        return store

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
               rows: list[dict[str, Any]] | None = None,
               quality: Sequence[str | None] | None = None, may_amend: bool = False,
               on_conflict: str = "raise", resources: Sequence[Any] = ()
               ) -> AppendResult:
        """Append patients and records in one transaction; already-stored ones are skipped.

        ``dead_letters`` are (source, reason, raw payload) rows kept for rejected input.
        ``rows`` may carry :func:`prepare_rows` of ``records``, computed beforehand;
        ``quality`` each record's data-quality flag (a flagged record is kept, never scored).
        A record whose subject is not a known patient (here or in ``patients``) is refused
        with :class:`NotFoundError` and nothing is written. Records are append-only: see
        :meth:`append_batches` for ``may_amend`` and ``on_conflict``. ``resources`` (the
        FHIR resource of each record, see :class:`Batch`) are stored in the same transaction.
        """
        (result,) = self.append_batches([Batch(patients, records, dead_letters, rows, quality,
                                               resources)],
                                        may_amend=may_amend, on_conflict=on_conflict)
        return result

    def append_batches(self, batches: Sequence[Batch], *, may_amend: bool = False,
                       on_conflict: str = "raise") -> list[AppendResult]:
        """Append several batches in one transaction (one commit): all of them or, on any
        error, none. Each batch sees the patients of the batches before it, and a record
        already in an earlier batch is a duplicate, as if the batches were appended one
        after the other. Returns one :class:`AppendResult` per batch.

        Different content under a stored (kind, source id) is a new version, written only
        when ``may_amend`` (an EHR import; never a device nor a REST POST), and never when it
        would move the record to another patient or code. A refused record raises
        :class:`ConflictError` with nothing written (``on_conflict="raise"``), or is kept
        as a dead letter with the reason while the rest is written
        (``on_conflict="dead-letter"``, a stream that must not stop for one bad message).
        Batches with ``resources`` store them too (a refused record's resource is not).
        """
        if any(b.resources for b in batches):
            from medtwin.store.resources import ResourceBatch, ResourceStore

            for b in batches:
                if b.resources and len(b.resources) != len(b.rows or b.records):
                    raise ValueError(f"{len(b.resources)} resources for "
                                     f"{len(b.rows or b.records)} records")
            done = ResourceStore(self).write_batches(
                [ResourceBatch(b, b.resources, range(len(b.resources))) for b in batches],
                may_amend=may_amend, on_conflict=on_conflict)
            return [res for res, _counts in done]
        try:
            with self.engine.begin() as conn:
                return self.append_in(conn, batches, may_amend=may_amend,
                                      on_conflict=on_conflict)
        except SQLAlchemyError as exc:
            raise StoreError(f"write to {describe(self.engine)} failed and was rolled back: "
                             f"{getattr(exc, 'orig', None) or exc}") from exc

    def append_in(self, conn: Any, batches: Sequence[Batch], *, may_amend: bool = False,
                  on_conflict: str = "raise") -> list[AppendResult]:
        """:meth:`append_batches` inside the caller's transaction ``conn`` (so that a FHIR
        resource and the records derived from it are written in one commit)."""
        if on_conflict not in ("raise", "dead-letter"):
            raise ValueError(f"on_conflict must be 'raise' or 'dead-letter', not {on_conflict!r}")
        now = datetime.now(UTC)
        prepared = [prepare_rows(b.records, b.quality) if b.rows is None else b.rows
                    for b in batches]
        refused = version_conflicts(conn, prepared, may_amend=may_amend)
        if on_conflict == "raise" and any(refused):
            reasons = [why for bad in refused for why in bad.values()]
            more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
            raise ConflictError(reasons[0] + more)
        kept = [[r for i, r in enumerate(rows) if i not in bad] if bad else rows
                for rows, bad in zip(prepared, refused, strict=True)]
        added = self._add_patients(conn, batches, kept, now)
        stored = self._insert_events(conn, kept, now)
        letters = [{"source": _keepable(src), "reason": _keepable(why),
                    "payload": _keepable(raw), "recorded_at": now}
                   for b in batches for src, why, raw in b.dead_letters]
        letters += [{"source": REFUSED_SOURCE, "reason": why,
                     "payload": _payload_text(rows[i]["payload"]), "recorded_at": now}
                    for rows, bad in zip(prepared, refused, strict=True)
                    for i, why in bad.items()]
        if letters:
            conn.execute(insert(t.dead_letters), letters)
        if any(refused):
            log.warning("refused %d record version(s) a writer may not make",
                        sum(map(len, refused)))
        return [AppendResult(stored=n, duplicates=len(rows) - n, patients_added=a,
                             refused=len(bad), refusals=tuple(bad.items()))
                for rows, n, a, bad in zip(kept, stored, added, refused, strict=True)]

    def tombstone_in(self, conn: Any, source_ids: Iterable[str]) -> int:
        """Inside the caller's transaction: mark the records of ``source_ids`` deleted (a
        FHIR delete of the resource they were derived from) by appending a tombstone
        version of each (same kind, source id, patient, code and time; quality
        :data:`DELETED`), so that timelines, latest values and live feeds no longer show
        them and a twin never uses them; their history keeps every version. A record
        written again afterwards is a new version over the tombstone. Returns how many
        records were marked."""
        e = t.events.c
        ids = sorted(set(source_ids))
        latest: dict[tuple[str, str], Any] = {}
        for chunk in _chunks(ids):
            q = (select(e.seq, e.idem_key, e.kind, e.patient_id, e.source_id, e.code, e.time,
                        e.value, e.unit, e.payload, e.quality)
                 .where(e.source_id.in_(chunk)).order_by(e.seq))
            for r in conn.execute(q):
                latest[(r.kind, r.source_id)] = r
        rows = [{"idem_key": idempotency_key(r.kind, r.source_id, f"{DELETED}\x1f{r.idem_key}"),
                 "kind": r.kind, "patient_id": r.patient_id, "source_id": r.source_id,
                 "code": r.code, "time": r.time, "value": r.value, "unit": r.unit,
                 "payload": _payload_text(r.payload), "quality": DELETED}
                for r in latest.values() if r.quality != DELETED]
        if rows:
            self._insert_events(conn, [rows], datetime.now(UTC))
        return len(rows)

    def _add_patients(self, conn: Any, batches: Sequence[Batch],
                      prepared: list[list[dict[str, Any]]], now: datetime) -> list[int]:
        """Store the batches' new patients (one look-up and one insert for them all) and
        return how many each batch added; :class:`NotFoundError` for the first batch with a
        record whose patient is neither stored nor in that batch or one before it."""
        wanted = {r["patient_id"] for rows in prepared for r in rows if r["patient_id"]}
        ids = sorted(wanted | {p.id for b in batches for p in b.patients})
        known: set[str] = set()
        for chunk in _chunks(ids):
            known |= set(conn.scalars(select(t.patients.c.id).where(t.patients.c.id.in_(chunk))))
        new: dict[str, Patient] = {}
        added = []
        for batch, rows in zip(batches, prepared, strict=True):
            mine = {p.id: p for p in batch.patients if p.id not in known}  # the last one wins
            missing = {r["patient_id"] for r in rows if r["patient_id"]} - known - mine.keys()
            if missing:
                raise NotFoundError(
                    f"records refer to unknown patient(s) {sorted(missing)[:5]}; import the "
                    "Patient resource first or in the same bundle")
            known |= mine.keys()
            new.update(mine)
            added.append(len(mine))
        if new:
            conn.execute(self._insert_ignore(t.patients), [
                {"id": p.id, "source_id": p.source_id, "gender": p.gender,
                 "birth_year": p.birth_year, "deceased": p.deceased, "recorded_at": now}
                for p in new.values()])
            conn.execute(self._insert_ignore(t.patient_identity), [
                {"patient_id": p.id, "data": self._seal(p.id, p.identity), "recorded_at": now}
                for p in new.values()])
        return added

    def _insert_events(self, conn: Any, prepared: list[list[dict[str, Any]]],
                       now: datetime) -> list[int]:
        """Insert the batches' events, skipping keys already stored (or earlier in these
        batches); return how many each batch stored, as counted by the database."""
        seen: set[str] = set()
        unique: list[list[dict[str, Any]]] = []
        for rows in prepared:
            mine = []
            for r in rows:
                if r["idem_key"] not in seen:
                    seen.add(r["idem_key"])
                    mine.append(r)
            unique.append(mine)
        if not seen:
            return [0] * len(prepared)
        dialect = conn.dialect
        to_db = t.events.c.time.type.dialect_impl(dialect).bind_processor(dialect) or _same
        if dialect.name == "sqlite":
            return [self._insert_sqlite(conn, rows, to_db, to_db(now)) for rows in unique]
        if dialect.name == "postgresql":
            return self._insert_pg(conn, unique, to_db, to_db(now))
        return [self._insert_generic(conn, rows, now) for rows in unique]

    @staticmethod
    def _insert_sqlite(conn: Any, rows: list[dict[str, Any]], to_db: Callable[[Any], Any],
                       recorded_at: Any) -> int:
        """Multi-row INSERTs: one statement runs in one step of SQLite, which gives the GIL
        back once per statement rather than once per row (``executemany``)."""
        prep = conn.dialect.identifier_preparer
        cols = ", ".join(prep.quote(c) for c in (*_EVENT_COLUMNS, "recorded_at"))
        width = len(_EVENT_COLUMNS) + 1
        per = max(1, min(_SQLITE_ROWS, _sqlite_variables(conn) // width))
        stored = 0
        for i in range(0, len(rows), per):
            part = rows[i:i + per]
            marks = ", ".join([f"({', '.join('?' * width)})"] * len(part))
            params = [v for r in part for v in (
                r["idem_key"], r["kind"], r["patient_id"], r["source_id"], r["code"],
                to_db(r["time"]), r["value"], r["unit"], _payload_text(r["payload"]),
                r.get("quality"), recorded_at)]
            stored += int(conn.exec_driver_sql(
                f"INSERT INTO {prep.format_table(t.events)} ({cols}) VALUES {marks} "
                "ON CONFLICT DO NOTHING", tuple(params)).rowcount)
        return stored

    @staticmethod
    def _insert_pg(conn: Any, unique: list[list[dict[str, Any]]],
                   to_db: Callable[[Any], Any], recorded_at: Any) -> list[int]:
        """``INSERT ... SELECT FROM unnest(typed arrays)``, a few thousand rows a statement
        for all the batches at once; the keys it returns tell which batch stored what."""
        prep = conn.dialect.identifier_preparer
        cols = ", ".join(prep.quote(c) for c in (*_EVENT_COLUMNS, "recorded_at"))
        arrays = ", ".join(f"%({c})b::{ty}[]" for c, ty in zip(_EVENT_COLUMNS, _PG_ARRAY_TYPES,
                                                              strict=True))
        sql = (f"INSERT INTO {prep.format_table(t.events)} ({cols}) SELECT u.*, "
               f"%(recorded_at)s::timestamptz FROM unnest({arrays}) AS u "
               f"ON CONFLICT DO NOTHING RETURNING {prep.quote('idem_key')}")
        owner = {r["idem_key"]: i for i, rows in enumerate(unique) for r in rows}
        rows = [r for part in unique for r in part]
        stored = [0] * len(unique)
        for i in range(0, len(rows), _BULK):
            part = rows[i:i + _BULK]
            params: dict[str, Any] = {  # typed arrays: one type per array
                c: [_text_or_none(r.get(c)) for r in part] if ty == "text"
                else [r[c] for r in part]
                for c, ty in zip(_EVENT_COLUMNS, _PG_ARRAY_TYPES, strict=True)}
            params["time"] = [to_db(v) for v in params["time"]]
            params["value"] = [None if v is None else float(v) for v in params["value"]]
            params["payload"] = [_payload_text(v) for v in params["payload"]]
            params["recorded_at"] = recorded_at
            for (key,) in conn.exec_driver_sql(sql, params):
                stored[owner[key]] += 1
        return stored

    @staticmethod
    def _insert_generic(conn: Any, rows: list[dict[str, Any]], now: datetime) -> int:
        existing: set[str] = set()
        for chunk in _chunks([r["idem_key"] for r in rows]):
            existing |= set(conn.scalars(select(t.events.c.idem_key).where(
                t.events.c.idem_key.in_(chunk))))
        fresh = [{**r, "payload": _payload_value(r["payload"]), "quality": r.get("quality"),
                  "recorded_at": now}
                 for r in rows if r["idem_key"] not in existing]
        if fresh:
            conn.execute(insert(t.events), fresh)
        return len(fresh)

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
        return self.patient_recorded_at(patient_id) is not None

    def patient_recorded_at(self, patient_id: str) -> datetime | None:
        """When ``patient_id``'s row was stored (``None``: not stored); reads no identifying
        field."""
        with self.engine.connect() as conn:
            return conn.scalar(select(t.patients.c.recorded_at)
                               .where(t.patients.c.id == patient_id))

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
        e = t.events.c
        q = select(e.seq, e.kind, e.source_id, e.payload, e.code, e.time, e.value, e.unit,
                   e.quality).where(e.patient_id == patient_id)
        if kinds:
            q = q.where(e.kind.in_(list(kinds)))
        if codes:
            q = q.where(e.code.in_(list(codes)))
        if since is not None:
            q = q.where(e.time >= since)
        if until is not None:
            q = q.where(e.time < until)
        return q

    def _rows(self, patient_id: str, kinds: Iterable[str] | None, codes: Iterable[str] | None,
              since: datetime | None, until: datetime | None, *,
              include_flagged: bool = False) -> list[Any]:
        if not self.has_patient(patient_id):
            raise _unknown_patient(patient_id)
        q = self._select(patient_id, kinds, codes, since, until).order_by(t.events.c.time,
                                                                          t.events.c.seq)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        latest: dict[tuple[str, str], Any] = {}
        for r in rows:  # a newer version of the same source record replaces the older
            key = (r.kind, r.source_id)
            if key not in latest or r.seq > latest[key].seq:
                latest[key] = r
        keep = {id(r) for r in latest.values()
                if r.quality != DELETED and (include_flagged or r.quality is None)}
        return [r for r in rows if id(r) in keep]

    def timeline(self, patient_id: str, *, kinds: Iterable[str] | None = None,
                 codes: Iterable[str] | None = None, since: datetime | None = None,
                 until: datetime | None = None, include_flagged: bool = False
                 ) -> list[ClinicalRecord]:
        """A patient's records in time order, filtered by kind, code and [since, until).

        Records with a data-quality flag (e.g. dated in the future) are left out unless
        ``include_flagged``: what models, scores and twins read is trusted data only."""
        return [RECORD_OF_KIND[r.kind].from_dict(r.payload)
                for r in self._rows(patient_id, kinds, codes, since, until,
                                    include_flagged=include_flagged)]

    def timeline_entries(self, patient_id: str, *, kinds: Iterable[str] | None = None,
                         codes: Iterable[str] | None = None, since: datetime | None = None,
                         until: datetime | None = None, include_flagged: bool = True
                         ) -> list[dict[str, Any]]:
        """The timeline as plain rows (time, kind, code, display, value, unit, source_id,
        quality), without rebuilding records: the fast path for listing. Flagged rows are
        listed (with their flag) by default: clinicians see what arrived and why it is
        not used."""
        return [_entry(r) for r in self._rows(patient_id, kinds, codes, since, until,
                                              include_flagged=include_flagged)]

    def timeline_page(self, patient_id: str, *, kinds: Iterable[str] | None = None,
                      codes: Iterable[str] | None = None, since: datetime | None = None,
                      until: datetime | None = None, limit: int = 1000,
                      after: tuple[datetime | None, int] | None = None
                      ) -> tuple[list[dict[str, Any]], tuple[datetime | None, int] | None]:
        """One page of :meth:`timeline_entries` (flagged rows included, with their flag):
        at most ``limit`` rows after the position ``after`` (a row's (time, seq), as
        returned for the previous page). Returns the rows and the position to ask for next
        (None on the last page). Rows without a time come first; only the newest version of
        each source record is listed, decided in the query, so pages never overlap."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        e = t.events.c
        newer = t.events.alias("newer")
        # only what is listed: the payload's display is read in the query (not the payload),
        # the time as naive UTC (tagged below; cheaper than converting each from the
        # session's zone)
        utc = (func.timezone("UTC", e.time, type_=DateTime())
               if self.engine.dialect.name == "postgresql" else type_coerce(e.time, DateTime()))
        q = select(e.kind, utc, e.code, e.payload["display"].as_string(), e.value, e.unit,
                   e.source_id, e.quality, e.seq).where(e.patient_id == patient_id)
        if kinds:
            q = q.where(e.kind.in_(list(kinds)))
        if codes:
            q = q.where(e.code.in_(list(codes)))
        if since is not None:
            q = q.where(e.time >= since)
        if until is not None:
            q = q.where(e.time < until)
        q = q.where(~exists().where(
            newer.c.kind == e.kind, newer.c.source_id == e.source_id,
            newer.c.patient_id == e.patient_id, newer.c.seq > e.seq)).where(
            or_(e.quality.is_(None), e.quality != DELETED))  # a deleted record is gone
        if after is not None:
            at, seq = after
            q = q.where(or_(and_(e.time.is_(None), e.seq > seq), e.time.is_not(None))
                        if at is None else
                        or_(e.time > at, and_(e.time == at, e.seq > seq)))
        q = q.order_by(e.time.asc().nulls_first(), e.seq).limit(limit + 1)
        with self.engine.connect() as conn:  # one connection for the check and the page
            if conn.scalar(select(t.patients.c.id).where(t.patients.c.id == patient_id)) is None:
                raise _unknown_patient(patient_id)
            rows = conn.execute(q).all()
        more = len(rows) > limit
        page = [{"kind": kind, "time": None if at is None else at.replace(tzinfo=UTC),
                 "code": code, "display": display, "value": value, "unit": unit,
                 "source_id": source_id, "quality": quality}
                for kind, at, code, display, value, unit, source_id, quality, _ in rows[:limit]]
        return page, (page[-1]["time"], rows[limit - 1][-1]) if more else None

    def history(self, patient_id: str, kind: str, source_id: str) -> list[dict[str, Any]]:
        """Every stored version of one of the patient's records, oldest first: its sequence
        number, when it was stored, its data-quality flag and the record. Empty when the
        patient has no record of that kind under that source id."""
        if not self.has_patient(patient_id):
            raise _unknown_patient(patient_id)
        e = t.events.c
        q = (select(e.seq, e.recorded_at, e.quality, e.payload)
             .where(e.kind == kind, e.source_id == source_id, e.patient_id == patient_id)
             .order_by(e.seq))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [{"version": n, "seq": r.seq, "recorded_at": r.recorded_at,
                 "quality": r.quality, "record": RECORD_OF_KIND[kind].from_dict(r.payload)}
                for n, r in enumerate(rows, 1)]

    def timeline_frame(self, patient_id: str, *, kinds: Iterable[str] | None = None,
                       codes: Iterable[str] | None = None, since: datetime | None = None,
                       until: datetime | None = None, include_flagged: bool = False
                       ) -> pd.DataFrame:
        """The timeline as a tidy DataFrame: time, kind, code, display, value, unit,
        source_id, quality. For charts and analysis, so flagged rows are left out unless
        ``include_flagged`` (one reading dated 9999 would stretch every time axis)."""
        rows = self.timeline_entries(patient_id, kinds=kinds, codes=codes, since=since,
                                     until=until, include_flagged=include_flagged)
        frame = pd.DataFrame(rows, columns=["time", "kind", "code", "display", "value", "unit",
                                            "source_id", "quality"])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        frame["value"] = frame["value"].astype("Float64")
        return frame

    def records_after(self, patient_id: str, after_seq: int, *,
                      kinds: Iterable[str] | None = None, limit: int = 1000
                      ) -> list[tuple[int, ClinicalRecord]]:
        """(sequence number, record) of the patient's events appended after ``after_seq``, in
        append order: what a live feed and a twin take in next. Only trusted records: a
        quarantined reading (dated in the future) or a deleted one is never fed to a twin
        (one dated 2099 would make it integrate for 70 years) nor pushed as current.
        ``after_seq=-1`` means "from now": it returns only the current last number, with a
        ``None``-free empty list."""
        q = (select(t.events.c.seq, t.events.c.kind, t.events.c.payload)
             .where(t.events.c.patient_id == patient_id, t.events.c.seq > after_seq,
                    t.events.c.quality.is_(None))
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


def _entry(r: Any) -> dict[str, Any]:
    return {"time": r.time, "kind": r.kind, "code": r.code,
            "display": r.payload.get("display"), "value": r.value, "unit": r.unit,
            "source_id": r.source_id, "quality": r.quality}


def _unknown_patient(patient_id: str) -> NotFoundError:
    return NotFoundError(f"no patient {patient_id!r} in the store; `medtwin patients` lists them")


def _keepable(text: str) -> str:
    """Rejected input as text every backend keeps: a NUL (which PostgreSQL refuses in text,
    and which is often the very reason the input was rejected) becomes U+FFFD, so a dead
    letter is never itself lost."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _same(value: Any) -> Any:
    return value


def _sqlite_variables(conn: Any) -> int:
    """How many ``?`` one SQLite statement may hold on this connection."""
    try:
        return int(conn.connection.driver_connection.getlimit(
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    except (AttributeError, sqlite3.Error):  # an older sqlite3 module: the old default
        return 999


def _payload_text(payload: Any) -> str:
    """A row's payload as JSON text: :func:`prepare_rows` gives text, older callers a dict."""
    return payload if isinstance(payload, str) else json.dumps(payload)


def _text_or_none(value: Any) -> str | None:
    return value if value is None or type(value) is str else str(value)


def _payload_value(payload: Any) -> Any:
    return json.loads(payload) if isinstance(payload, str) else payload


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]
