"""One simulation at a time from a dashboard page: the run button, progress bar, status line
and results area that the Trials and Operations pages share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from medtwin.core.errors import MedtwinError

log = logging.getLogger(__name__)
T = TypeVar("T")


def show_failure(status: Any, text: str) -> None:
    """Say in the status line, in red, what went wrong and what to try."""
    status.set_text(text)
    status.classes(replace="text-red-800")


async def run_exclusively(slot: asyncio.Semaphore, work: Callable[[], Awaitable[T]], *,
                          button: Any, results: Any, progress: Any, status: Any,
                          waiting: str, failed: str, run_id: str) -> T | None:
    """Run ``work`` once ``slot`` is free (saying ``waiting`` meanwhile), with the button
    disabled and the old results cleared. A simulation error is logged and shown as
    ``failed`` (``{exc}`` is replaced by the error); then, as when the page is closed
    mid-run, it returns None."""
    button.disable()
    results.clear()
    progress.set_value(0)
    try:
        if slot.locked():
            status.set_text(waiting)
        async with slot:
            return await work()
    except (MedtwinError, ValueError, ArithmeticError) as exc:
        log.warning("dashboard run %s failed: %s", run_id, exc)
        show_failure(status, failed.format(exc=exc))
        return None
    finally:
        button.enable()
