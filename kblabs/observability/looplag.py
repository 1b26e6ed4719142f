"""Event-loop lag: how late a short sleep wakes up, averaged over a 10 s window."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class LoopLagSampler:
    name = "loop-lag-sampler"

    def __init__(self, interval_s: float = 0.5, window_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._samples: deque[float] = deque(maxlen=max(1, int(window_s / interval_s)))
        self._task: asyncio.Task[None] | None = None

    def mean_ms(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else 0.0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            self._samples.append(max(0.0, (loop.time() - started - self.interval_s) * 1000))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
