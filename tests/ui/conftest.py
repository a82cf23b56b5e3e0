"""Shared by the browser tests: `medtwin demo --serve` started as a user would start it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass
class LiveDemo:
    """A running demo: its address, the printed sign-ins, its output and its process."""

    base: str
    logins: dict[str, str]
    lines: list[str]
    proc: subprocess.Popen[str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_demo(tmp: Path, *, patients: int, duration: int) -> LiveDemo:
    """Start the demo in a subprocess and wait until it serves (fails with its output)."""
    port = _free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp / "data"), "MEDTWIN_ARGON2_MEMORY_KIB": "8",
           "MEDTWIN_ARGON2_TIME_COST": "1"}
    env.pop("MEDTWIN_DB", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "medtwin.cli", "demo", "--db", str(tmp / "demo.sqlite"),
         "--patients", str(patients), "--serve", "--port", str(port),
         "--duration", str(duration)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if "Ctrl-C" in line or "stops by itself" in line:
            break
    logins = dict(re.findall(r"^  (\S+)\s+(\S+)\s+(?:clinician|admin|patient|researcher)",
                             "".join(lines), re.M))
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if proc.poll() is not None:
            pytest.fail("the demo stopped:\n" + "".join(lines))
        try:
            httpx.get(f"{base}/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the demo did not start:\n" + "".join(lines))
    return LiveDemo(base, logins, lines, proc)


def stop_demo(demo: LiveDemo) -> None:
    """Ask the demo to stop (SIGTERM), then make sure it has."""
    demo.proc.terminate()
    try:
        demo.proc.wait(20)
    except subprocess.TimeoutExpired:
        demo.proc.kill()


@pytest.fixture(scope="module")
def demo_launcher(tmp_path_factory) -> Iterator:
    """``launch(patients=, duration=)`` for a module's demo; every demo is stopped after."""
    started: list[LiveDemo] = []

    def launch(*, patients: int, duration: int) -> LiveDemo:
        demo = launch_demo(tmp_path_factory.mktemp("demo"), patients=patients,
                           duration=duration)
        started.append(demo)
        return demo

    yield launch
    for demo in started:
        stop_demo(demo)
