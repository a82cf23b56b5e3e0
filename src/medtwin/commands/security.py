"""CLI groups of the service and its security: users, device keys, audit, keys, serve."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from medtwin.commands._common import open_store, progress
from medtwin.core.errors import MedtwinError
from medtwin.security.audit import AuditLog
from medtwin.security.crypto import (
    ENV_KEY,
    ENV_KEY_FILE,
    KeyRing,
    configured_key_file,
    create_key_file,
    load_key_file,
)
from medtwin.security.directory import Directory
from medtwin.security.passwords import PasswordHasher
from medtwin.store.event_store import EventStore

if TYPE_CHECKING:
    from medtwin.api.settings import Settings

DB_HELP = "Store URL or SQLite path (default: medtwin.sqlite in the user data directory)."

user_app = typer.Typer(help="Users of the service: add, list, disable.", no_args_is_help=True)
key_app = typer.Typer(help="Device API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys of identifying fields.", no_args_is_help=True)
serve_app = typer.Typer(help="Run the HTTP service.")


def _fail(exc: Exception | str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def open_secure_store(db: str | None) -> EventStore:
    """The store with the configured key ring (the edge where keys are loaded); refused
    without a key, or when the store's identities are sealed with a key the ring lacks."""
    return open_store(db, need_key=True)


def _settings() -> Settings:
    from medtwin.api.settings import Settings

    try:
        return Settings.from_env()
    except MedtwinError as exc:
        _fail(exc)


def _directory(store: EventStore) -> Directory:
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
) -> None:
    """Add a user; the password is asked for (or read from MEDTWIN_PASSWORD)."""
    password = os.environ.get("MEDTWIN_PASSWORD") or typer.prompt(
        "password", hide_input=True, confirmation_prompt=True)
    with open_secure_store(db) as store:
        d = _directory(store)
        try:
            user = d.add_user(username, role, password, patient_id=patient)
            for t in team:
                d.add_to_team(t, user_id=user.id)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "create", f"user:{username}", patient_id=user.patient_id)
    typer.echo(f"added {user.role.value} {user.username} ({user.id})")


@user_app.command("list")
def user_list(db: str | None = typer.Option(None, "--db", help=DB_HELP),
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
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
def user_disable(username: str = typer.Argument(...),
                 db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Disable a user: their tokens stop working at once."""
    with open_secure_store(db) as store:
        try:
            _directory(store).disable(username)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "disable", f"user:{username}")
    typer.echo(f"disabled {username}")


@user_app.command("team")
def user_team(team: str = typer.Argument(..., help="Care team name."),
              patient: list[str] = typer.Option([], "--patient", help="Patient id(s) to add."),
              member: list[str] = typer.Option([], "--member", help="Clinician(s) to add."),
              db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Add patients and clinicians to a care team."""
    with open_secure_store(db) as store:
        d = _directory(store)
        try:
            for name in member:
                u = d.find(name)
                if u is None:
                    _fail(f"no user {name!r}")
                d.add_to_team(team, user_id=u.id)
            for pid in patient:
                d.add_to_team(team, patient_id=pid)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "update", f"care-team:{team}",
               detail=f"+{len(member)} members, +{len(patient)} patients")
    typer.echo(f"care team {team}: added {len(member)} member(s), {len(patient)} patient(s)")


# --- device keys -------------------------------------------------------------------------------
@key_app.command("add")
def key_add(device: str = typer.Option(..., "--device", help="Device id."),
            patient: str = typer.Option(..., "--patient", help="The patient it reports for."),
            db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Issue a device API key bound to one patient; it is printed once, keep it safe."""
    with open_secure_store(db) as store:
        try:
            key = _directory(store).add_device_key(device, patient)
        except MedtwinError as exc:
            _fail(exc)
        _audit(store, "create", f"device-key:{device}", patient_id=patient)
    typer.echo(key)


# --- audit ---------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(db: str | None = typer.Option(None, "--db", help=DB_HELP),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
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
        raise typer.Exit(1)


@audit_app.command("anchor")
def audit_anchor(db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Anchor the audit chain's head outside the database now (the service also anchors
    every N entries and T seconds: MEDTWIN_AUDIT_ANCHOR_EVERY / _SECONDS)."""
    with open_secure_store(db) as store:
        log = audit_log(store)
        try:
            a = log.anchor()
        except MedtwinError as exc:
            _fail(exc)
    where = log.anchors.describe() if log.anchors else "?"
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
                                                  "keys.json in the user data directory)."),
                  ) -> None:
    """Create a new key file (0600); an existing file is never replaced. Back it up: what
    is sealed under it cannot be read without it."""
    path = (out.expanduser() if out else configured_key_file())
    if path is None:
        _fail(f"{ENV_KEY} holds the key; give --out PATH for a key file")
    try:
        ring = create_key_file(path)
    except (MedtwinError, OSError) as exc:
        _fail(exc)
    typer.echo(f"created key file {path} (key {ring.current}); back it up, and set "
               f"{ENV_KEY_FILE}={path} when it is not the default location")


@keys_app.command("rotate")
def keys_rotate(db: str | None = typer.Option(None, "--db", help=DB_HELP),
                drop_old: bool = typer.Option(False, "--drop-old", help="Remove old keys from "
                                              "the file once everything is re-encrypted.")
                ) -> None:
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
    typer.echo(f"re-encrypted {n} patient identities and {m} FHIR resource versions under "
               f"key {new.current}; key file {path}")


# --- serve ---------------------------------------------------------------------------------
@serve_app.callback(invoke_without_command=True)
def serve(db: str | None = typer.Option(None, "--db", help=DB_HELP),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
          port: int = typer.Option(8000, "--port", min=1, max=65535)) -> None:
    """Run the HTTP service (settings from MEDTWIN_* variables; see the docs)."""
    import uvicorn

    from medtwin.api.app import create_app
    from medtwin.api.settings import Settings
    from medtwin.security.crypto import key_configured

    try:
        settings = Settings.from_env(db=db)
        if settings.mode == "production" and not key_configured():
            _fail("production mode needs MEDTWIN_KEY or MEDTWIN_KEY_FILE")
    except MedtwinError as exc:
        _fail(exc)
    store = open_secure_store(settings.db)
    try:
        app = create_app(settings, store, store.keyring,  # type: ignore[arg-type]
                         dashboard=True)
        uvicorn.run(app, host=host, port=port, log_level="info", server_header=False,
                    proxy_headers=False)  # the app trusts only MEDTWIN_TRUSTED_PROXIES
    finally:
        store.close()
