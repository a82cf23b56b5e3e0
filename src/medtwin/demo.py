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
from typing import TYPE_CHECKING

from medtwin.core import codes
from medtwin.core.errors import MedtwinError
from medtwin.core.records import Observation
from medtwin.interop.fhir.synthetic import generate_patients, write_bundles
from medtwin.interop.importer import import_paths
from medtwin.store.engine import default_db_path
from medtwin.store.event_store import EventStore

if TYPE_CHECKING:
    from medtwin.security.crypto import KeyRing

log = logging.getLogger(__name__)

CGM = codes.GLUCOSE_INTERSTITIAL
CGM_EVERY_TICKS = 30  # a CGM reading per minute of the demo (the twin's grid step)
_SHOWN = {codes.HEART_RATE: "HR", codes.RESPIRATORY_RATE: "RR",
          codes.SPO2_PULSE_OXIMETRY: "SpO2", codes.BODY_TEMPERATURE: "Temp",
          codes.BP_PANEL: "BP", codes.BP_PANEL_OLD: "BP", codes.GLUCOSE_INTERSTITIAL: "CGM",
          codes.GLUCOSE_BLOOD: "Glucose", codes.GLUCOSE_BLOOD_MOLAR: "Glucose",
          codes.VANCOMYCIN_TROUGH: "Vanco trough"}


def default_demo_path() -> Path:
    """Where the demo keeps its store unless told otherwise."""
    return default_db_path().with_name("medtwin-demo.sqlite")


