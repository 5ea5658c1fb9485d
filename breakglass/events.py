"""In-process events on the core's asyncio loop: the newest readings per target.

Probe rounds publish here; incident verification waits here for the next
round instead of probing a second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from breakglass.watchdog.probes import Readings

Listener = Callable[[str, dict[str, Any]], None]


class ReadingsFeed:
    """The latest readings per target, and a way to await the next round."""

    def __init__(self) -> None:
        self._latest: dict[str, Readings] = {}
        self._cond = asyncio.Condition()

    def latest(self, target: str) -> Readings | None:
        """Return the newest readings for ``target``, if any."""
        return self._latest.get(target)

    async def publish(self, readings: Readings) -> None:
        """Record a round's readings and wake every waiter."""
        async with self._cond:
            self._latest[readings.target] = readings
            self._cond.notify_all()

    async def next_after(self, target: str, after: float, within: float) -> Readings | None:
        """Wait up to ``within`` s for readings of ``target`` taken after ``after``."""

        def newer() -> bool:
            r = self._latest.get(target)
            return r is not None and r.at > after

        async with self._cond:
            try:
                async with asyncio.timeout(within):  # not wait_for: it can swallow a cancel on 3.11
                    await self._cond.wait_for(newer)
            except TimeoutError:
                return None
            return self._latest[target]


class Observers:
    """Fan-out of named lifecycle events (incident opened, escalated, ...) to listeners.

    A listener that raises is reported and skipped: observers (metrics,
    notifications, logs) must never break remediation.
    """

    def __init__(self, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self._listeners: list[Listener] = []
        self._on_error = on_error

    def add(self, listener: Listener) -> None:
        """Register a listener called as ``listener(event, data)``."""
        self._listeners.append(listener)

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Call every listener; never raise."""
        for listener in list(self._listeners):
            try:
                listener(event, data)
            except Exception as exc:  # an observer must not break the caller
                if self._on_error is not None:
                    self._on_error(event, exc)
