"""The HL7 v2 MLLP listener: frames in over TCP, one ACK out per frame.

MLLP wraps each message as ``<VT> message <FS><CR>``. The server and its streams are
python-hl7's (:mod:`hl7.mllp`, asyncio); each complete frame goes to a handler (a
:class:`medtwin.live.hl7_handler.Hl7Handler`) that runs in one worker thread, so messages
are applied one at a time, in the order they arrived, and the event loop never waits on the
database. The ACK is written only when the handler has returned, i.e. after the store's
write committed.

A frame that never ends (no ``<FS><CR>`` within ``frame_timeout`` of its first bytes) is
dropped with the connection: no ACK, nothing stored, and the sender sends it again. Bytes
before a ``<VT>`` are not part of any frame and are discarded. A connection with nothing
pending may stay open as long as the sender likes. :meth:`MllpListener.stop` (SIGINT or
SIGTERM from the command) stops accepting, lets the message being applied finish and its
ACK go out, then closes every connection.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hl7.mllp import start_hl7_server
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from medtwin.live.hl7_handler import Reply

log = logging.getLogger(__name__)

FRAME_END = END_BLOCK + CARRIAGE_RETURN
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class MllpListener:
    """Serves MLLP on ``host:port`` (port 0: any free port; see :attr:`port` once started).

    ``max_messages``/``duration`` bound a run (a demonstration, a test); by default it runs
    until :meth:`stop`."""

    handle: Callable[[bytes], Reply]
    host: str = "127.0.0.1"
    port: int = 2575
    frame_timeout: float = 30.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_messages: int | None = None
    duration: float | None = None
    handled: int = 0
    _server: asyncio.AbstractServer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: set[asyncio.Task[object]] = set()
        self._clients: set[asyncio.Task[object]] = set()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtwin-hl7")

    # --- life cycle ------------------------------------------------------------------
    async def serve(self, *, on_started: Callable[[int], None] | None = None) -> None:
        """Listen until :meth:`stop`, ``max_messages`` or ``duration``; then close cleanly."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await start_hl7_server(self._client, self.host, self.port,
                                              limit=self.max_message_bytes)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening for HL7 v2 over MLLP on %s:%d", self.host, self.port)
        if on_started:
            on_started(self.port)
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=self.duration)
        except TimeoutError:
            log.info("--duration reached")
        await self._close()

    def run(self, *, on_started: Callable[[int], None] | None = None) -> None:
        """Serve in this thread's own event loop; SIGINT and SIGTERM stop it cleanly."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._signalled, sig)
            await self.serve(on_started=on_started)

        asyncio.run(main())

    def _signalled(self, sig: int) -> None:
        log.info("%s: stopping", signal.Signals(sig).name)
        self.stop()

    def stop(self) -> None:
        """Stop (thread-safe): no new connections, finish the message in hand, close."""
        if self._loop is None or self._stop is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._reading):  # idle connections: stop waiting for a frame
            task.cancel()
        if self._clients:  # a connection applying a message finishes it and sends its ACK
            await asyncio.wait(self._clients, timeout=60)
        await self._server.wait_closed()
        self._worker.shutdown(wait=True)
        log.info("stopped after %d message(s)", self.handled)

    # --- one connection ---------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._stop is not None
        self._clients.add(task)
        peer = writer.get_extra_info("peername")
        try:
            while not self._stop.is_set():
                self._reading.add(task)
                try:
                    block = await self._frame(reader, peer)
                except asyncio.CancelledError:
                    break
                finally:
                    self._reading.discard(task)
                if block is None:
                    break
                loop = asyncio.get_running_loop()
                try:
                    reply = await loop.run_in_executor(self._worker, self.handle, block)
                except Exception:  # a bug: no ACK, so the sender keeps the message and resends
                    log.exception("applying a message from %s failed; connection closed "
                                  "without ACK", peer)
                    break
                writer.write(START_BLOCK + reply.ack + FRAME_END)
                await writer.drain()
                self.handled += 1
                if self.max_messages is not None and self.handled >= self.max_messages:
                    log.info("--max-messages %d reached", self.max_messages)
                    self._stop.set()
        except (ConnectionError, OSError) as exc:
            log.warning("connection from %s lost: %s", peer, exc)
        finally:
            self._clients.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _frame(self, reader: asyncio.StreamReader, peer: object) -> bytes | None:
        """The next complete frame's content, or None when the connection should close
        (the peer closed it, a frame was left unfinished, or one was too large)."""
        since: float | None = None  # when the bytes of an unfinished frame were first seen
        poll = min(1.0, self.frame_timeout)
        while True:
            try:
                data = await asyncio.wait_for(reader.readuntil(FRAME_END), timeout=poll)
            except TimeoutError:
                pending = len(getattr(reader, "_buffer", b""))  # python-hl7 reads it too
                if not pending:
                    since = None
                    continue  # an idle connection: keep waiting
                since = since or time.monotonic()
                if time.monotonic() - since < self.frame_timeout:
                    continue
                log.warning("incomplete MLLP frame from %s (%d bytes, no <FS><CR> within "
                            "%.0fs): dropped without ACK, nothing stored", peer, pending,
                            self.frame_timeout)
                return None
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    log.warning("connection from %s closed inside a frame (%d bytes): "
                                "dropped without ACK, nothing stored", peer, len(exc.partial))
                return None
            except (asyncio.LimitOverrunError, ValueError):
                log.warning("frame from %s exceeds %d bytes: connection closed", peer,
                            self.max_message_bytes)
                return None
            start = data.rfind(START_BLOCK)
            if start < 0:
                log.warning("%d bytes from %s outside any MLLP frame (no <VT>): ignored",
                            len(data), peer)
                continue
            if start > 0:
                log.warning("%d bytes before <VT> from %s (an unfinished frame or noise): "
                            "ignored", start, peer)
            return data[start + 1:-len(FRAME_END)]
