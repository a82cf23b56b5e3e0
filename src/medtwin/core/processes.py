"""Worker processes that end with the process that started them.

A ``ProcessPoolExecutor`` worker forked from a parent keeps both ends of the pool's pipes, so
when the parent is killed (SIGKILL: no clean-up runs) the worker never sees end-of-file and
lives on as an orphan. Pools whose workers call :func:`die_with_parent` first do not leave
any behind: on Linux the kernel sends the worker SIGKILL when its parent ends
(``PR_SET_PDEATHSIG``); elsewhere a daemon thread checks the parent once a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (the pid that started it) ends; call it first in
    a pool worker's initializer, with ``os.getpid()`` of the parent passed in."""
    if sys.platform.startswith("linux") and _set_parent_death_signal():
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="medtwin-parent-watch").start()


def _set_parent_death_signal() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc prctl: fall back to watching
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable; watching the parent instead")
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)
