"""One way to reach Dask for every long job: an existing scheduler, or a LocalCluster.

``scheduler`` is a scheduler address (``"tcp://host:8786"``) to scale out, or ``None`` for a
``LocalCluster`` started for the duration of the block (``n_workers`` single-threaded worker
processes, or threads with ``processes=False``). An open ``Client`` given by the caller is
used as it is and left open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from medtwin.core.errors import ValidationError

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


@contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int = 2, processes: bool = True,
                client: Client | None = None) -> Iterator[Client]:
    """A Dask ``Client`` for the block: ``client`` itself, one to ``scheduler``, or a local
    cluster of ``n_workers`` workers closed at the end of the block."""
    if client is not None:
        yield client
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dask is a declared dependency
        raise ValidationError("Dask is not installed: pip install 'medtwin[trials]'",
                              where="scheduler") from None
    if scheduler:
        if not scheduler.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
            raise ValidationError(f"not a Dask scheduler address: {scheduler!r} (expected e.g. "
                                  "tcp://host:8786)", where="scheduler")
        with Client(scheduler, timeout="10s") as c:
            yield c
        return
    with LocalCluster(n_workers=max(1, n_workers), threads_per_worker=1, processes=processes,
                      dashboard_address=":0", silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as c:
        log.info("started a local Dask cluster of %d worker(s)", max(1, n_workers))
        yield c


def _objective_at(estimator: Any, x: Any) -> float:
    return float(estimator.objective_at(x))


def dask_mapper(client: Client) -> Callable[[Any, list[Any]], list[float]]:
    """A mapper for estimators with ``objective_at(x)`` (e.g. FOCE-I): the estimator is sent
    to the cluster once per batch and the points are evaluated there in parallel."""

    def mapper(estimator: Any, points: list[Any]) -> list[float]:
        [est] = client.scatter([estimator], hash=False)
        futures = client.map(_objective_at, [est] * len(points), points, pure=False)
        return [float(v) for v in client.gather(futures)]

    return mapper
