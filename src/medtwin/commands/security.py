"""CLI groups of the service and its security: users, device keys, audit, keys, serve."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medtwin.commands._common import (
    DB_HELP,
    FINDINGS,
    JSON_HELP,
    USAGE,
    echo_json,
    open_store,
    progress,
)
from medtwin.commands._common import fail as _fail
from medtwin.core.errors import MedtwinError
from medtwin.security.audit import AuditError, AuditLog
from medtwin.security.crypto import (
    ENV_KEY,
    ENV_KEY_FILE,
    KeyRing,
    configured_key_file,
    create_key_file,
    load_key_file,
)
from medtwin.store.event_store import EventStore

if TYPE_CHECKING:
    from medtwin.api.settings import Settings
    from medtwin.security.directory import Directory

user_app = typer.Typer(help="Users of the service: add, list, disable.", no_args_is_help=True)
key_app = typer.Typer(help="Device API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys of identifying fields.", no_args_is_help=True)
serve_app = typer.Typer(help="Run the HTTP service.")


def open_secure_store(db: str | None, *, create: bool = False) -> EventStore:
    """The store with the configured key ring (the edge where keys are loaded); refused
    without a key, or when the store's identities are sealed with a key the ring lacks.
    ``create``: a command that writes makes a missing store (and says so)."""
    return open_store(db, need_key=True, create=create)


def _settings() -> Settings:
    from medtwin.api.settings import Settings

    try:
        return Settings.from_env()
    except MedtwinError as exc:  # the MEDTWIN_* configuration: the user fixes it
        _fail(exc, USAGE)


def _directory(store: EventStore) -> Directory:
    from medtwin.security.directory import Directory  # argon2, zxcvbn: the server extra
    from medtwin.security.passwords import PasswordHasher

    s = _settings()
    return Directory(store.engine, PasswordHasher(time_cost=s.argon2_time_cost,
                                                  memory_kib=s.argon2_memory_kib))


def audit_log(store: EventStore) -> AuditLog:
    """The store's audit chain, keyed by its key ring and anchored where the service anchors
    it (``MEDTWIN_AUDIT_ANCHOR_FILE``, else next to the key file)."""
    from medtwin.security.audit_anchor import anchor_sink

    ring = store.keyring
    assert isinstance(ring, KeyRing)  # open_secure_store opened it with one
    s = _settings()
    return AuditLog(store.engine, ring,
                    anchor_sink(store.engine, configured=s.audit_anchor_file,
                                key_file=ring.file),
                    anchor_every=s.audit_anchor_every, anchor_seconds=s.audit_anchor_seconds)


def _audit(store: EventStore, action: str, resource: str, detail: str | None = None,
           patient_id: str | None = None) -> None:
    from medtwin.security.audit import AuditEntry

    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    log = audit_log(store)
    try:
        log.append(AuditEntry(actor=actor, role="admin", action=action, resource=resource,
                              outcome="success", patient_id=patient_id, detail=detail,
                              source="local"))
    except MedtwinError as exc:
        _fail(exc)
    log.close()  # the command ends here: anchor what it appended


# --- users ---------------------------------------------------------------------------------
@user_app.command("add")
def user_add(
    username: str = typer.Argument(..., help="Login name."),
    role: str = typer.Option(..., "--role", help="clinician, patient, researcher or admin."),
    patient: str | None = typer.Option(None, "--patient", help="For a patient user: who."),
    team: list[str] = typer.Option([], "--team", help="Care team(s) of a clinician."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Add a user; the password is asked for (or read from MEDTWIN_PASSWORD)."""
    password = os.environ.get("MEDTWIN_PASSWORD") or typer.prompt(
        "password", hide_input=True, confirmation_prompt=True)
    with open_secure_store(db, create=True) as store:
        d = _directory(store)
        try:
            user = d.add_user(username, role, password, patient_id=patient)
            for t in team:
                d.add_to_team(t, user_id=user.id)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "create", f"user:{username}", patient_id=user.patient_id)
    if as_json:
        echo_json({"id": user.id, "username": user.username, "role": user.role.value,
                   "patient_id": user.patient_id, "teams": team})
        return
    typer.echo(f"added {user.role.value} {user.username} ({user.id})")