def _contents(db: str) -> str:
    """What an existing store holds, e.g. ``"105 patients"`` ("" when it holds no patient
    or is no medtwin store); read without migrating it."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from medtwin.store.engine import make_engine
    from medtwin.store.migrate import current

    engine = make_engine(db, create=False)
    try:
        with engine.connect() as conn:
            if current(conn) is None:
                return ""
            n = int(conn.execute(text("SELECT count(*) FROM patients")).scalar() or 0)
    except SQLAlchemyError:
        return ""
    finally:
        engine.dispose()
    return f"{n} patient(s)" if n else ""


def _fresh(db: str | None, force: bool = False) -> str:
    """The demo's store, emptied: its own default file is replaced on every run; a file
    named by ``db`` that exists is replaced only with ``force``; a server database that
    holds patients is never touched (the demo only appends to an empty one)."""
    if db is not None and "://" in db:
        held = _contents(db)
        if held:
            from medtwin.store.engine import describe, make_engine

            raise MedtwinError(f"the store at {describe(make_engine(db, create=False))} "
                               f"already holds {held}: the demo never wipes a server "
                               "database; give it an empty database or schema")
        return db
    path = Path(db) if db else default_demo_path()
    if db is not None and path.exists() and not force:
        held = _contents(str(path)) if path.is_file() else ""
        raise MedtwinError(f"{path} already exists{f' and holds {held}' if held else ''}: "
                           "the demo replaces its store; give --force to replace it, or "
                           "--db with a new path")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return str(path)


def _fmt(obs: Observation) -> str:
    if obs.components:
        parts = {c.code: c for c in obs.components}
        sys_, dia = parts.get(codes.SYSTOLIC_BP), parts.get(codes.DIASTOLIC_BP)
        if sys_ and dia and sys_.value is not None and dia.value is not None:
            return f"{sys_.value:.0f}/{dia.value:.0f} {sys_.unit}"
    return f"{round(obs.value, 1):g} {obs.unit}" if obs.value is not None else str(obs.value_text)


def demo_kinds(n: int) -> list[str]:
    """The demo's mix of ``n`` patients: one on vancomycin (from 4 patients on), the rest in
    turn deteriorating, with type-1 diabetes on a pump (CGM, insulin), stable."""
    rest = ("deteriorating", "t1d", "stable")
    if n < 4:
        return [rest[i % 3] for i in range(n)]
    return ["vancomycin"] + [rest[i % 3] for i in range(n - 1)]


def run_demo(db: str | None = None, *, n_patients: int = 6, seed: int = 0,
             start: datetime | None = None, keyring: object | None = None,
             force: bool = False) -> str:
    """Generate, import and summarise; return the summary text. ``start`` begins the
    patients' two-day stay (default: the generator's fixed date); the mix of patients is
    :func:`demo_kinds`. An existing ``db`` is replaced only with ``force``."""
    target = _fresh(db, force)
    bundles = generate_patients(n_patients, seed=seed, start=start,
                                kinds=demo_kinds(n_patients))
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


def care_teams(kinds: dict[str, str]) -> dict[str, list[str]]:
    """Split the patients between the two care teams kind by kind, so that each team has a
    share of every kind (a deteriorating patient, a patient with diabetes, ...)."""
    order = ["deteriorating", "t1d", "vancomycin", "stable"]
    ranked = sorted(kinds, key=lambda p: (order.index(kinds[p]) if kinds[p] in order
                                          else len(order), p))
    teams: dict[str, list[str]] = {"north": [], "south": []}
    for pid in ranked:  # the smaller team takes the next patient; north on ties
        min(teams.values(), key=len).append(pid)
    return teams


def _add_users(store: EventStore, settings: object, kinds: dict[str, str]) -> list[DemoLogin]:
    """Two clinicians with a care team each, an admin, a researcher, one patient user (a
    patient with diabetes when there is one: they see their own glucose twin)."""
    from medtwin.api.deps import build_services

    svc = build_services(settings, store, store.keyring)  # type: ignore[arg-type]
    d = svc.directory
    ids = list(kinds)
    teams = care_teams(kinds)
    me = next((p for p in ids if kinds[p] == "t1d"), ids[0])
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
    add("researcher", "researcher", "no identified data: trials, operations, API /research")
    add("patient", "patient", f"sees only themselves ({me[:8]})", patient_id=me)
    return logins


def live_demo(db: str | None = None, *, n_patients: int = 6, seed: int = 0, port: int = 8000,
              duration: float | None = None, broker: str | None = None,
              echo: Callable[[str], None] = log.info, force: bool = False) -> None:
    """Build the demo store, then run devices, broker, ingestion, monitoring and the service
    with its dashboard on 127.0.0.1:``port`` until Ctrl-C (or ``duration`` seconds)."""
    import uvicorn

    from medtwin.api.app import create_app
    from medtwin.api.settings import Settings
    from medtwin.live.sync import GlucoseHook
    from medtwin.live.ward import LiveWard
    from medtwin.security.crypto import KeyRing
    from medtwin.service import mount_dashboard
    from medtwin.twin.glucose_sync import GlucoseSync
    from medtwin.ui.twins import patient_kind

    if not port_free(port):
        raise MedtwinError(f"port {port} on 127.0.0.1 is in use; choose another with --port")
    # a key made on purpose for this run: the demo's store is new each run, and its audit
    # anchors from earlier runs (under earlier keys) are then told apart from this run's.
    # It is kept beside a file store so that the store can be read after the demo ends.
    keyring = KeyRing.generate()
    start = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)
    echo(run_demo(db, n_patients=n_patients, seed=seed, start=start, keyring=keyring,
                  force=force))
    settings = Settings.from_env(db=db or str(default_demo_path()))
    target = _fresh_target(db)
    key_file = _save_demo_key(keyring, target)
    if key_file is not None:
        echo(f"the demo store's key: {key_file} (after the demo: MEDTWIN_KEY_FILE={key_file} "
             f"medtwin export PATIENT --db {target})")
    store = EventStore.open(target, keyring=keyring)
    try:
        kinds = {pid: patient_kind(store, pid) for pid in store.patients()["id"]}
        logins = _add_users(store, settings, kinds)
        worse = [p for p, k in kinds.items() if k == "deteriorating"]
        vitals = worse + [p for p, k in kinds.items() if k in ("stable", "vancomycin")]
        cgm = [p for p, k in kinds.items() if k == "t1d"]
        # the glucose twins run in the monitor loop: each CGM reading is assimilated, and a
        # predicted low raises an alert; the CGMs continue from the last stored reading
        ward = LiveWard(store, vitals=vitals, deteriorating=len(worse), cgm=cgm, seed=seed,
                        broker_url=broker, hooks=[GlucoseHook(GlucoseSync(store))],
                        cgm_every=CGM_EVERY_TICKS, cgm_start=_last_cgm(store, cgm)).start()
        try:
            app = create_app(settings, store, keyring)
            mount_dashboard(app)  # the edge mounts the dashboard (api does not import ui)
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                   log_level="warning", server_header=False,
                                                   proxy_headers=False))
            echo(_banner(port, ward.broker_url or "", logins, duration))
            if ward.broker_notice:  # which broker runs; the embedded one's limits
                echo(ward.broker_notice)
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


def _last_cgm(store: EventStore, patients: list[str]) -> dict[str, float]:
    """The last stored CGM value [mg/dL] of each patient that has one."""
    out = {}
    for pid in patients:
        frame = store.timeline_frame(pid, kinds=["observation"], codes=[CGM])
        if len(frame):
            out[pid] = float(frame.sort_values("time")["value"].iloc[-1])
    return out


def _fresh_target(db: str | None) -> str:
    """The demo store's location (already made fresh by :func:`run_demo`)."""
    if db is not None and "://" in db:
        return db
    return str(Path(db) if db else default_demo_path())


def _save_demo_key(keyring: KeyRing, target: str) -> Path | None:
    """Write this run's key beside a file store (``<store>.key``, 0600), replacing the last
    run's; a server database gets none (its key is the operator's)."""
    if "://" in target:
        return None
    path = Path(target).with_suffix(".key")
    path.unlink(missing_ok=True)
    keyring.save(path)
    return path


def _banner(port: int, broker: str, logins: list[DemoLogin], duration: float | None) -> str:
    lines = ["", f"medtwin is live: open http://127.0.0.1:{port}/ui/ in a browser",
             f"  API docs: http://127.0.0.1:{port}/docs   MQTT broker: {broker}", "",
             "demo sign-ins (passwords are generated for this run and shown only now):"]
    lines += [f"  {x.username:<11} {x.password:<14} {x.role:<10} {x.note}" for x in logins]
    lines += ["", f"stops by itself after {duration:g} s" if duration is not None
              else "Ctrl-C stops the demo"]
    return "\n".join(lines)
