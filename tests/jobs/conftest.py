"""A job store on SQLite and on PostgreSQL, and a Dask client of threads for the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def dask() -> Iterator[object]:
    """One in-process Dask cluster (two threads) for a module's jobs."""
    from medtwin.core.cluster import dask_client

    with dask_client(n_workers=2, processes=False) as c:
        yield c
