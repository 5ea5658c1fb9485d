"""Live pages on the event loop: many open streams, no thread or coroutine loop each.

The :class:`Hub` lives on breakglass's web server loop. The store calls
:meth:`Hub.changed` after every committed write (from whatever thread wrote);
only the first commit of a settle window wakes the loop, and the hub
refreshes each topic that has subscribers (an incident, or the index's
status) once: one read (of the steps after the oldest stream's cursor) and
render in a small thread pool, then one pass over that topic's subscribers
writing the bytes each has not seen (streams at the same point share the same
bytes). A
slow fallback tick also refreshes everything, so writes by another process
sharing the store still show up, and one ticker sends keepalive comments to
quiet streams. A subscriber is a socket writer and a cursor: 1,000 open pages
cost 1,000 small objects, not 1,000 threads or tasks to wake.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from flask import Flask

from breakglass.web.sse import (
    KEEPALIVE_FRAME,
    RETRY_FRAME,
    IncidentFeed,
    StatusFeed,
    event,
    incident_frames,
    load_incident,
    status_snapshot,
)

RETRY, KEEPALIVE = RETRY_FRAME.encode(), KEEPALIVE_FRAME.encode()
SETTLE_SECONDS = 0.05  # a burst of commits (a step, its transition, the report) is one refresh
FALLBACK_SECONDS = 5.0  # refresh anyway this often: another process's writes have no callback here
# Writes to this many streams, then let requests waiting on the loop go first.
DELIVER_CHUNK = 50
Topic = tuple[str, int] | str


class Subscriber:
    """One open stream: what it follows, how to write to it, and when it is finished."""

    def __init__(self, feed: IncidentFeed | StatusFeed, send: Callable[[bytes], bool]) -> None:
        self.feed = feed
        self._send = send
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_sent = time.monotonic()
        self.previous: bytes | None = None  # the last status frame sent

    @property
    def topic(self) -> Topic:
        """What changes this stream follows."""
        return ("incident", self.feed.incident_id) if isinstance(self.feed, IncidentFeed) else "status"

    def send(self, data: bytes) -> None:
        """Write ``data``; a client too slow to take it is finished (its page reconnects)."""
        if self.done.done():
            return
        self.last_sent = time.monotonic()
        if not self._send(data):
            self.finish()

    def finish(self) -> None:
        """End the stream (the incident closed, or the client cannot keep up)."""
        if not self.done.done():
            self.done.set_result(None)


class Hub:
    """Fan-out of store changes to the streams open on one event loop."""

    def __init__(self, app: Flask, *, readers: int = 2, fallback_seconds: float = FALLBACK_SECONDS) -> None:
        self.app = app
        self._fallback = fallback_seconds
        self._pool = ThreadPoolExecutor(readers, thread_name_prefix="breakglass-live")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._subs: dict[Topic, set[Subscriber]] = {}
        self._refreshing: dict[Topic, asyncio.Task[None]] = {}
        self._dirty: set[Topic] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rendered: dict[int, dict[Any, Any]] = {}  # per incident, kept while it has streams
        self._wake_pending = False  # a commit has woken the loop and its refresh has not started

    @property
    def streams(self) -> int:
        """Open streams now."""
        return sum(len(s) for s in self._subs.values())

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve streams on ``loop`` (called from the loop)."""
        self._loop = loop
        loop.call_later(self._fallback, self._tick)
        self._tasks.add(loop.create_task(self._keepalives()))

    def threads(self) -> list[threading.Thread]:
        """The reader threads started so far."""
        return list(self._pool._threads)

    def close(self) -> None:
        """Stop the reader threads and the background tasks."""
        for task in (*self._tasks, *self._refreshing.values()):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- subscribing (on the loop) ----------------------------------------

    def subscribe(self, feed: IncidentFeed | StatusFeed, send: Callable[[bytes], bool]) -> Subscriber:
        """Start a stream: the retry hint now, then whatever the feed has not seen."""
        sub = Subscriber(feed, send)
        sub.send(RETRY)
        self._subs.setdefault(sub.topic, set()).add(sub)
        self._refresh(sub.topic)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a stream (its client left or it finished)."""
        sub.finish()
        subs = self._subs.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.topic]
                if isinstance(sub.topic, tuple):
                    self._rendered.pop(sub.topic[1], None)

    # -- changes --------------------------------------------------------

    def changed(self) -> None:
        """Something was written; safe from any thread, never blocks.

        Only the first commit of a settle window wakes the loop: the refresh it
        schedules reads every later one too, so a burst of commits (webhooks,
        a busy agent) costs one wake-up, not one each.
        """
        loop = self._loop
        if self._wake_pending or loop is None or loop.is_closed():
            return
        self._wake_pending = True  # a plain flag: the GIL makes the store atomic
        # The loop may close between the check and the call.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._soon)

    def _soon(self) -> None:
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(SETTLE_SECONDS, self._refresh_all)

    def _tick(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._refresh_all()
            self._loop.call_later(self._fallback, self._tick)

    def _refresh_all(self) -> None:
        self._timer = None
        # Cleared before the reads start: a commit from now on either is read by them or wakes the loop again.
        self._wake_pending = False
        for topic in list(self._subs):
            self._refresh(topic)

    def _refresh(self, topic: Topic) -> None:
        """Refresh ``topic`` now, or once more right after the refresh already running."""
        if topic in self._refreshing:
            self._dirty.add(topic)
            return
        assert self._loop is not None
        task = self._loop.create_task(self._refresh_topic(topic))
        self._refreshing[topic] = task

    async def _refresh_topic(self, topic: Topic) -> None:
        assert self._loop is not None
        try:
            while True:
                self._dirty.discard(topic)
                if isinstance(topic, tuple):
                    rendered = self._rendered.setdefault(topic[1], {})
                    # The steps no stream has seen, not the whole incident again.
                    load = partial(load_incident, after=self._cursor(topic))
                    inc = await self._loop.run_in_executor(self._pool, self._in_app, load, topic[1], rendered)
                    await self._deliver_incident(topic, inc)
                else:
                    frame = await self._loop.run_in_executor(self._pool, self._in_app, _status_frame)
                    await self._deliver_status(frame)
                if topic not in self._dirty:
                    return
        finally:
            self._refreshing.pop(topic, None)

    def _cursor(self, topic: Topic) -> int:
        """The oldest step any of ``topic``'s streams has seen (-1: none open)."""
        return min(
            (s.feed.step_id for s in self._subs.get(topic, ()) if isinstance(s.feed, IncidentFeed)),
            default=-1,
        )

    def _in_app(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.app.app_context():
            return fn(*args)

    async def _deliver_incident(self, topic: Topic, inc: dict[str, Any] | None) -> None:
        memo: dict[tuple[int, int], tuple[bytes, int, int, bool]] = {}
        for n, sub in enumerate(list(self._subs.get(topic, ()))):
            if n and n % DELIVER_CHUNK == 0:
                await asyncio.sleep(0)
            feed = sub.feed
            assert isinstance(feed, IncidentFeed)
            if inc is None:
                sub.finish()
                continue
            # Streams at the same point get the same bytes, built once per refresh.
            key = (feed.step_id, feed.n_trans)
            if key not in memo:
                sent, closed = incident_frames(inc, feed)
                memo[key] = ("".join(sent).encode("utf-8"), feed.step_id, feed.n_trans, closed)
            data, feed.step_id, feed.n_trans, closed = memo[key]
            if data:
                sub.send(data)
            if closed:
                sub.finish()

    async def _deliver_status(self, frame: bytes) -> None:
        for n, sub in enumerate(list(self._subs.get("status", ()))):
            if n and n % DELIVER_CHUNK == 0:
                await asyncio.sleep(0)
            if frame != sub.previous:
                sub.previous = frame
                sub.send(frame)

    async def _keepalives(self) -> None:
        """A comment line to every stream quiet for its keepalive interval, so proxies keep it open."""
        while True:
            every = min((s.feed.keepalive for subs in self._subs.values() for s in subs), default=15.0)
            await asyncio.sleep(max(0.05, every / 4))
            now = time.monotonic()
            quiet = [
                sub
                for subs in list(self._subs.values())
                for sub in subs
                if now - sub.last_sent >= sub.feed.keepalive
            ]
            for n, sub in enumerate(quiet):
                if n and n % DELIVER_CHUNK == 0:
                    await asyncio.sleep(0)
                sub.send(KEEPALIVE)


def _status_frame() -> bytes:
    return event("status", status_snapshot()).encode("utf-8")
