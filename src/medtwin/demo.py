"""``medtwin demo``: a fresh embedded store filled with seeded synthetic patients, then the
whole platform live: simulated devices through an in-process MQTT broker, ingestion, NEWS2
monitoring, and the service with its dashboard on 127.0.0.1.

Needs no external service.
"""

from __future__ import annotations

import logging
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medtwin.core.errors import MedtwinError
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


def run_demo(db: str | None = None, *, n_patients: int = 6, seed: int = 0,
             start: datetime | None = None, keyring: object | None = None) -> str:
    """Generate, import and summarise; return the summary text. ``start`` begins the
    patients' two-day stay (default: the generator's fixed date)."""
    target = _fresh(db)
    bundles = generate_patients(n_patients, seed=seed, start=start)
    with tempfile.TemporaryDirectory(prefix="medtwin-demo-") as tmp, \
            EventStore.open(target, keyring=keyring) as store:  # type: ignore[arg-type]
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


# --- the live demo ------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoLogin:
    """A demo sign-in (the password is generated per run and shown once)."""

    username: str
    role: str
    password: str
    note: str


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` can be listened on now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _add_users(store: EventStore, settings: object, kinds: dict[str, str]) -> list[DemoLogin]:
    """Two clinicians with a care team each, an admin, a researcher, one patient user."""
    from medtwin.api.deps import build_services

    svc = build_services(settings, store, store.keyring)  # type: ignore[arg-type]
    d = svc.directory
    ids = list(kinds)
    half = (len(ids) + 1) // 2
    teams = {"north": ids[:half], "south": ids[half:]}
    logins = []

    def add(name: str, role: str, note: str, **kw: str) -> str:
        pw = secrets.token_urlsafe(9)
        user = d.add_user(name, role, pw, **kw)
        logins.append(DemoLogin(name, role, pw, note))
        svc.record(None, None, "create", f"user:{name}", "success", detail="medtwin demo")
        return user.id

    for team, members in teams.items():
        uid = add(f"dr.{team}", "clinician", f"care team {team}: {len(members)} patient(s)")
        d.add_to_team(team, user_id=uid)
        for pid in members:
            d.add_to_team(team, patient_id=pid)
    add("admin", "admin", "users, roles, audit trail")
    add("researcher", "researcher", "de-identified data only (API /research)")
    add("patient", "patient", f"sees only themselves ({ids[0][:8]})", patient_id=ids[0])
    return logins


def live_demo(db: str | None = None, *, n_patients: int = 6, seed: int = 0, port: int = 8000,
              duration: float | None = None, broker: str | None = None,
              echo: Callable[[str], None] = log.info) -> None:
    """Build the demo store, then run devices, broker, ingestion, monitoring and the service
    with its dashboard on 127.0.0.1:``port`` until Ctrl-C (or ``duration`` seconds)."""
    import uvicorn

    from medtwin.api.app import create_app
    from medtwin.api.settings import Settings
    from medtwin.security.crypto import load_keyring
    from medtwin.ui.live_ward import LiveWard
    from medtwin.ui.twins import patient_kind

    if not port_free(port):
        raise MedtwinError(f"port {port} on 127.0.0.1 is in use; choose another with --port")
    keyring = load_keyring()
    start = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)
    echo(run_demo(db, n_patients=n_patients, seed=seed, start=start, keyring=keyring))
    settings = Settings.from_env(db=db or str(default_demo_path()))
    target = _fresh_target(db)
    store = EventStore.open(target, keyring=keyring)
    try:
        kinds = {pid: patient_kind(store, pid) for pid in store.patients()["id"]}
        logins = _add_users(store, settings, kinds)
        worse = [p for p, k in kinds.items() if k == "deteriorating"]
        vitals = worse + [p for p, k in kinds.items() if k in ("stable", "vancomycin")]
        ward = LiveWard(store, vitals=vitals, deteriorating=len(worse),
                        cgm=[p for p, k in kinds.items() if k == "t1d"], seed=seed,
                        broker_url=broker).start()
        try:
            app = create_app(settings, store, keyring, dashboard=True)
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                   log_level="warning", server_header=False))
            echo(_banner(port, ward.broker_url or "", logins, duration))
            if duration is not None:
                timer = threading.Timer(duration, lambda: setattr(server, "should_exit", True))
                timer.daemon = True
                timer.start()
            server.run()
        finally:
            ward.stop()
            echo(f"stopped: {ward.ingester.stats.stored} live readings stored, "
                 f"{ward.monitor.raised} alert(s) raised")
    finally:
        store.close()


def _fresh_target(db: str | None) -> str:
    """The demo store's location (already made fresh by :func:`run_demo`)."""
    if db is not None and "://" in db:
        return db
    return str(Path(db) if db else default_demo_path())


def _banner(port: int, broker: str, logins: list[DemoLogin], duration: float | None) -> str:
    lines = ["", f"medtwin is live: open http://127.0.0.1:{port}/ui/ in a browser",
             f"  API docs: http://127.0.0.1:{port}/docs   MQTT broker: {broker}", "",
             "demo sign-ins (passwords are generated for this run and shown only now):"]
    lines += [f"  {x.username:<11} {x.password:<14} {x.role:<10} {x.note}" for x in logins]
    lines += ["", f"stops by itself after {duration:g} s" if duration is not None
              else "Ctrl-C stops the demo"]
    return "\n".join(lines)
