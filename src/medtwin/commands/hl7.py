"""`medtwin hl7`: receive HL7 v2 over MLLP into the store, and send a message file to a
listener (for tests, demonstrations and checking an interface end to end)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from medtwin.commands._common import (
    DB_HELP,
    FINDINGS,
    JSON_HELP,
    RUNTIME,
    echo_json,
    fail,
    open_store,
    usage,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="HL7 v2 over MLLP: ADT (admissions, transfers, discharges) and ORU "
                  "(results) from an EHR or a lab system.")
log = logging.getLogger(__name__)


@app.command("listen")
def listen_cmd(
    port: int = typer.Option(2575, "--port", min=0, max=65535,
                             help="TCP port (2575 is HL7's; 0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    tz: str = typer.Option("UTC", "--tz", help="Time zone of times sent without an offset "
                           "(the sender's, an IANA name such as Europe/Berlin)."),
    processing_id: list[str] = typer.Option(["P"], "--processing-id",
                                            help="MSH-11 values accepted (repeat for more; "
                                            "P production, T training, D debugging)."),
    frame_timeout: float = typer.Option(30.0, "--frame-timeout", min=0.1,
                                        help="Seconds a started frame may take to end."),
    max_messages: int | None = typer.Option(None, "--max-messages", min=1,
                                            help="Stop after this many messages."),
    duration: float | None = typer.Option(None, "--duration", min=0.1,
                                          help="Stop after this many seconds."),
) -> None:
    """Listen for HL7 v2 messages until Ctrl-C or SIGTERM; ACK each once it is stored."""
    from medtwin.live.hl7_handler import Hl7Handler
    from medtwin.live.mllp import MllpListener

    logging.getLogger("medtwin").setLevel(logging.INFO)
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        usage(f"{tz!r} is not a time zone name (e.g. UTC, Europe/Berlin)", "--tz")
    with open_store(db, need_key=True, create=True) as store:
        handler = Hl7Handler(store, tz=zone, processing_ids=tuple(processing_id))
        listener = MllpListener(handler.handle, host=host, port=port,
                                frame_timeout=frame_timeout, max_messages=max_messages,
                                duration=duration)
        try:
            listener.run(on_started=lambda p: typer.echo(
                f"listening for HL7 v2 (MLLP) on {host}:{p}, storing into {store!r}", err=True))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another "
                 "listener using the port? (--port)", RUNTIME)
        typer.echo(f"stopped: {handler.stats}", err=True)


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a file: segments end in CR (CRLF and LF accepted), each message
    starts with MSH; blank lines between messages are ignored."""
    text = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    parts = re.split(rb"\r+(?=MSH)", text.strip(b"\r"))
    return [p.strip(b"\r") + b"\r" for p in parts if p.strip(b"\r")]


async def _send(host: str, port: int, messages: list[bytes], timeout: float,
                retry_for: float) -> list[bytes]:
    from hl7.mllp import open_hl7_connection

    deadline = time.monotonic() + retry_for
    while True:
        try:
            reader, writer = await open_hl7_connection(host, port)
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)
    acks = []
    try:
        for message in messages:
            writer.writeblock(message)
            await writer.drain()
            acks.append(await asyncio.wait_for(reader.readblock(), timeout=timeout))
    finally:
        writer.close()
    return acks


@app.command("send")
def send_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="A file of HL7 v2 messages (each starting with MSH)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(2575, "--port", min=1, max=65535),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for each ACK."),
    retry_for: float = typer.Option(0.0, "--retry-for", help="Keep trying to connect for "
                                    "this many seconds (a listener still starting)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " One record a message: "
                                 "its acknowledgment code and its MSA and ERR segments."),
) -> None:
    """Send each message of FILE over MLLP and print its acknowledgment (MSA and ERR).

    Exit status: 0 when every message was accepted (AA), 1 when one was not, 2 for a file
    without messages, 3 when no acknowledgment came."""
    messages = split_messages(file.read_bytes())
    if not messages:
        usage(f"{file} holds no HL7 v2 message (none starts with MSH)", "FILE")
    try:
        acks = asyncio.run(_send(host, port, messages, timeout, retry_for))
    except (OSError, TimeoutError) as exc:
        fail(f"no acknowledgment from {host}:{port}: {exc or 'timed out'}; is "
             "`medtwin hl7 listen` running there?", RUNTIME)
    results = []
    for ack in acks:
        lines = ack.decode("utf-8", "replace").split("\r")
        msa = next((line for line in lines if line.startswith("MSA")), "")
        shown = [line for line in lines if line.startswith(("MSA", "ERR"))]
        results.append({"code": msa.split("|")[1] if msa.count("|") else "", "segments": shown})
        if not as_json:
            for line in shown:
                typer.echo(line)
    if as_json:
        echo_json({"sent": len(messages), "acknowledgments": results})
    if any(r["code"] != "AA" for r in results):
        raise typer.Exit(FINDINGS)
