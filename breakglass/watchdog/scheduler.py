"""Probe rounds on a fixed grid: every target at its own stable offset, never drifting.

Target ``t``'s rounds start at ``anchor + offset(t) + k * interval`` on the
monotonic clock, for k = 0, 1, 2, ... The anchor is taken once, when the
schedule starts; a round's start never depends on when the previous one
ended, so the average gap between rounds is the interval exactly (a schedule
that waits "interval after the last round" drifts by the round's length and
any jitter every time).

Offsets spread the targets evenly over the interval: the targets are ranked
by a hash of their names and the i-th of n starts ``i * interval / n`` after
the anchor. The rank depends only on the set of names, never on the order of
the config file, so a target keeps its place across restarts.

A round that overruns its slot is not run twice to catch up: the next round
starts at the first slot still ahead, and the slots passed over are counted
as missed (``on_round``). Each start's lateness (how long after its slot it
really began) is reported too, so an overloaded event loop shows up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable


def spread(names: Iterable[str], interval: float) -> dict[str, float]:
    """Each name's offset in ``[0, interval)``: ranked by a hash of the name, evenly spaced."""
    ranked = sorted(set(names), key=lambda n: (hashlib.sha256(n.encode()).digest(), n))
    step = interval / max(1, len(ranked))
    return {name: i * step for i, name in enumerate(ranked)}


def next_slot(first: float, interval: float, now: float, after: int = -1) -> int:
    """The index k of the first slot ``first + k * interval`` at or after ``now``, and above ``after``."""
    k = math.ceil((now - first) / interval) if now > first else 0
    # Guard the float edge: a slot computed a hair before ``now`` is already past.
    while first + k * interval < now:
        k += 1
    return max(k, after + 1)


RoundReport = Callable[[str, float, int], None]


class GridScheduler:
    """Runs ``run(name)`` for every target on its grid slot, one round at a time per target."""

    def __init__(
        self,
        interval: float,
        offsets: dict[str, float],
        run: Callable[[str], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: float = 0.0,
        rand: Callable[[], float] = random.random,
        on_round: RoundReport | None = None,
    ) -> None:
        self.interval = interval
        self.offsets = dict(offsets)
        self.run = run
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter
        self.rand = rand
        self.on_round = on_round
        self.anchor: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Take the anchor now and start one task per target (inside the running loop)."""
        self.anchor = self.clock()
        self._tasks = [
            asyncio.create_task(self.run_target(name), name=f"probe-{name}") for name in self.offsets
        ]

    async def stop(self) -> None:
        """Cancel every target's task and wait for them to end."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def slot(self, name: str, k: int) -> float:
        """When round ``k`` of ``name`` is due (monotonic seconds)."""
        assert self.anchor is not None, "start() first"
        return self.anchor + self.offsets[name] + k * self.interval

    async def run_target(self, name: str) -> None:
        """Run ``name``'s rounds forever, each on its slot; a late round skips the slots it missed."""
        if self.anchor is None:
            self.anchor = self.clock()
        first = self.slot(name, 0)
        k, missed = 0, 0
        while True:
            # Jitter moves one start inside its slot; it never accumulates.
            due = self.slot(name, k) + (self.jitter * self.rand() if self.jitter else 0.0)
            delay = due - self.clock()
            if delay > 0:
                await self.sleep(delay)
            if self.on_round is not None:
                self.on_round(name, max(0.0, self.clock() - due), missed)
            await self.run(name)
            nxt = next_slot(first, self.interval, self.clock(), after=k)
            k, missed = nxt, nxt - k - 1


class LagMonitor:
    """Recent samples of how late the event loop ran its timers (``core.watch_loop_lag`` feeds it).

    A loop that runs timers late is overloaded: SSH handshakes and commands wait for
    it too, so a round that timed out then says more about the observer than the VM.
    Samples are taken on the monotonic clock (``loop.time()``).
    """

    def __init__(self, keep_seconds: float = 120.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_seconds = keep_seconds
        self.clock = clock
        self._samples: collections.deque[tuple[float, float]] = collections.deque()

    def record(self, lag: float, at: float | None = None) -> None:
        """Note a lag of ``lag`` seconds seen at ``at`` (now by default); forget old samples."""
        now = self.clock() if at is None else at
        self._samples.append((now, max(0.0, lag)))
        cutoff = now - self.keep_seconds
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()

    def worst_since(self, since: float) -> float:
        """The largest lag seen at or after ``since`` (monotonic seconds); 0 if none."""
        return max((lag for at, lag in reversed(self._samples) if at >= since), default=0.0)
