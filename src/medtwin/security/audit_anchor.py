"""Anchors of the audit chain's head kept outside the database.

An anchor records that entry ``seq`` of the chain had hash ``hash`` at ``time``; it carries
its own HMAC under the audit key, so only a holder of the key ring can write one. A database
writer who drops the tail, rewrites entries or wipes and restarts the chain cannot make the
chain agree with the anchors written before. The default sink is an append-only JSON-lines
file (one anchor per line, 0600) next to the key file; any other append-only log can be used
through the :class:`AnchorSink` protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, text

from medtwin.store.engine import describe

log = logging.getLogger(__name__)

ANCHOR_DIR = "audit-anchors"


@dataclass(frozen=True, slots=True)
class Anchor:
    """Entry ``seq`` had chain hash ``hash`` at ``time``; ``keyed_from`` (when set) is the
    first entry of the chain written with a key (the ones before it are legacy, unkeyed)."""

    seq: int
    hash: str
    time: str
    kid: str
    keyed_from: int | None = None
    mac: str = ""

    def payload(self) -> bytes:
        """The bytes the anchor's HMAC covers."""
        d = {k: v for k, v in asdict(self).items() if k != "mac"}
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes) -> Anchor:
        """The anchor with its HMAC under ``key``."""
        mac = hmac.new(key, self.payload(), hashlib.sha256).hexdigest()
        return Anchor(self.seq, self.hash, self.time, self.kid, self.keyed_from, mac)

    def valid(self, key: bytes) -> bool:
        """Whether the HMAC is right under ``key``."""
        return hmac.compare_digest(self.signed(key).mac, self.mac)

    def to_line(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> Anchor:
        """Parse a line; ``ValueError`` when it is not an anchor."""
        try:
            d: dict[str, Any] = json.loads(line)
            return cls(int(d["seq"]), str(d["hash"]), str(d["time"]), str(d["kid"]),
                       None if d.get("keyed_from") is None else int(d["keyed_from"]),
                       str(d["mac"]))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an anchor: {exc}") from None


class AnchorSink(Protocol):
    """Somewhere outside the database that anchors are appended to and read back from."""

    def write(self, anchor: Anchor) -> None: ...

    def read(self) -> Iterator[Anchor | str]: ...

    def describe(self) -> str: ...


class FileAnchorSink:
    """Anchors as lines of an append-only JSON-lines file (owner-only permissions)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, anchor: Anchor) -> None:
        """Append one line durably (O_APPEND: concurrent writers never interleave a line)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (anchor.to_line() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> Iterator[Anchor | str]:
        """The anchors in file order; a line that is not an anchor comes as a description."""
        try:
            f = self.path.open(encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield Anchor.from_line(line)
                except ValueError as exc:
                    yield f"line {n} of {self.path}: {exc}"

    def describe(self) -> str:
        """Where the anchors are."""
        return str(self.path)


def store_location(engine: Engine) -> str:
    """What names a store: its URL (no password) and, on PostgreSQL, its schema."""
    where = describe(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            where += f"#{conn.scalar(text('SELECT current_schema()'))}"
    return where


def default_anchor_path(engine: Engine, key_file: Path | None) -> Path:
    """``audit-anchors/<store>-<hash>.jsonl`` next to the key file (one file per store, so
    stores sharing a key never mix their anchors); without a key file, next to a SQLite
    store, else in the user data directory."""
    where = store_location(engine)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", where.rsplit("/", 1)[-1])[-40:] or "store"
    name = f"{stem}-{hashlib.sha256(where.encode()).hexdigest()[:12]}.jsonl"
    if key_file is not None:
        return key_file.parent / ANCHOR_DIR / name
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        return Path(database).resolve().parent / ANCHOR_DIR / name
    from platformdirs import user_data_dir

    return Path(user_data_dir("medtwin", appauthor=False)) / ANCHOR_DIR / name


def anchor_sink(engine: Engine, *, configured: str | None, key_file: Path | None
                ) -> FileAnchorSink:
    """The anchor file: the configured one (``MEDTWIN_AUDIT_ANCHOR_FILE``), else the default."""
    path = Path(configured).expanduser() if configured else default_anchor_path(engine,
                                                                                 key_file)
    return FileAnchorSink(path)