@user_app.command("list")
def user_list(db: str | None = typer.Option(None, "--db", help=DB_HELP),
              as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List users (never their password hashes)."""
    with open_secure_store(db) as store:
        users = _directory(store).users()
    rows = [{"username": u.username, "role": u.role.value, "patient_id": u.patient_id,
             "disabled": u.disabled} for u in users]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['username']:<24} {r['role']:<11} "
                   f"{'disabled' if r['disabled'] else 'active':<9} {r['patient_id'] or ''}")
    if not rows:
        typer.echo("no users; `medtwin user add NAME --role admin` adds the first")


@user_app.command("disable")
def user_disable(username: str = typer.Argument(..., help="Login name."),
                 db: str | None = typer.Option(None, "--db", help=DB_HELP),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Disable a user: their tokens stop working at once."""
    with open_secure_store(db) as store:
        try:
            _directory(store).disable(username)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "disable", f"user:{username}")
    if as_json:
        echo_json({"username": username, "disabled": True})
        return
    typer.echo(f"disabled {username}")


@user_app.command("team")
def user_team(team: str = typer.Argument(..., help="Care team name."),
              patient: list[str] = typer.Option([], "--patient", help="Patient id(s) to add."),
              member: list[str] = typer.Option([], "--member", help="Clinician(s) to add."),
              db: str | None = typer.Option(None, "--db", help=DB_HELP),
              as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Add patients and clinicians to a care team."""
    with open_secure_store(db) as store:
        d = _directory(store)
        try:
            for name in member:
                u = d.find(name)
                if u is None:
                    _fail(f"no user {name!r}; `medtwin user list` shows them")
                d.add_to_team(team, user_id=u.id)
            for pid in patient:
                d.add_to_team(team, patient_id=pid)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "update", f"care-team:{team}",
               detail=f"+{len(member)} members, +{len(patient)} patients")
    if as_json:
        echo_json({"team": team, "members_added": member, "patients_added": patient})
        return
    typer.echo(f"care team {team}: added {len(member)} member(s), {len(patient)} patient(s)")


# --- device keys -------------------------------------------------------------------------------
BROKER_DIR_HELP = ("Folder of the Mosquitto password and ACL files to keep current "
                   "(default: MEDTWIN_MQTT_BROKER_DIR; none: no broker files).")
PREFIX_HELP = "Topic prefix the ingester reads (medtwin live --prefix)."
INGESTER_HELP = ("Broker username of the ingester (default: MEDTWIN_MQTT_USERNAME, else "
                 "medtwin-ingester); its password is MEDTWIN_MQTT_PASSWORD, else generated.")


def _broker_files(store: EventStore, folder: Path, *, prefix: str, ingester: str | None,
                  new_keys: dict[str, str] | None = None) -> dict:
    """Rewrite the broker's password and ACL files from the store's device keys; what was
    written, for ``--json``."""
    from medtwin.live.acl import RELOAD_HINT, device_accounts, write_broker_files

    s = _settings()
    secret = s.mqtt_password.get_secret_value() if s.mqtt_password else None
    user = ingester or s.mqtt_username or "medtwin-ingester"
    try:
        files = write_broker_files(folder.expanduser(), device_accounts(store.engine),
                                   prefix=prefix, ingester=user, ingester_password=secret,
                                   new_keys=new_keys)
    except (MedtwinError, OSError) as exc:
        _fail(exc)
    _audit(store, "update", "broker-credentials",
           detail=f"{files.devices} device accounts, {files.removed} removed")
    typer.echo(f"wrote {files.folder}/passwd and acl ({files.devices} device account(s), "
               f"{files.removed} removed) and an example mosquitto.conf; {RELOAD_HINT}",
               err=True)
    if files.skipped:
        typer.echo(f"warning: {files.skipped} key(s) left out: their device or patient id "
                   "cannot be used in an MQTT topic", err=True)
    if files.missing:
        typer.echo(f"warning: {files.missing} key(s) have no broker password: they were "
                   "issued before a broker folder was set; issue new ones with `medtwin key "
                   "add --broker-dir ...` and revoke the old", err=True)
    if files.ingester_password:
        typer.echo(f"new broker password of the ingester {user!r} (shown once; set "
                   f"MEDTWIN_MQTT_PASSWORD to it): {files.ingester_password}", err=True)
    return {"folder": str(files.folder), "device_accounts": files.devices,
            "removed": files.removed, "skipped": files.skipped, "missing": files.missing,
            "ingester": user, "ingester_password_generated": bool(files.ingester_password)}


@key_app.command("add")
def key_add(device: str = typer.Option(..., "--device", help="Device id."),
            patient: str = typer.Option(..., "--patient", help="The patient it reports for."),
            db: str | None = typer.Option(None, "--db", help=DB_HELP),
            broker_dir: Path | None = typer.Option(None, "--broker-dir", help=BROKER_DIR_HELP),
            prefix: str = typer.Option("medtwin", "--prefix", help=PREFIX_HELP),
            ingester_user: str | None = typer.Option(None, "--ingester-user",
                                                     help=INGESTER_HELP),
            as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " The key is "
                                         "in it: a bearer token, shown only now.")) -> None:
    """Issue a device API key bound to one patient; it is printed once, keep it safe. It is
    also the device's MQTT password (username ``mtk_<key id>``), allowed by the broker's ACL
    to publish only this patient's and device's topics."""
    from medtwin.live.acl import device_username

    folder = broker_dir or (Path(s) if (s := _settings().mqtt_broker_dir) else None)
    with open_secure_store(db, create=True) as store:
        try:
            key = _directory(store).add_device_key(device, patient)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "create", f"device-key:{device}", patient_id=patient)
        user = device_username(key)
        if not as_json:
            typer.echo(key)
        where = "'key' above" if as_json else "line above"
        typer.echo(f"the {where} is a bearer token, shown only now: whoever holds it can "
                   "send this patient's readings (HTTP header 'Authorization: Bearer KEY'); "
                   "store it like a password, revoke it with `medtwin key revoke`", err=True)
        typer.echo(f"MQTT: username {user}, password the key above; it may publish only "
                   f"{prefix}/<site>/{patient}/{device}/<metric>", err=True)
        files = None
        if folder is not None:
            files = _broker_files(store, folder, prefix=prefix, ingester=ingester_user,
                                  new_keys={user: key})
    if as_json:
        echo_json({"key": key, "kind": "bearer token (shown only now)", "device": device,
                   "patient": patient, "mqtt_username": user,
                   "topics": f"{prefix}/<site>/{patient}/{device}/<metric>",
                   "broker_files": files})


@key_app.command("revoke")
def key_revoke(key_id: str = typer.Argument(..., help="The key id (mtk_<id> or <id>)."),
               db: str | None = typer.Option(None, "--db", help=DB_HELP),
               broker_dir: Path | None = typer.Option(None, "--broker-dir",
                                                      help=BROKER_DIR_HELP),
               prefix: str = typer.Option("medtwin", "--prefix", help=PREFIX_HELP),
               ingester_user: str | None = typer.Option(None, "--ingester-user",
                                                        help=INGESTER_HELP),
               as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Revoke a device key at once (the API refuses it; the broker after its files are
    rewritten and reloaded, done here when a broker folder is configured)."""
    kid = key_id.removeprefix("mtk_")
    folder = broker_dir or (Path(s) if (s := _settings().mqtt_broker_dir) else None)
    with open_secure_store(db) as store:
        try:
            _directory(store).revoke_device_key(kid)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "revoke", f"device-key:{kid}")
        if not as_json:
            typer.echo(f"revoked device key {kid}")
        files = None
        if folder is not None:
            files = _broker_files(store, folder, prefix=prefix, ingester=ingester_user)
    if as_json:
        echo_json({"revoked": kid, "broker_files": files})


