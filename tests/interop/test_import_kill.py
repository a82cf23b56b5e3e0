"""Issue 12, finding 12: SIGKILL of ``medtwin import`` leaves no orphaned worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from medtwin.interop.fhir.synthetic import generate_patients, write_bundles
from medtwin.security.crypto import KeyRing


def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.slow
def test_sigkill_of_a_parallel_import_leaves_no_worker_behind(tmp_path: Path):
    files = write_bundles(generate_patients(48, seed=3, days=3), tmp_path / "bundles")
    assert len(files) >= 8
    KeyRing.generate().save(tmp_path / "key")
    env = {**os.environ, "MEDTWIN_KEY_FILE": str(tmp_path / "key")}
    env.pop("MEDTWIN_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "medtwin.cli", "import", str(tmp_path / "bundles"),
         "--db", str(tmp_path / "kill.sqlite"), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    try:
        assert _wait(lambda: len(parent.children(recursive=True)) >= 2, 60), \
            "the import never started its workers"
        workers = parent.children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"{len(alive)} orphaned import worker(s) still running"
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in psutil.Process().children(recursive=True):
            if child.pid != proc.pid and "medtwin" in " ".join(child.cmdline()):
                child.kill()
