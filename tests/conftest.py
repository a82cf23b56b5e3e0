"""Shared fixtures: the reference folder, and a store on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
PG_URL = os.environ.get("MEDTWIN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


NEEDS_REFERENCE = (f"needs the reference data folder {REFERENCE} (it ships beside the "
                   "project checkout in CI; copy or link it there to run these tests)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a clone without ``../shared/reference``, deselect the tests that read it (and say
    so in the summary); in CI they stay selected and fail, never skipped silently."""
    if REFERENCE.is_dir() or os.environ.get("CI"):
        return
    needs = [i for i in items if "reference" in getattr(i, "fixturenames", ())]
    if needs:
        config.hook.pytest_deselected(items=needs)
        items[:] = [i for i in items if i not in set(needs)]
        config.stash[_DESELECTED] = len(needs)


_DESELECTED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    n = terminalreporter.config.stash.get(_DESELECTED, 0)
    if n:
        terminalreporter.write_line(f"deselected {n} tests: {NEEDS_REFERENCE}", yellow=True)


@pytest.fixture(scope="session", autouse=True)
def _configured_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test run is a configured installation: unless the caller set one, a key file of
    its own (``MEDTWIN_KEY_FILE``, inherited by the commands tests start), never the user's
    default key file. Tests of a missing key unset it themselves."""
    if os.environ.get("MEDTWIN_KEY") or os.environ.get("MEDTWIN_KEY_FILE"):
        yield
        return
    from medtwin.security.crypto import create_key_file

    path = tmp_path_factory.mktemp("keys") / "keys.json"
    create_key_file(path)
    os.environ["MEDTWIN_KEY_FILE"] = str(path)
    try:
        yield
    finally:
        os.environ.pop("MEDTWIN_KEY_FILE", None)


@pytest.fixture(scope="session")
def reference() -> Path:
    """``../shared/reference`` beside the checkout; a missing folder fails (CI) — elsewhere
    the tests that need it were deselected at collection."""
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data folder {REFERENCE} is absent: this run {NEEDS_REFERENCE}")
    return REFERENCE


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql://", "postgresql://", 1),
                             connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: no server here
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL URL; skipped (outside CI) when no server answers, failed in CI."""
    problem = _pg_available()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI: {problem}")
        pytest.skip(f"no PostgreSQL at {PG_URL} ({problem}); set MEDTWIN_TEST_PG")
    return PG_URL


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A schema of its own for one test, dropped afterwards."""
    import psycopg

    name = f"mt_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty EventStore on SQLite (a temp file) and on PostgreSQL (a fresh schema)."""
    from medtwin.store.event_store import EventStore

    if request.param == "sqlite":
        s = EventStore.open(tmp_path / "store.sqlite")
    else:
        schema = request.getfixturevalue("pg_schema")
        s = EventStore.open(request.getfixturevalue("pg_url"), schema=schema)
    yield s
    s.close()
