"""Every FHIR resource as received, versioned: the lossless record under the typed one.

A write stores the resource's canonical JSON (sorted keys, compact, without
``meta.versionId`` / ``meta.lastUpdated``, which the store assigns) once, as a new row of the
append-only ``fhir_versions``; ``fhir_current`` points at the current version with the
resource's patient compartment, and ``fhir_search`` holds the current version's
search-parameter values. The same content again is no new version (idempotent re-import);
a logical delete is a version without content. The typed records derived from a resource
(``events``) are written in the same transaction (:meth:`ResourceStore.write_batches`,
:meth:`ResourceStore.transaction`), so a resource and its records are stored together or
not at all.

This module knows no FHIR semantics beyond ids and ``meta``: the caller (``interop.fhir``)
validates, maps and indexes, handing in :class:`ResourceWrite` rows and
:class:`~medtwin.store.search_index.Query` objects.

Encryption at rest: a store opened with a key ring (``EventStore(keyring=...)``, medtwin's
``security.crypto.KeyRing``) seals the content of every version with AES-GCM under the
ring's current key, bound to ``Type/id/version`` (a sealed row moved to another resource or
version no longer opens; the token names its key, so rows sealed before a rotation open as
long as the ring holds that key, and :meth:`ResourceStore.reseal` re-encrypts them). Content
hashes become keyed (HMAC), so equal content still means an idempotent re-import but a hash
confirms no guess. Search rows marked ``blind`` (identifying values: names, addresses,
telecom, birth dates, identifiers) keep their ``value`` / ``raw`` only as keyed hashes (a
blind index), under a key derived from the ring's pseudonym secret, which key rotation keeps
(so rotation never has to rebuild the index). What stays in the clear is what search and
access need and does not identify a person: type, id, version, the patient compartment id,
``lastUpdated``, codes, references, and clinical dates such as ``Observation.effective``
(HIPAA Safe Harbor counts every date of an individual as identifying, but the ``events``
table keeps clinical times in the clear for the twins, and this keeps parity with it; a
birth date's year alone, which ``patients.birth_year`` keeps too). A store without a key
ring keeps everything unsealed (tests, throw-away stores), as :class:`EventStore` does, and
refuses to show sealed rows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    not_,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from medtwin.core.errors import (
    ConflictError,
    GoneError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    ValidationError,
)
from medtwin.store import schema as t
from medtwin.store.engine import describe
from medtwin.store.event_store import EventStore
from medtwin.store.rows import AppendResult, Batch
from medtwin.store.search_index import (
    ANY,
    MAX_TEXT,
    Clause,
    DateTest,
    IndexRow,
    Query,
    ReferenceTest,
    SortKey,
    StringTest,
    TokenTest,
)

log = logging.getLogger(__name__)

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_STORE_META = ("versionId", "lastUpdated")
_CHUNK = 500
_PG_ROWS = 5000  # rows per INSERT ... SELECT FROM unnest(...) on PostgreSQL
_BLIND_INFO = b"medtwin-fhir-blind-index-1"


class ResourceCipher(Protocol):
    """What the store needs of a key ring (medtwin's ``security.crypto.KeyRing``): AES-GCM
    sealing bound to a context, and the secret its blind-index key is derived from."""

    pseudonym_secret: bytes

    def encrypt(self, plaintext: bytes, *, context: str) -> str: ...

    def decrypt(self, token: str, *, context: str) -> bytes: ...
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def check_id(rid: Any, *, where: str = "id") -> str:
    """``rid`` if it is a FHIR id (1-64 of A-Z a-z 0-9 - .), else :class:`ValidationError`."""
    if not isinstance(rid, str) or not FHIR_ID.match(rid):
        raise ValidationError(f"invalid resource id {rid!r}: a FHIR id is 1-64 characters of "
                              "A-Z, a-z, 0-9, '-' and '.'", where=where)
    return rid


def canonical(resource: dict[str, Any]) -> tuple[str, str]:
    """(canonical JSON text, its SHA-256) of ``resource`` without the ``meta`` elements the
    store assigns (``versionId``, ``lastUpdated``): equal content gives equal text."""
    meta = resource.get("meta")
    if isinstance(meta, dict) and any(k in meta for k in _STORE_META):
        rest = {k: v for k, v in meta.items() if k not in _STORE_META}
        resource = {k: v for k, v in resource.items() if k != "meta"}
        if rest:
            resource["meta"] = rest
    text = _ENCODE(resource)
    return text, hashlib.sha256(text.encode()).hexdigest()


def instant(when: datetime) -> str:
    """A FHIR ``instant`` (UTC, microseconds) for ``meta.lastUpdated``."""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ResourceWrite:
    """One write: the resource's canonical text and hash (:func:`canonical`), its patient
    compartment and search-index rows; ``content`` None is a delete. ``if_match`` is the
    version the writer expects to be current (a version conflict raises
    :class:`PreconditionFailedError`); ``if_absent`` writes only when no version exists."""

    resource_type: str
    id: str
    content: str | None
    content_hash: str = ""
    patient_id: str | None = None
    index: tuple[IndexRow, ...] = ()
    if_match: int | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # as plain fields and index rows as plain tuples (an importer's workers send
        # thousands a second): pickle's default for a slotted dataclass and a NamedTuple
        # runs Python code per object (about 30 µs a resource, both ways)
        return _resource_write, (self.resource_type, self.id, self.content,
                                 self.content_hash, self.patient_id,
                                 tuple(map(tuple, self.index)), self.if_match)


def _resource_write(resource_type: str, id: str, content: str | None, content_hash: str,
                    patient_id: str | None, index: tuple[tuple[Any, ...], ...],
                    if_match: int | None) -> ResourceWrite:
    """A :class:`ResourceWrite` again from what its ``__reduce__`` gave."""
    new = tuple.__new__
    return ResourceWrite(resource_type, id, content, content_hash, patient_id,
                         tuple([new(IndexRow, r) for r in index]), if_match)


@dataclass(frozen=True, slots=True)
class StoredResource:
    """One stored version. For a write's result, ``created`` says the resource is new and
    ``changed`` whether a version was written (False: the same content was current, or a
    delete of what was absent or deleted already)."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    deleted: bool
    patient_id: str | None
    content: str | None
    created: bool = False
    changed: bool = False

    @property
    def reference(self) -> str:
        """``Type/id``."""
        return f"{self.resource_type}/{self.id}"

    @property
    def etag(self) -> str:
        """The HTTP ETag of this version: ``W/"<versionId>"``."""
        return f'W/"{self.version}"'

    def resource(self) -> dict[str, Any]:
        """The resource as JSON with ``meta.versionId`` and ``meta.lastUpdated`` set;
        :class:`GoneError` for a deleted version (it has no content)."""
        if self.content is None:
            raise GoneError(f"{self.reference} version {self.version} is a delete")
        data = json.loads(self.content)
        data["meta"] = {**data.get("meta", {}), "versionId": str(self.version),
                        "lastUpdated": instant(self.last_updated)}
        return data


    def text(self) -> str:
        """:meth:`resource` as compact JSON text (an NDJSON line of an export), made
        without parsing the stored content when it has no ``meta`` of its own."""
        if self.content is None:
            raise GoneError(f"{self.reference} version {self.version} is a delete")
        if '"meta":' in self.content:
            return json.dumps(self.resource(), separators=(",", ":"), ensure_ascii=False)
        return (f'{{"meta":{{"lastUpdated":"{instant(self.last_updated)}",'
                f'"versionId":"{self.version}"}},' + self.content[1:])


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search or history: the resources, the total (None unless asked for),
    and whether more follow this page."""

    resources: list[StoredResource]
    total: int | None
    offset: int
    count: int
    more: bool


@dataclass(frozen=True, slots=True)
class ResourceBatch:
    """An import's unit (one file): its typed records (``batch``) and its resources;
    ``row_resource[i]`` is the index in ``resources`` of the resource that record row ``i``
    of ``batch.rows`` was derived from (a refused record drops its resource too)."""

    batch: Batch
    resources: Sequence[ResourceWrite] = ()
    row_resource: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """Resources a write stored (new versions), found unchanged, or dropped because a
    record derived from them was refused."""

    stored: int = 0
    unchanged: int = 0
    dropped: int = 0
    dropped_ids: tuple[str, ...] = field(default_factory=tuple)


@dataclass(slots=True)
class _Current:
    version: int
    content_hash: str
    deleted: bool
    last_updated: datetime
    patient_id: str | None
    in_db: bool


class ResourceStore:
    """Versioned FHIR resources on an :class:`EventStore`'s database (same engine, same
    transactions). See the module docstring; ``/work/notes/h5_api.md`` for the contract."""

    def __init__(self, events: EventStore) -> None:
        self.events = events
        self.engine = events.engine
        self._blind: tuple[bytes, bytes] | None = None  # (pseudonym secret, derived key)

    # --- sealing -----------------------------------------------------------------------
    @property
    def cipher(self) -> ResourceCipher | None:
        """The event store's key ring (None: an unsealed store)."""
        return self.events.keyring  # type: ignore[return-value]

    def _blind_key(self, cipher: ResourceCipher) -> bytes:
        secret = cipher.pseudonym_secret
        if self._blind is None or self._blind[0] != secret:
            self._blind = (secret, hmac.digest(secret, _BLIND_INFO, "sha256"))
        return self._blind[1]

    def _mac(self, key: bytes, param: str, part: str, text: str) -> str:
        return hmac.digest(key, f"{param}\x1f{part}\x1f{text}".encode(), "sha256").hex()[:32]

    def _keyed_hash(self, key: bytes | None, digest: str) -> str:
        """A content hash as stored: keyed (HMAC) in a sealed store, so it confirms no
        guess of the content; equal content still gives equal hashes."""
        if key is None or not digest:
            return digest
        return hmac.digest(key, b"content\x1f" + digest.encode(), "sha256").hex()

    @staticmethod
    def _context(rtype: str, rid: str, version: int) -> str:
        return f"fhir:{rtype}/{rid}/{version}"

    def _open(self, rtype: str, rid: str, version: int, content: str | None,
              cipher: ResourceCipher | None = None) -> str | None:
        """A stored content opened (a sealed one needs the key ring)."""
        if content is None or content.startswith("{"):
            return content
        cipher = cipher or self.cipher
        if cipher is None:
            raise StoreError(f"{rtype}/{rid} is encrypted at rest; open the store with its "
                             "key ring (MEDTWIN_KEY or MEDTWIN_KEY_FILE)")
        return cipher.decrypt(content, context=self._context(rtype, rid, version)).decode()

    def reseal(self, keyring: ResourceCipher, *, batch: int = 2000) -> tuple[int, int]:
        """Re-encrypt the content of every version under ``keyring``'s current key (key
        rotation; ``keyring`` must still hold the old keys), in one transaction; each value
        is checked to open again before it is written. Unsealed rows (written before the
        store had a key ring) are sealed too and their content hashes keyed; their blind
        search rows are still in the clear then, so the caller rebuilds the index
        (``FhirRepository.reseal`` does). Returns (rows resealed, of which were unsealed)."""
        v = t.fhir_versions
        key = self._blind_key(keyring)
        done = plain = 0
        with self.transaction() as conn:
            last = -1
            while True:
                rows = conn.execute(
                    select(v.c.seq, v.c.res_type, v.c.res_id, v.c.version, v.c.content)
                    .where(v.c.seq > last, v.c.content.is_not(None))
                    .order_by(v.c.seq).limit(batch)).all()
                if not rows:
                    break
                last = rows[-1].seq
                sealed, rehash = [], []
                for r in rows:
                    text = self._open(r.res_type, r.res_id, r.version, r.content, keyring)
                    assert text is not None
                    ctx = self._context(r.res_type, r.res_id, r.version)
                    token = keyring.encrypt(text.encode(), context=ctx)
                    if keyring.decrypt(token, context=ctx).decode() != text:
                        raise StoreError(f"re-encryption of {r.res_type}/{r.res_id} did not "
                                         "round-trip; nothing was changed")
                    sealed.append({"s": r.seq, "c": token})
                    if r.content.startswith("{"):
                        digest = hashlib.sha256(text.encode()).hexdigest()
                        rehash.append({"s": r.seq, "h": self._keyed_hash(key, digest)})
                conn.execute(update(v).where(v.c.seq == bindparam("s"))
                             .values(content=bindparam("c")), sealed)
                if rehash:
                    for table in (v, t.fhir_current):
                        conn.execute(update(table).where(table.c.seq == bindparam("s"))
                                     .values(content_hash=bindparam("h")), rehash)
                done += len(sealed)
                plain += len(rehash)
        return done, plain

    def replace_index(self, writes: Sequence[ResourceWrite]) -> None:
        """Rebuild the search rows of the current versions ``writes`` stand for (after an
        unsealed store was sealed: its blind rows become keyed hashes)."""
        cipher = self.cipher
        key = self._blind_key(cipher) if cipher is not None else None
        with self.transaction() as conn:
            self._replace_index(conn, [(w.resource_type, w.id) for w in writes], writes, key)

    def _stored(self, r: Any) -> StoredResource:
        return StoredResource(r.res_type, r.res_id, int(r.version), r.last_updated,
                              bool(r.deleted), r.patient_id,
                              self._open(r.res_type, r.res_id, int(r.version), r.content))

    # --- transactions and writes -------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One database transaction (commit at the end, rollback on any error); database
        errors become :class:`StoreError`, a concurrent version :class:`ConflictError`."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError as exc:
            raise ConflictError("another writer changed the same resource at the same time; "
                                "nothing was written: read it again and retry") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"write to {describe(self.engine)} failed and was rolled back: "
                             f"{getattr(exc, 'orig', None) or exc}") from exc

    def write(self, writes: Sequence[ResourceWrite]) -> list[StoredResource]:
        """Write ``writes`` in one transaction; one :class:`StoredResource` each."""
        with self.transaction() as conn:
            return self.write_in(conn, writes)

    def write_batches(self, batches: Sequence[ResourceBatch], *, may_amend: bool = False,
                      on_conflict: str = "raise", seen_is_unchanged: bool = True
                      ) -> list[tuple[AppendResult, WriteCounts]]:
        """Records (:meth:`EventStore.append_in`, same rules) and resources of several
        batches in one transaction. A record refused as a version its writer may not make
        drops the resource it came from (with ``on_conflict="dead-letter"``). An import
        is idempotent (``seen_is_unchanged``): content equal to any stored version of the
        resource writes nothing (two files holding two versions of one Organization do
        not add versions each time they are imported again)."""
        with self.transaction() as conn:
            results = self.events.append_in(conn, [b.batch for b in batches],
                                            may_amend=may_amend, on_conflict=on_conflict)
            kept: list[list[ResourceWrite]] = []
            dropped: list[list[str]] = []
            for b, res in zip(batches, results, strict=True):
                drop = {b.row_resource[i] for i, _ in res.refusals
                        if i < len(b.row_resource) and b.row_resource[i] >= 0}
                kept.append([w for j, w in enumerate(b.resources) if j not in drop])
                dropped.append([f"{b.resources[j].resource_type}/{b.resources[j].id}"
                                for j in sorted(drop)])
            stored = self.write_in(conn, [w for ws in kept for w in ws],
                                   seen_is_unchanged=seen_is_unchanged)
        out: list[tuple[AppendResult, WriteCounts]] = []
        at = 0
        for res, ws, gone in zip(results, kept, dropped, strict=True):
            mine = stored[at:at + len(ws)]
            at += len(ws)
            n = sum(1 for s in mine if s.changed)
            out.append((res, WriteCounts(n, len(mine) - n, len(gone), tuple(gone))))
        return out

    def write_in(self, conn: Connection, writes: Sequence[ResourceWrite],
                 now: datetime | None = None, *, seen_is_unchanged: bool = False
                 ) -> list[StoredResource]:
        """Write ``writes`` inside the caller's transaction, in order (a later write of the
        same resource is a later version). ``seen_is_unchanged``: content equal to any
        earlier version (not only the current one) writes nothing. Rows go to the database
        in bulk (``INSERT ... SELECT FROM unnest(...)`` on PostgreSQL)."""
        if not writes:
            return []
        now = now or datetime.now(UTC)
        cipher = self.cipher
        key = self._blind_key(cipher) if cipher is not None else None
        hashes = [self._keyed_hash(key, w.content_hash) for w in writes]
        cur = self._current_many(conn, {(w.resource_type, w.id) for w in writes})
        seen = (self._seen_hashes(conn, [(w, h) for w, h in zip(writes, hashes, strict=True)
                                         if w.content is not None and (
            (c := cur.get((w.resource_type, w.id))) is not None and c.content_hash != h)])
                if seen_is_unchanged else set())
        in_db = {k for k, c in cur.items() if c.in_db}
        out: list[StoredResource] = []
        versions: list[dict[str, Any]] = []
        final: dict[tuple[str, str], tuple[int, ResourceWrite]] = {}
        for w, digest in zip(writes, hashes, strict=True):
            k = (w.resource_type, w.id)
            have = cur.get(k)
            if w.if_match is not None and (have is None or have.deleted
                                           or have.version != w.if_match):
                now_at = ("absent" if have is None else "deleted" if have.deleted
                          else f"at version {have.version}")
                raise PreconditionFailedError(
                    f"{w.resource_type}/{w.id}: If-Match expects version {w.if_match} but the "
                    f"resource is {now_at}; read it again and retry")
            if w.content is None and (have is None or have.deleted):
                out.append(StoredResource(w.resource_type, w.id, have.version if have else 0,
                                          have.last_updated if have else now, True,
                                          have.patient_id if have else None, None))
                continue
            if (w.content is not None and have is not None and not have.deleted
                    and (have.content_hash == digest
                         or (w.resource_type, w.id, digest) in seen)):
                out.append(StoredResource(w.resource_type, w.id, have.version,
                                          have.last_updated, False, have.patient_id,
                                          w.content))
                continue
            version = (have.version if have else 0) + 1
            deleted = w.content is None
            patient = have.patient_id if deleted and have else w.patient_id
            chash = digest or (have.content_hash if have else "")
            content = w.content
            if content is not None and cipher is not None:
                content = cipher.encrypt(content.encode(), context=self._context(
                    w.resource_type, w.id, version))
            versions.append({"res_type": w.resource_type, "res_id": w.id, "version": version,
                             "last_updated": now, "deleted": deleted, "content_hash": chash,
                             "patient_id": patient, "content": content})
            cur[k] = _Current(version, chash, deleted, now, patient,
                              have.in_db if have else False)
            final[k] = (len(versions) - 1, w)
            out.append(StoredResource(w.resource_type, w.id, version, now, deleted, patient,
                                      w.content, created=have is None or have.deleted,
                                      changed=True))
        if not versions:
            return out
        seqs = self._insert_versions(conn, versions)
        current = []
        for k, (i, _w) in final.items():
            row = versions[i]
            current.append({"res_type": k[0], "res_id": k[1], "version": row["version"],
                            "seq": seqs[i], "last_updated": now, "deleted": row["deleted"],
                            "content_hash": row["content_hash"],
                            "patient_id": row["patient_id"]})
        self._upsert_current(conn, current)
        self._replace_index(conn, [k for k in final if k in in_db],
                            [w for _i, w in final.values() if w.content is not None], key)
        return out

    def _index_rows(self, writes: Sequence[ResourceWrite], key: bytes | None
                    ) -> list[tuple[Any, ...]]:
        """The ``fhir_search`` rows of ``writes`` as tuples in :data:`_SEARCH_COLUMNS`
        order, blind rows as keyed hashes when the store seals."""
        mac = self._mac
        rows = []
        for w in writes:
            for r in w.index:
                value, raw = r.value, r.raw
                if r.blind and key is not None:
                    value = None if value is None else mac(key, r.param, "v", value)
                    raw = None if raw is None else mac(key, r.param, "r", raw)
                rows.append((w.resource_type, w.id, r.param, _cut(r.sys), _cut(value),
                             _cut(raw), r.lo, r.hi))
        return rows

    def _replace_index(self, conn: Connection, stale: list[tuple[str, str]],
                       writes: Sequence[ResourceWrite], key: bytes | None) -> None:
        """Delete the index rows of ``stale`` resources and insert those of ``writes``."""
        s = t.fhir_search
        pg = conn.dialect.name == "postgresql"
        if stale and pg:
            for i in range(0, len(stale), _PG_ROWS):
                part = stale[i:i + _PG_ROWS]
                conn.exec_driver_sql(
                    "DELETE FROM fhir_search AS s USING unnest(%(t)b::text[], %(i)b::text[]) "
                    "AS u(t, i) WHERE s.res_type = u.t AND s.res_id = u.i",
                    {"t": [k[0] for k in part], "i": [k[1] for k in part]})
        elif stale:
            conn.execute(delete(s).where(s.c.res_type == bindparam("t"),
                                         s.c.res_id == bindparam("i")),
                         [{"t": k[0], "i": k[1]} for k in stale])
        rows = self._index_rows(writes, key)
        if not rows:
            return
        if pg:
            _pg_copy(conn, "fhir_search", _SEARCH_COLUMNS, rows)
        else:
            conn.execute(insert(s), [dict(zip(_SEARCH_COLUMNS, r, strict=True))
                                     for r in rows])

    def _insert_versions(self, conn: Connection, versions: list[dict[str, Any]]) -> list[int]:
        """Insert version rows; their ``seq`` numbers in the same order."""
        v = t.fhir_versions
        if conn.dialect.name != "postgresql":
            return [row.seq for row in conn.execute(
                insert(v).returning(v.c.seq, sort_by_parameter_order=True), versions)]
        at = {(r["res_type"], r["res_id"], r["version"]): i for i, r in enumerate(versions)}
        seqs = [0] * len(versions)
        got = _pg_insert(conn, "fhir_versions", _VERSION_COLUMNS, _VERSION_TYPES,
                         [tuple(r[c] for c in _VERSION_COLUMNS) for r in versions],
                         returning="seq, res_type, res_id, version")
        for seq, rtype, rid, ver in got:
            seqs[at[(rtype, rid, ver)]] = int(seq)
        return seqs

    def _upsert_current(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        c = t.fhir_current
        name = conn.dialect.name
        cols = ("version", "seq", "last_updated", "deleted", "content_hash", "patient_id")
        if name == "postgresql":
            _pg_insert(conn, "fhir_current", _CURRENT_COLUMNS, _CURRENT_TYPES,
                       [tuple(r[k] for k in _CURRENT_COLUMNS) for r in rows],
                       suffix="ON CONFLICT (res_type, res_id) DO UPDATE SET " + ", ".join(
                           f"{k} = EXCLUDED.{k}" for k in cols))
            return
        if name == "sqlite":
            ins = sqlite.insert(c)
            stmt = ins.on_conflict_do_update(index_elements=[c.c.res_type, c.c.res_id],
                                             set_={k: ins.excluded[k] for k in cols})
            conn.execute(stmt, rows)
            return
        for r in rows:  # another backend: delete and insert
            conn.execute(delete(c).where(c.c.res_type == r["res_type"],
                                         c.c.res_id == r["res_id"]))
            conn.execute(insert(c), r)

    def _seen_hashes(self, conn: Connection, writes: Sequence[tuple[ResourceWrite, str]]
                     ) -> set[tuple[str, str, str]]:
        """(type, id, hash) of every stored, not deleted version of the resources of
        ``writes`` (one look-up per type and chunk of ids)."""
        v = t.fhir_versions.c
        by_type: dict[str, set[str]] = {}
        for w, _h in writes:
            by_type.setdefault(w.resource_type, set()).add(w.id)
        out: set[tuple[str, str, str]] = set()
        for rtype, ids in by_type.items():
            todo = sorted(ids)
            for i in range(0, len(todo), _CHUNK):
                q = select(v.res_id, v.content_hash).where(
                    v.res_type == rtype, v.res_id.in_(todo[i:i + _CHUNK]), v.deleted == false())
                out |= {(rtype, rid, h) for rid, h in conn.execute(q)}
        return out

    def _current_many(self, conn: Connection, keys: set[tuple[str, str]]
                      ) -> dict[tuple[str, str], _Current]:
        c = t.fhir_current.c
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        out: dict[tuple[str, str], _Current] = {}
        pg = conn.dialect.name == "postgresql"
        step = _PG_ROWS if pg else _CHUNK
        for rtype, ids in by_type.items():
            ids.sort()
            for i in range(0, len(ids), step):
                if pg:  # one array parameter, not thousands of bound ones
                    found = conn.exec_driver_sql(
                        "SELECT res_id, version, content_hash, deleted, last_updated, "
                        "patient_id FROM fhir_current WHERE res_type = %(t)s AND "
                        "res_id = ANY(%(i)b::text[])", {"t": rtype, "i": ids[i:i + step]})
                    for rid, ver, h, dele, lu, pid in found:
                        out[(rtype, rid)] = _Current(ver, h, bool(dele), lu.astimezone(UTC),
                                                     pid, True)
                    continue
                q = select(c.res_id, c.version, c.content_hash, c.deleted, c.last_updated,
                           c.patient_id).where(c.res_type == rtype,
                                               c.res_id.in_(ids[i:i + step]))
                for rid, ver, h, dele, lu, pid in conn.execute(q):
                    out[(rtype, rid)] = _Current(ver, h, bool(dele), lu, pid, True)
        return out

    # --- reads -------------------------------------------------------------------------
    def _columns(self) -> list[Any]:
        c, v = t.fhir_current.c, t.fhir_versions.c
        return [c.res_type, c.res_id, c.version, c.last_updated, c.deleted, c.patient_id,
                v.content]

    def _joined(self) -> Any:
        return select(*self._columns()).select_from(t.fhir_current.join(
            t.fhir_versions, t.fhir_versions.c.seq == t.fhir_current.c.seq))

    def current(self, resource_type: str, resource_id: str, *,
                conn: Connection | None = None) -> StoredResource | None:
        """The current version (a delete included), or None if never stored."""
        c = t.fhir_current.c
        q = self._joined().where(c.res_type == resource_type, c.res_id == resource_id)
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.engine.connect() as conn2:
                row = conn2.execute(q).first()
        return None if row is None else self._stored(row)

    def read(self, resource_type: str, resource_id: str, *,
             conn: Connection | None = None) -> StoredResource:
        """The current version: :class:`NotFoundError` if never stored, :class:`GoneError`
        if deleted."""
        got = self.current(resource_type, resource_id, conn=conn)
        if got is None:
            raise NotFoundError(f"{resource_type}/{resource_id} is not stored")
        if got.deleted:
            raise GoneError(f"{resource_type}/{resource_id} was deleted (version "
                            f"{got.version}); its history keeps the earlier versions")
        return got

    def vread(self, resource_type: str, resource_id: str, version: int) -> StoredResource:
        """One version: :class:`NotFoundError` if there is no such version,
        :class:`GoneError` if that version is a delete."""
        v = t.fhir_versions.c
        q = select(v.res_type, v.res_id, v.version, v.last_updated, v.deleted, v.patient_id,
                   v.content).where(v.res_type == resource_type, v.res_id == resource_id,
                                    v.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            raise NotFoundError(f"{resource_type}/{resource_id} has no version {version}")
        got = self._stored(row)
        if got.deleted:
            raise GoneError(f"{resource_type}/{resource_id} version {version} is a delete")
        return got

    def history(self, resource_type: str | None = None, resource_id: str | None = None, *,
                since: datetime | None = None, before: datetime | None = None,
                count: int = 100, offset: int = 0, total: bool = True,
                patients: Iterable[str] | None = None, shared: bool = True) -> Page:
        """Versions (deletes included), newest first: of one resource, of a type, or of all
        (``resource_type`` None); ``since`` / ``before`` bound ``lastUpdated``; ``patients``
        keeps versions in those patients' compartments (and, with ``shared``, those in no
        compartment)."""
        _check_page(count, offset)
        v = t.fhir_versions.c
        conds: list[ColumnElement[bool]] = []
        if resource_type is not None:
            conds.append(v.res_type == resource_type)
        if resource_id is not None:
            conds.append(v.res_id == resource_id)
        if since is not None:
            conds.append(v.last_updated >= since)
        if before is not None:
            conds.append(v.last_updated < before)
        if patients is not None:
            conds.append(_scope(v.patient_id, patients, shared))
        where = and_(true(), *conds)
        q = (select(v.res_type, v.res_id, v.version, v.last_updated, v.deleted, v.patient_id,
                    v.content).where(where).order_by(v.seq.desc())
             .offset(offset).limit(count + 1))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            n = (conn.scalar(select(func.count()).select_from(t.fhir_versions).where(where))
                 if total else None)
        return Page([self._stored(r) for r in rows[:count]], n, offset, count,
                    len(rows) > count)

    # --- search ------------------------------------------------------------------------
    def search(self, query: Query, *, count: int = 100, offset: int = 0, total: bool = True,
               patients: Iterable[str] | None = None, shared: bool = True,
               conn: Connection | None = None) -> Page:
        """Current, not deleted resources matching ``query`` (clauses AND-ed, each clause's
        tests OR-ed), sorted by ``query.sort`` (else in the order they were written), one
        page of ``count`` from ``offset``; ``total`` counts every match. ``patients``
        restricts to those patients' compartments (``shared``: and to resources in no
        compartment, e.g. Organization). ``count=0`` gives the total only."""
        _check_page(count, offset, allow_zero=True)
        where = self._where(query, patients, shared)
        rows: list[Any] = []
        n = None
        with _connection(self.engine, conn) as cx:
            if count and total:  # one pass: the page and, beside each row, the total
                rows = cx.execute(self._page(where, query.sort, count, offset)).all()
                n = int(rows[0].total_) if rows else None
            elif count:
                q = (self._joined().where(where).order_by(*self._order(query.sort))
                     .offset(offset).limit(count + 1))
                rows = cx.execute(q).all()
            if n is None and (total or not count):  # (a page past the end has no row)
                n = cx.scalar(select(func.count()).select_from(t.fhir_current).where(where))
        return Page([self._stored(r) for r in rows[:count]], n, offset, count,
                    len(rows) > count)

    def _page(self, where: ColumnElement[bool], sort: Sequence[SortKey], count: int,
              offset: int) -> Any:
        """One page of matches with the number of all matches on each row (``total_``):
        the matches are found once (not once for the page and again for the total), and
        only the page's rows are joined to their content."""
        c, v = t.fhir_current.c, t.fhir_versions.c
        found = (select(c.res_type, c.res_id, c.version, c.last_updated, c.deleted,
                        c.patient_id, c.seq,
                        func.row_number().over(order_by=self._order(sort)).label("pos_"),
                        func.count().over().label("total_"))
                 .where(where).order_by(text("pos_")).offset(offset).limit(count + 1)
                 .subquery())
        return (select(found.c.res_type, found.c.res_id, found.c.version,
                       found.c.last_updated, found.c.deleted, found.c.patient_id, v.content,
                       found.c.total_)
                .select_from(found.join(t.fhir_versions, v.seq == found.c.seq))
                .order_by(found.c.pos_))

    def count(self, query: Query, *, patients: Iterable[str] | None = None,
              shared: bool = True) -> int:
        """How many current resources match ``query`` (``_summary=count``)."""
        page = self.search(query, count=0, patients=patients, shared=shared)
        return int(page.total or 0)

    def _where(self, query: Query, patients: Iterable[str] | None,
               shared: bool) -> ColumnElement[bool]:
        c = t.fhir_current.c
        conds: list[ColumnElement[bool]] = [c.deleted == false()]
        if query.resource_type is not None:
            conds.append(c.res_type == query.resource_type)
        conds += [self._clause(cl) for cl in query.clauses]
        if patients is not None:
            conds.append(_scope(c.patient_id, patients, shared))
        return and_(*conds)

    def _clause(self, cl: Clause) -> ColumnElement[bool]:
        c = t.fhir_current.c
        if cl.param == "_id":
            cond: ColumnElement[bool] = c.res_id.in_(
                [x.code for x in cl.tests if isinstance(x, TokenTest)])
        elif cl.param == "_lastUpdated":
            cond = or_(*(_date(c.last_updated, c.last_updated, x, point=True)
                         for x in cl.tests if isinstance(x, DateTest)))
        elif cl.param == "patient":  # the patient compartment column
            if cl.missing is not None:
                return c.patient_id.is_(None) if cl.missing else c.patient_id.is_not(None)
            ids = [x.id for x in cl.tests if isinstance(x, ReferenceTest)
                   and x.type in (None, "Patient")]
            cond = c.patient_id.in_(ids)
        else:
            s = t.fhir_search.c
            base = [s.res_type == c.res_type, s.res_id == c.res_id, s.param == cl.param]
            if cl.missing is not None:
                has = exists().where(*base)
                return not_(has) if cl.missing else has
            tests = cl.tests
            cipher = self.cipher
            if cl.blind and cipher is not None:  # compare keyed hashes
                tests = tuple(self._blind_test(self._blind_key(cipher), cl.param, x)
                              for x in tests)
            cond = exists().where(*base, or_(*(_test(x) for x in tests)))
        return not_(cond) if cl.negate else cond

    def _blind_test(self, key: bytes, param: str, x: Any) -> Any:
        """A test of a blind clause with its values as the keyed hashes stored."""
        if isinstance(x, TokenTest) and x.code is not None:
            return replace(x, code=self._mac(key, param, "v", x.code))
        if isinstance(x, StringTest):
            if x.mode != "exact":
                raise ValidationError(f"{param} is identifying and indexed blind: only "
                                      "starts-with on a word part or :exact", where=param)
            return replace(x, text=self._mac(key, param, "r", x.text))
        return x

    def _order(self, keys: Sequence[SortKey]) -> list[Any]:
        c, s = t.fhir_current.c, t.fhir_search.c
        out: list[Any] = []
        for k in keys:
            if k.param == "_lastUpdated":
                col: Any = c.last_updated
            elif k.param == "_id":
                col = c.res_id
            else:
                agg = func.max(s.hi) if k.descending else func.min(s.lo)
                when = (select(agg).where(s.res_type == c.res_type, s.res_id == c.res_id,
                                          s.param == k.param).scalar_subquery())
                val = (select(func.min(s.value)).where(
                    s.res_type == c.res_type, s.res_id == c.res_id, s.param == k.param)
                    .scalar_subquery())
                out += [when.desc() if k.descending else when.asc(),
                        val.desc() if k.descending else val.asc()]
                continue
            out.append(col.desc() if k.descending else col.asc())
        out.append(c.seq.asc())
        return out

    # --- _include, _revinclude, compartments --------------------------------------------
    def include(self, found: Sequence[StoredResource], param: str,
                target_type: str | None = None, *, patients: Iterable[str] | None = None,
                shared: bool = True) -> list[StoredResource]:
        """The current resources that ``found`` refer to through the reference parameter
        ``param`` (``_include=Type:param[:target]``; ``patient`` is the compartment
        reference), within the same access scope."""
        targets: set[tuple[str, str]] = set()
        if param == "patient":
            targets = {("Patient", r.patient_id) for r in found
                       if r.patient_id and r.resource_type != "Patient"}
        else:
            s = t.fhir_search.c
            with self.engine.connect() as conn:
                for rtype, ids in _by_type(found).items():
                    for i in range(0, len(ids), _CHUNK):
                        q = select(s.sys, s.value).where(
                            s.res_type == rtype, s.res_id.in_(ids[i:i + _CHUNK]),
                            s.param == param, s.sys.is_not(None))
                        targets |= {(a, b) for a, b in conn.execute(q)}
        if target_type is not None:
            targets = {x for x in targets if x[0] == target_type}
        return self.read_many(targets, patients=patients, shared=shared)

    def revinclude(self, found: Sequence[StoredResource], source_type: str, param: str, *,
                   patients: Iterable[str] | None = None, shared: bool = True,
                   limit: int = 10_000) -> list[StoredResource]:
        """The current ``source_type`` resources whose ``param`` refers to one of ``found``
        (``_revinclude=Type:param``), within the same access scope (at most ``limit``)."""
        c = t.fhir_current.c
        conds = []
        if param == "patient":
            ids = [r.id for r in found if r.resource_type == "Patient"]
            if ids:
                conds.append(c.patient_id.in_(ids))
        else:
            s = t.fhir_search.c
            for rtype, ids in _by_type(found).items():
                conds.append(exists().where(s.res_type == c.res_type, s.res_id == c.res_id,
                                            s.param == param, s.sys == rtype,
                                            s.value.in_(ids)))
        if not conds:
            return []
        where = and_(c.deleted == false(), c.res_type == source_type, or_(*conds))
        if patients is not None:
            where = and_(where, _scope(c.patient_id, patients, shared))
        with self.engine.connect() as conn:
            rows = conn.execute(self._joined().where(where).order_by(c.seq).limit(limit)).all()
        return [self._stored(r) for r in rows]

    def read_many(self, keys: Iterable[tuple[str, str]], *,
                  patients: Iterable[str] | None = None, shared: bool = True
                  ) -> list[StoredResource]:
        """The current, not deleted versions of ``keys`` (Type, id) that exist, in scope."""
        c = t.fhir_current.c
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        out: list[StoredResource] = []
        with self.engine.connect() as conn:
            for rtype, ids in sorted(by_type.items()):
                ids = sorted(set(ids))
                for i in range(0, len(ids), _CHUNK):
                    where = and_(c.res_type == rtype, c.res_id.in_(ids[i:i + _CHUNK]),
                                 c.deleted == false())
                    if patients is not None:
                        where = and_(where, _scope(c.patient_id, patients, shared))
                    out += [self._stored(r) for r in conn.execute(
                        self._joined().where(where).order_by(c.res_id))]
        return out

    def compartment(self, patient_id: str, *, types: Iterable[str] | None = None,
                    since: datetime | None = None, count: int = 1000, offset: int = 0,
                    total: bool = True) -> Page:
        """The Patient and every current resource in its compartment (``$everything``),
        the Patient first, then in the order written."""
        _check_page(count, offset)
        c = t.fhir_current.c
        conds = [c.deleted == false(), c.patient_id == patient_id]
        if types is not None:
            conds.append(c.res_type.in_(list(types)))
        if since is not None:
            conds.append(c.last_updated >= since)
        where = and_(*conds)
        first = (c.res_type == "Patient") & (c.res_id == patient_id)
        with self.engine.connect() as conn:
            rows = conn.execute(self._joined().where(where).order_by(
                first.desc(), c.seq).offset(offset).limit(count + 1)).all()
            n = (conn.scalar(select(func.count()).select_from(t.fhir_current).where(where))
                 if total else None)
        return Page([self._stored(r) for r in rows[:count]], n, offset, count,
                    len(rows) > count)

    def iter_current(self, *, types: Iterable[str] | None = None,
                     patients: Iterable[str] | None = None, shared: bool = True,
                     since: datetime | None = None, batch: int = 5000
                     ) -> Iterator[StoredResource]:
        """Every current, not deleted resource (by type, then in the order written),
        streamed in batches: the source of exports."""
        if self.engine.dialect.name == "postgresql":
            yield from self._stream_current(types, patients, shared, since, batch)
            return
        c = t.fhir_current.c
        conds: list[ColumnElement[bool]] = [c.deleted == false()]
        if patients is not None:
            conds.append(_scope(c.patient_id, patients, shared))
        if since is not None:
            conds.append(c.last_updated >= since)
        if types is None:
            with self.engine.connect() as conn:
                types = sorted(conn.scalars(select(c.res_type).where(c.deleted == false())
                                            .distinct()))
        for rtype in sorted(set(types)):  # per type, keyset pages on (res_type, seq)
            last_seq = -1
            while True:
                q = (self._joined().add_columns(c.seq).where(
                    and_(*conds), c.res_type == rtype, c.seq > last_seq)
                    .order_by(c.seq).limit(batch))
                with self.engine.connect() as conn:
                    rows = conn.execute(q).all()
                for r in rows:
                    yield self._stored(r)
                if len(rows) < batch:
                    break
                last_seq = rows[-1].seq

    def _stream_current(self, types: Iterable[str] | None, patients: Iterable[str] | None,
                        shared: bool, since: datetime | None, batch: int
                        ) -> Iterator[StoredResource]:
        """:meth:`iter_current` on PostgreSQL: one query in one snapshot (REPEATABLE READ, so
        an export is of one instant) read through a server-side cursor ``batch`` rows at a
        time, in ``(res_type, seq)`` order (``ix_fhir_current_type_seq``); each row's
        content is opened as stored (no parse, no re-serialisation)."""
        where = ["NOT c.deleted"]
        params: dict[str, Any] = {}
        if types is not None:
            where.append("c.res_type = ANY(%(types)s::text[])")
            params["types"] = sorted(set(types))
        if patients is not None:
            ids = sorted(set(patients))
            where.append("(c.patient_id = ANY(%(pids)s::text[])"
                         + (" OR c.patient_id IS NULL)" if shared else ")"))
            params["pids"] = ids
        if since is not None:
            where.append("c.last_updated >= %(since)s")
            params["since"] = since
        sql = ("SELECT c.res_type, c.res_id, c.version, c.last_updated, c.patient_id, "
               "v.content FROM fhir_current c JOIN fhir_versions v ON v.seq = c.seq WHERE "
               + " AND ".join(where) + " ORDER BY c.res_type, c.seq")
        opener = self._opener()
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                raw = conn.connection.driver_connection
                with raw.cursor(name="medtwin_fhir_export") as cur:  # type: ignore[union-attr]
                    cur.itersize = batch
                    cur.execute(sql, params)
                    while rows := cur.fetchmany(batch):
                        for rtype, rid, ver, when, pid, content in rows:
                            yield StoredResource(rtype, rid, ver, when.astimezone(UTC),
                                                 False, pid, opener(rtype, rid, ver, content))

    def _opener(self) -> Any:
        """``(type, id, version, content) -> text``: :meth:`_open` bound once to the key
        ring (a loop over many rows looks it up once)."""
        cipher = self.cipher
        if cipher is None:
            return self._open
        decrypt, context = cipher.decrypt, self._context

        def opened(rtype: str, rid: str, version: int, content: str | None) -> str | None:
            if content is None or content[0] == "{":
                return content
            return decrypt(content, context=context(rtype, rid, version)).decode()
        return opened

    def type_counts(self) -> dict[str, int]:
        """Number of current, not deleted resources per type."""
        c = t.fhir_current.c
        q = (select(c.res_type, func.count()).where(c.deleted == false())
             .group_by(c.res_type))
        with self.engine.connect() as conn:
            return {k: int(n) for k, n in conn.execute(q)}


# --- helpers ---------------------------------------------------------------------------
_VERSION_COLUMNS = ("res_type", "res_id", "version", "last_updated", "deleted",
                    "content_hash", "patient_id", "content")
_VERSION_TYPES = ("text", "text", "int4", "timestamptz", "bool", "text", "text", "text")
_CURRENT_COLUMNS = ("res_type", "res_id", "version", "seq", "last_updated", "deleted",
                    "content_hash", "patient_id")
_CURRENT_TYPES = ("text", "text", "int4", "int8", "timestamptz", "bool", "text", "text")
_SEARCH_COLUMNS = ("res_type", "res_id", "param", "sys", "value", "raw", "lo", "hi")
_SEARCH_TYPES = ("text", "text", "text", "text", "text", "text", "timestamptz",
                 "timestamptz")


def _pg_insert(conn: Connection, table: str, columns: Sequence[str], types: Sequence[str],
               rows: Sequence[tuple[Any, ...]], *, suffix: str = "",
               returning: str | None = None) -> list[Any]:
    """``INSERT INTO table (columns) SELECT * FROM unnest(typed arrays) [suffix]``, a few
    thousand rows a statement (one round trip and one plan each, not one per row as
    ``executemany``); the ``returning`` rows of every statement."""
    cols = ", ".join(columns)
    arrays = ", ".join(f"%(c{i})b::{ty}[]" for i, ty in enumerate(types))
    sql = f"INSERT INTO {table} ({cols}) SELECT * FROM unnest({arrays}) {suffix}"
    if returning:
        sql += f" RETURNING {returning}"
    out: list[Any] = []
    for i in range(0, len(rows), _PG_ROWS):
        part = rows[i:i + _PG_ROWS]
        params = {f"c{j}": [r[j] for r in part] for j in range(len(columns))}
        result = conn.exec_driver_sql(sql, params)
        if returning:
            out += result.all()
    return out


def _pg_copy(conn: Connection, table: str, columns: Sequence[str],
             rows: Sequence[tuple[Any, ...]]) -> None:
    """``COPY table (columns) FROM STDIN``: PostgreSQL's bulk load, for rows nothing needs
    back (the search index)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(r)


@contextmanager
def _connection(engine: Any, conn: Connection | None) -> Iterator[Connection]:
    if conn is not None:
        yield conn
    else:
        with engine.connect() as cx:
            yield cx


def _scope(column: Any, patients: Iterable[str], shared: bool) -> ColumnElement[bool]:
    ids = sorted(set(patients))
    inside = column.in_(ids) if ids else false()
    return or_(inside, column.is_(None)) if shared else inside


def _by_type(found: Sequence[StoredResource]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in found:
        out.setdefault(r.resource_type, []).append(r.id)
    return out


def _check_page(count: int, offset: int, *, allow_zero: bool = False) -> None:
    if count < (0 if allow_zero else 1) or offset < 0:
        raise ValidationError(f"count must be >= {0 if allow_zero else 1} and offset >= 0 "
                              f"(got count={count}, offset={offset})", where="paging")


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_TEXT else text[:MAX_TEXT]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _test(x: Any) -> ColumnElement[bool]:
    s = t.fhir_search.c
    if isinstance(x, TokenTest):
        conds = []
        if x.system is None:
            conds.append(s.sys.is_(None))
        elif x.system is not ANY:
            conds.append(s.sys == x.system)
        if x.code is not None:
            conds.append(s.value == _cut(x.code))
        return and_(true(), *conds)
    if isinstance(x, ReferenceTest):
        return and_(s.value == x.id, s.sys == x.type) if x.type else s.value == x.id
    if isinstance(x, StringTest):
        if x.mode == "exact":
            return s.raw == _cut(x.text)
        text = _like(x.text[:MAX_TEXT])
        pattern = f"%{text}%" if x.mode == "contains" else f"{text}%"
        return s.value.like(pattern, escape="\\")
    if isinstance(x, DateTest):
        return _date(s.lo, s.hi, x)
    raise TypeError(f"not a search test: {x!r}")


def _date(lo: Any, hi: Any, x: DateTest, *, point: bool = False) -> ColumnElement[bool]:
    """The R4 prefixes on a target range [lo, hi) against the search range [x.lo, x.hi)
    (R4 Search 3.1.1.4.3); a ``point`` target (lastUpdated) is the instant lo."""
    if point:  # hi is lo + an instant: hi > b <=> lo >= b, hi <= b <=> lo < b
        def hi_gt(b: datetime) -> ColumnElement[bool]:
            return lo >= b

        def hi_le(b: datetime) -> ColumnElement[bool]:
            return lo < b
    else:
        def hi_gt(b: datetime) -> ColumnElement[bool]:
            return hi > b

        def hi_le(b: datetime) -> ColumnElement[bool]:
            return hi <= b
    inside = and_(lo >= x.lo, hi_le(x.hi))
    p = x.prefix
    if p == "eq":
        return inside
    if p == "ne":
        return not_(inside)
    if p == "gt":
        return hi_gt(x.hi)
    if p == "lt":
        return lo < x.lo
    if p == "ge":
        return or_(hi_gt(x.hi), inside)
    if p == "le":
        return or_(lo < x.lo, inside)
    if p == "sa":
        return lo >= x.hi
    if p == "eb":
        return hi_le(x.lo)
    raise ValidationError(f"unknown date prefix {p!r}", where="date")


def with_flags(stored: StoredResource, **flags: bool) -> StoredResource:
    """``stored`` with ``created`` / ``changed`` set (for callers composing results)."""
    return replace(stored, **flags)