@key_app.command("broker-config")
def key_broker_config(out: Path | None = typer.Option(None, "--out", help="Folder to write "
                                                      "passwd, acl and mosquitto.conf into "
                                                      "(default: MEDTWIN_MQTT_BROKER_DIR)."),
                      db: str | None = typer.Option(None, "--db", help=DB_HELP),
                      prefix: str = typer.Option("medtwin", "--prefix", help=PREFIX_HELP),
                      ingester_user: str | None = typer.Option(None, "--ingester-user",
                                                               help=INGESTER_HELP),
                      as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
                      ) -> None:
    """Write Mosquitto's password file and ACL from the device keys: each device publishes
    only its own patient's and device's topics, the ingester reads them all. Keys issued
    earlier keep their entries; revoked keys lose theirs."""
    folder = out or (Path(s) if (s := _settings().mqtt_broker_dir) else None)
    if folder is None:
        _fail("give --out DIR (or set MEDTWIN_MQTT_BROKER_DIR)")
    with open_secure_store(db) as store:
        files = _broker_files(store, folder, prefix=prefix, ingester=ingester_user)
    if as_json:
        echo_json(files)


# --- audit ---------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(db: str | None = typer.Option(None, "--db", help=DB_HELP),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Check the audit chain (HMACs under the key ring, links, head) and that every anchor
    outside the database agrees with it; exit 1 and say what was found. Reads the chain a
    page at a time (constant memory)."""
    from sqlalchemy import select

    from medtwin.store import schema as t

    with open_secure_store(db) as store:
        log = audit_log(store)
        with store.engine.connect() as conn:
            total = int(conn.scalar(select(t.audit_head.c.seq)) or 0)
        with progress(total, "verifying the audit chain", unit="entry") as bar:
            v = log.verify(progress=bar.update)
    if as_json:
        typer.echo(json.dumps(v.as_dict(), indent=2))
    else:
        typer.echo(v.text())
    if not v.ok:
        raise typer.Exit(FINDINGS)


@audit_app.command("anchor")
def audit_anchor(db: str | None = typer.Option(None, "--db", help=DB_HELP),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Anchor the audit chain's head outside the database now (the service also anchors
    every N entries and T seconds: MEDTWIN_AUDIT_ANCHOR_EVERY / _SECONDS)."""
    with open_secure_store(db) as store:
        log = audit_log(store)
        try:
            a = log.anchor()
        except AuditError as exc:  # no anchor sink configured, or nothing to anchor yet
            _fail(exc, USAGE)
        except MedtwinError as exc:
            _fail(exc)
    where = log.anchors.describe() if log.anchors else "?"
    if as_json:
        echo_json({"seq": a.seq, "hash": a.hash, "anchored_in": where})
        return
    typer.echo(f"anchored entry #{a.seq} {a.hash[:16]} in {where}")


