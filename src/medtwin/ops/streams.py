"""Random streams: one per (seed, replication, named purpose), drawn in numpy blocks.

A stream is keyed by the *name* of what it serves (``arrivals:walk_in``,
``duration:triage``, ``branch:non_trauma:after_exam``) rather than by creation order, so a
scenario that adds or removes an activity leaves every other stream unchanged: common random
numbers across scenarios. Per-patient streams (``duration:triage|<arrival stream>``) give
the k-th patient of an arrival stream the k-th value, whatever order patients reach the
activity in, so a staffing change leaves each patient's own draws unchanged.
Replications get independent streams through ``SeedSequence``
spawn keys ``(replication, crc32(name))``, reproducible in any process.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

BLOCK = 2048


def stream_rng(seed: int, rep: int, name: str) -> np.random.Generator:
    """The generator of one named stream in one replication."""
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(rep, zlib.crc32(name.encode())))
    return np.random.Generator(np.random.PCG64(ss))


class BlockDraw:
    """Draws values one at a time from blocks pre-drawn by numpy (cheap per call)."""

    __slots__ = ("_buf", "_fill")

    def __init__(self, fill: Callable[[], np.ndarray]) -> None:
        self._fill = fill
        self._buf: list[float] = []

    def __call__(self) -> float:
        """The next value."""
        buf = self._buf
        if not buf:
            block = self._fill()
            buf.extend(block[::-1].tolist())  # pop() from the end returns block order
        return buf.pop()
