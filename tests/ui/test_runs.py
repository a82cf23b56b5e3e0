"""The shared run handling of the Trials and Operations pages, with stand-in page elements."""

from __future__ import annotations

import asyncio

from medtwin.core.errors import SimulationError
from medtwin.ui.runs import run_exclusively


class Element:
    """Records what the page would show."""

    def __init__(self) -> None:
        self.enabled, self.cleared, self.value, self.text, self.cls = True, 0, None, "", ""

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def clear(self) -> None:
        self.cleared += 1

    def set_value(self, v: float) -> None:
        self.value = v

    def set_text(self, t: str) -> None:
        self.text = t

    def classes(self, replace: str) -> None:
        self.cls = replace


def _kw(button: Element, status: Element) -> dict:
    return {"button": button, "results": Element(), "progress": Element(), "status": status,
            "waiting": "Waiting…", "failed": "The run failed: {exc}. Try fewer days.",
            "run_id": "r1"}


def test_a_failed_run_says_why_in_red_and_frees_the_button():
    button, status = Element(), Element()

    async def boom() -> int:
        assert not button.enabled  # disabled while it runs
        raise SimulationError("the solver diverged {at t=3}")

    got = asyncio.run(run_exclusively(asyncio.Semaphore(1), boom, **_kw(button, status)))
    assert got is None and button.enabled
    assert status.text == "The run failed: the solver diverged {at t=3}. Try fewer days."
    assert status.cls == "text-red-800"


def test_a_second_run_waits_for_the_first_and_says_so():
    async def main() -> tuple[list[int], str]:
        slot, done = asyncio.Semaphore(1), []
        first_status, second_status = Element(), Element()

        async def job(n: int) -> int:
            await asyncio.sleep(0.05)
            done.append(n)
            return n

        a = asyncio.create_task(run_exclusively(slot, lambda: job(1),
                                                **_kw(Element(), first_status)))
        await asyncio.sleep(0.01)
        b = await run_exclusively(slot, lambda: job(2), **_kw(Element(), second_status))
        return [await a, b], second_status.text

    results, said = asyncio.run(main())
    assert results == [1, 2] and said == "Waiting…"