@audit_app.command("export")
def audit_export(db: str | None = typer.Option(None, "--db", help=DB_HELP),
                 patient: str | None = typer.Option(None, "--patient")) -> None:
    """Write audit entries as a FHIR Bundle of AuditEvent to stdout."""
    from medtwin.security.audit_fhir import audit_bundle

    with open_secure_store(db) as store:
        entries = audit_log(store).entries(patient_id=patient)
    typer.echo(json.dumps(audit_bundle(entries), indent=2))


# --- encryption keys -------------------------------------------------------------------------
@keys_app.command("generate")
def keys_generate(out: Path | None = typer.Option(None, "--out", help="Where to write the "
                                                  "key file (default: MEDTWIN_KEY_FILE, else "
                                                  "keys.json in the user data directory). An "
                                                  "existing key file is never replaced (there "
                                                  "is no --force: losing a key loses the data "
                                                  "sealed under it)."),
                  as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Create a new key file (0600); an existing file is never replaced. Back it up: what
    is sealed under it cannot be read without it."""
    path = (out.expanduser() if out else configured_key_file())
    if path is None:
        _fail(f"{ENV_KEY} holds the key; give --out PATH for a key file")
    try:
        ring = create_key_file(path)
    except (MedtwinError, OSError) as exc:
        _fail(exc)
    if as_json:
        echo_json({"key_file": str(path), "key": ring.current})
        return
    typer.echo(f"created key file {path} (key {ring.current}); back it up, and set "
               f"{ENV_KEY_FILE}={path} when it is not the default location")


@keys_app.command("rotate")
def keys_rotate(db: str | None = typer.Option(None, "--db", help=DB_HELP),
                drop_old: bool = typer.Option(False, "--drop-old", help="Remove old keys from "
                                              "the file once everything is re-encrypted."),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Make a new key, re-encrypt every identity under it, and save the key file."""
    if os.environ.get(ENV_KEY):
        _fail(f"{ENV_KEY} holds a single key; rotate with a key file ({ENV_KEY_FILE})")
    path = configured_key_file()
    assert path is not None  # MEDTWIN_KEY was refused above
    try:
        ring = load_key_file(path)  # never made here: `medtwin keys generate` does that
    except MedtwinError as exc:
        _fail(exc)
    new = ring.rotated()
    new.save(path)  # saved first: even if the re-encryption fails, no key is lost
    with open_secure_store(db) as store:
        try:
            n = store.reseal_identities(new)
            from medtwin.interop.fhir.repository import FhirRepository
            m = FhirRepository(store).reseal(new)  # stored FHIR resources too
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "rotate-key", "identity",
               detail=f"{n} identities, {m} resource versions under {new.current}")
    if drop_old:
        new.without_old_keys().save(path)
    if as_json:
        echo_json({"identities": n, "resource_versions": m, "key": new.current,
                   "key_file": str(path), "old_keys_dropped": drop_old})
        return
    typer.echo(f"re-encrypted {n} patient identities and {m} FHIR resource versions under "
               f"key {new.current}; key file {path}")


