"""The demo's broker: a private Mosquitto when it is installed, else the embedded broker.

Mosquitto runs as a child of this process (it dies with it, even on SIGKILL), on a free
port of 127.0.0.1, with a temporary configuration and persistence folder that are removed
when it stops. Without Mosquitto the embedded broker (:mod:`medtwin.live.broker`) takes its
place, and :attr:`DemoBroker.notice` says so, with its limits, for the command to print.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from medtwin.core.errors import MedtwinError
from medtwin.core.processes import die_with_parent
from medtwin.live.broker import EmbeddedBroker

log = logging.getLogger(__name__)

EMBEDDED_LIMITS = ("the embedded demo broker keeps sessions, unacknowledged QoS 1 messages, "
                   "retained messages and wills in memory only (a restart loses them), listens "
                   "on 127.0.0.1 without TLS or passwords, and grants subscribers QoS 1 at "
                   "most; install Mosquitto (apt-get install mosquitto) for a real broker")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoProcess:
    """A private Mosquitto child process (``start`` returns its URL, ``stop`` ends it)."""

    kind = "mosquitto"

    def __init__(self, binary: str = "mosquitto") -> None:
        self.binary = binary
        self.port = 0
        self._folder: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The address clients connect to."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Write a configuration, start Mosquitto on a free port and wait until it listens."""
        self._folder = Path(tempfile.mkdtemp(prefix="medtwin-mosquitto-"))
        self.port = _free_port()
        conf = self._folder / "mosquitto.conf"
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        f"persistence true\npersistence_location {self._folder}/\n"
                        f"max_queued_messages 0\n{user}")
        parent = os.getpid()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, preexec_fn=lambda: die_with_parent(parent))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode()[-500:]
                self.stop()
                raise MedtwinError(f"mosquitto exited at start: {err.strip()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                log.info("private Mosquitto on %s (pid %d)", self.url, self._proc.pid)
                return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise MedtwinError("mosquitto did not start listening in time")

    def stop(self) -> None:
        """End the process and remove its folder."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


class DemoBroker:
    """Mosquitto when installed (``prefer_mosquitto``), else the embedded broker; after
    :meth:`start`, :attr:`kind` says which runs and :attr:`notice` what to tell the user."""

    def __init__(self, *, prefer_mosquitto: bool = True) -> None:
        self.prefer_mosquitto = prefer_mosquitto
        self._impl: MosquittoProcess | EmbeddedBroker | None = None
        self.notice = ""

    @property
    def kind(self) -> str:
        """``mosquitto`` or ``embedded`` (empty before start)."""
        return self._impl.kind if self._impl is not None else ""

    def start(self) -> str:
        """Start a broker; returns its URL."""
        binary = shutil.which("mosquitto") if self.prefer_mosquitto else None
        if binary:
            try:
                self._impl = MosquittoProcess(binary)
                url = self._impl.start()
                self.notice = f"MQTT broker: Mosquitto ({binary}) on {url}"
                return url
            except MedtwinError as exc:
                why = f"Mosquitto is installed but did not start ({exc})"
        else:
            why = ("Mosquitto is not installed" if self.prefer_mosquitto
                   else "Mosquitto was not wanted")
        self._impl = EmbeddedBroker()
        url = self._impl.start()
        self.notice = f"MQTT broker: embedded demo broker on {url}: {why}; {EMBEDDED_LIMITS}"
        log.warning("%s", self.notice)
        return url

    def stop(self) -> None:
        """Stop whichever broker runs."""
        if self._impl is not None:
            self._impl.stop()
