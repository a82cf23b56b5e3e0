"""``medtwin demo``: a fresh embedded store filled with seeded synthetic patients.

Needs no external service. Later capabilities (live streams, the dashboard) grow from here.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from medtwin.core.records import Observation
from medtwin.interop.fhir.synthetic import generate_patients, write_bundles
from medtwin.interop.importer import import_paths
from medtwin.store.engine import default_db_path
from medtwin.store.event_store import EventStore

log = logging.getLogger(__name__)

_SHOWN = {"8867-4": "HR", "9279-1": "RR", "59408-5": "SpO2", "8310-5": "Temp",
          "85354-9": "BP", "55284-4": "BP", "99504-3": "CGM", "2339-0": "Glucose",
          "15074-8": "Glucose", "4092-3": "Vanco trough"}


def default_demo_path() -> Path:
    """Where the demo keeps its store unless told otherwise."""
    return default_db_path().with_name("medtwin-demo.sqlite")


def _fresh(db: str | None) -> str:
    if db is not None and "://" in db:
        return db  # a server database: the demo only appends, it never drops a user's data
    path = Path(db) if db else default_demo_path()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return str(path)


def _fmt(obs: Observation) -> str:
    if obs.components:
        parts = {c.code: c for c in obs.components}
        sys_, dia = parts.get("8480-6"), parts.get("8462-4")
        if sys_ and dia and sys_.value is not None and dia.value is not None:
            return f"{sys_.value:.0f}/{dia.value:.0f} {sys_.unit}"
    return f"{round(obs.value, 1):g} {obs.unit}" if obs.value is not None else str(obs.value_text)


def run_demo(db: str | None = None, *, n_patients: int = 6, seed: int = 0) -> str:
    """Generate, import and summarise; return the summary text."""
    target = _fresh(db)
    bundles = generate_patients(n_patients, seed=seed)
    with tempfile.TemporaryDirectory(prefix="medtwin-demo-") as tmp, \
            EventStore.open(target) as store:
        files = write_bundles(bundles, Path(tmp))
        summary = import_paths(store, files)
        lines = [f"medtwin demo: store at {store!r}", summary.text(), "", "latest readings:"]
        for pid in store.patients()["id"]:
            latest: dict[str, Observation] = {}
            for obs in store.timeline(pid, kinds=["observation"], codes=list(_SHOWN)):
                latest[_SHOWN[obs.code]] = obs  # time-ordered: the last one wins
            lines.append(f"  {pid[:8]}  " + "  ".join(
                f"{label} {_fmt(obs)}" for label, obs in latest.items()))
        lines += ["", "next: `medtwin patients --db PATH`, `medtwin timeline PATIENT --db PATH`,"
                  " `medtwin export PATIENT --db PATH`"]
    return "\n".join(lines)