# --- serve ---------------------------------------------------------------------------------
@serve_app.callback(invoke_without_command=True)
def serve(db: str | None = typer.Option(None, "--db", help=DB_HELP),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
          port: int = typer.Option(8000, "--port", min=1, max=65535),
          workers: int = typer.Option(1, "--workers", min=1, max=64, help="Worker processes "
                                      "(more than one needs a PostgreSQL store)."),
          proxy_headers: bool = typer.Option(False, "--proxy-headers", help="Believe "
                                             "X-Forwarded-For/-Proto from the proxies in "
                                             "MEDTWIN_TRUSTED_PROXIES (and only from them)."),
          root_path: str = typer.Option("", "--root-path", help="The path prefix a proxy "
                                        "serves the service under (e.g. /medtwin)."),
          dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard",
                                         help="Serve the web dashboard under /ui."),
          json_logs: bool = typer.Option(True, "--json-logs/--plain-logs",
                                         help="Structured JSON log lines with request ids.")
          ) -> None:
    """Run the HTTP service.

    Settings come from MEDTWIN_* variables; --workers N runs N processes of the app factory
    medtwin.service:create_app."""
    import secrets
    import shutil
    import tempfile

    import uvicorn

    from medtwin.api.request_log import json_logging
    from medtwin.api.settings import Settings
    from medtwin.security.crypto import key_configured
    from medtwin.service import ENV_DASHBOARD, ENV_METRICS_DIR

    try:
        settings = Settings.from_env(db=db)
        if settings.mode == "production" and not key_configured():
            _fail("production mode needs MEDTWIN_KEY or MEDTWIN_KEY_FILE")
    except MedtwinError as exc:  # the MEDTWIN_* configuration: the user fixes it
        _fail(exc, USAGE)
    if workers > 1 and not (settings.db or "").startswith("postgresql"):
        _fail(f"--workers {workers} needs a PostgreSQL store (--db postgresql://... or "
              "MEDTWIN_DB): workers share sessions and login limits through it, and a SQLite "
              "file is a single-process store; run one worker on SQLite")
    if proxy_headers and not settings.trusted_proxies:
        _fail("--proxy-headers needs MEDTWIN_TRUSTED_PROXIES (the proxies whose "
              "X-Forwarded-* headers are believed, e.g. 10.0.0.5 or 10.0.0.0/8)")
    if root_path and not root_path.startswith("/"):
        _fail(f"--root-path must start with '/', got {root_path!r}")
    # opened once before the workers: keys checked, migrations applied by one process
    open_secure_store(settings.db, create=True).close()
    if db:
        os.environ["MEDTWIN_DB"] = db
    if settings.secret_generated:  # one secret for every worker of this run
        typer.echo("warning: no MEDTWIN_SECRET: a random one was made; tokens end with this "
                   "run", err=True)
        os.environ["MEDTWIN_SECRET"] = secrets.token_urlsafe(48)
    os.environ[ENV_DASHBOARD] = "1" if dashboard else "0"
    metrics_dir = None
    if workers > 1:  # prometheus_client adds up the workers' metrics from this directory
        metrics_dir = tempfile.mkdtemp(prefix="medtwin-metrics-")
        os.environ[ENV_METRICS_DIR] = metrics_dir
    try:
        uvicorn.run("medtwin.service:create_app", factory=True, host=host, port=port,
                    workers=workers, root_path=root_path, server_header=False,
                    proxy_headers=proxy_headers,
                    forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
                    access_log=False,  # medtwin.access logs route templates, never raw paths
                    log_config=json_logging() if json_logs else uvicorn.config.LOGGING_CONFIG)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
