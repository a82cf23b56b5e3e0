"""``medtwin db``: the store's schema version (Alembic migrations under a lock)."""

from __future__ import annotations

import json

import typer

from medtwin.commands._common import DB_HELP, FINDINGS, JSON_HELP, echo_json, fail
from medtwin.core.errors import MedtwinError

app = typer.Typer(help="The store's schema: create or upgrade it, show its version and the "
                  "migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_cmd(db: str | None = typer.Option(None, "--db", help=DB_HELP),
                revision: str = typer.Option("head", "--revision", help="Upgrade to this "
                                             "version (default: the newest)."),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Create the store or bring its schema up to date.

    Safe while other processes open it: one runs the migrations, the others wait."""
    from medtwin.store.engine import describe, make_engine
    from medtwin.store.migrate import upgrade

    try:
        engine = make_engine(db, create=True)
        try:
            done = upgrade(engine, target=revision)
        finally:
            engine.dispose()
    except MedtwinError as exc:
        fail(exc)
    where = describe(engine)
    if as_json:
        echo_json({"store": where, "before": done.before, "after": done.after,
                   "created": done.before is None, "upgraded": bool(done.ran)})
    elif done.before is None:
        typer.echo(f"created a new store at {where} (schema {done.after})")
    elif done.ran:
        typer.echo(f"upgraded the store at {where} from schema {done.before} to {done.after}")
    else:
        typer.echo(f"the store at {where} is at schema {done.after}: nothing to do")


@app.command("current")
def current_cmd(db: str | None = typer.Option(None, "--db", help=DB_HELP),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Show the store's schema version next to the newest this medtwin knows.

    Exit 1 when the store is behind; a store newer than this medtwin is an error."""
    from medtwin.store.engine import describe, make_engine
    from medtwin.store.migrate import StoreNotFoundError, check, current, head

    try:
        engine = make_engine(db, create=False)
        try:
            found = current(engine)
            check(found, describe(engine))
        finally:
            engine.dispose()
        if found is None:
            raise StoreNotFoundError(describe(engine))
    except MedtwinError as exc:
        fail(exc)
    newest = head()
    if as_json:
        typer.echo(json.dumps({"store": describe(engine), "current": found, "head": newest,
                               "up_to_date": found == newest}))
    elif found == newest:
        typer.echo(f"{found} (head): the store at {describe(engine)} is up to date")
    else:
        typer.echo(f"{found}: the store at {describe(engine)} is behind {newest}; "
                   "`medtwin db upgrade` (or any command opening it) upgrades it")
    if found != newest:
        raise typer.Exit(FINDINGS)


@app.command("history")
def history_cmd(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the migrations this medtwin knows, oldest first."""
    from medtwin.store.migrate import history

    revs = history()
    if as_json:
        typer.echo(json.dumps([{"revision": r.id, "down": r.down, "doc": r.doc}
                               for r in revs], indent=2))
        return
    for r in revs:
        typer.echo(f"{r.id}  {r.doc if len(r.doc) <= 90 else r.doc[:89] + '…'}")
