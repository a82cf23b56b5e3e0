"""`medtwin live`: ingest device readings from MQTT into the store until stopped."""

from __future__ import annotations

import logging
import signal
import threading

import typer

from medtwin.core.errors import MedtwinError
from medtwin.live.ingest import Ingester
from medtwin.store.event_store import EventStore

app = typer.Typer(add_completion=False)
log = logging.getLogger(__name__)


@app.command("live")
def live_cmd(
    broker: str = typer.Option("mqtt://127.0.0.1:1883", "--broker", help="MQTT broker URL."),
    db: str | None = typer.Option(None, "--db", help="Store URL or SQLite path."),
    prefix: str = typer.Option("medtwin", "--prefix", help="Topic prefix."),
    client_id: str = typer.Option("medtwin-ingester", "--client-id",
                                  help="MQTT client id: the persistent session's name."),
    group: str | None = typer.Option(None, "--group", help="Share the stream with other "
                                     "ingesters of this group (MQTT 5 shared subscription)."),
    report_every: float = typer.Option(10.0, "--report-every", help="Seconds between logs."),
) -> None:
    """Run ingestion until Ctrl-C or SIGTERM; every acknowledged reading is stored."""
    logging.getLogger("medtwin").setLevel(logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with EventStore.open(db) as store:
            ingester = Ingester(store, broker=broker, prefix=prefix, client_id=client_id,
                                group=group).start()
            typer.echo(f"ingesting {ingester.topic} from {broker} into {store!r}", err=True)
            try:
                while not stop.wait(report_every):
                    log.info("%s", ingester.stats)
            except KeyboardInterrupt:
                pass
            ingester.stop()
            typer.echo(f"stopped: {ingester.stats}", err=True)
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
