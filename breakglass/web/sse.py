"""Server-Sent Events: an incident's new steps and transitions, and index-level changes.

What a stream sends is defined here once: :func:`load_incident` and
:func:`incident_frames` for an incident page, :func:`status_snapshot` for the
index. Two ways deliver it:

- under breakglass's own server (:mod:`breakglass.web.server`, what ``serve``
  runs) the view only checks the request and its ids, then hands a feed
  description to the server, which streams it from the event loop
  (:mod:`breakglass.web.live`), woken by the store's commits: an open page
  holds no worker thread;
- under any other WSGI server (tests, embedding) the view streams itself,
  polling every ``SSE_POLL_SECONDS`` and holding one worker thread per page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, abort, current_app, render_template, request, stream_with_context

from breakglass.web.context import ID_RULE, web_context
from breakglass.web.humanize import clock, duration
from breakglass.web.steps import Thread, describe

bp = Blueprint("sse", __name__)

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
RETRY_MILLISECONDS = 3000
RETRY_FRAME = f"retry: {RETRY_MILLISECONDS}\n\n"
KEEPALIVE_FRAME = ": keepalive\n\n"
# Where load_incident's cache keeps the conversation's Thread.
THREAD_KEY = "thread"
# The environ key under which breakglass's server offers to stream a feed itself.
DEFER_KEY = "breakglass.stream"


def keepalive_seconds() -> float:
    """Seconds of silence before a comment line keeps proxies from closing the stream."""
    return float(current_app.config.get("SSE_KEEPALIVE_SECONDS", KEEPALIVE_SECONDS))


def _poll() -> float:
    return float(current_app.config.get("SSE_POLL_SECONDS", POLL_SECONDS))


def event(name: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One SSE frame; the JSON data is one line, so no field can break the framing."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, default=str)}\n\n"


@dataclass
class IncidentFeed:
    """One incident's stream, resuming after ``step_id``/``n_trans`` (-1: after what the page shows)."""

    incident_id: int
    step_id: int
    n_trans: int
    keepalive: float


@dataclass(frozen=True)
class StatusFeed:
    """The index's stream: a ``status`` event whenever any target's summary changes."""

    keepalive: float


def load_incident(
    incident_id: int, rendered: dict[Any, Any] | None = None, *, after: int = -1
) -> dict[str, Any] | None:
    """The stored incident with each step and transition rendered as HTML (needs an app context).

    Steps and transitions never change once written, so ``rendered`` (kept by the
    caller) saves rendering them again on every refresh; it also keeps the
    conversation's :class:`Thread`, which places each new step under the tool call
    it happened in. With ``after`` (a stream's cursor) only the steps after it,
    and after what ``rendered`` already holds, are read: a refresh of a long
    incident costs its new steps, not all of them.
    """
    cache: dict[Any, Any] = {} if rendered is None else rendered
    thread: Thread = cache.setdefault(THREAD_KEY, Thread())
    inc = web_context().store.get_incident(incident_id, steps_after=max(0, min(after, thread.last)))
    if inc is None:
        return None
    for s in inc["steps"]:
        key = ("step", s["id"])
        if key not in cache:
            # Alone: what ran inside a tool call arrives later and the page nests it under ``parent``.
            view = describe(s, thread)
            cache[key] = (render_template("_step.html", s=s, v=view, inner=()), view.parent)
        s["html"], s["parent"] = cache[key]
    for i, t in enumerate(inc["transitions"]):
        key = ("transition", i)
        if key not in cache:
            cache[key] = render_template("_transition.html", t=t)
        t["html"] = cache[key]
    return inc


def start_after_shown(inc: dict[str, Any], feed: IncidentFeed) -> None:
    """A feed without a resume point starts after what ``inc`` holds: a fresh page already shows it."""
    if feed.step_id < 0:
        feed.step_id = inc["steps"][-1]["id"] if inc["steps"] else 0
        feed.n_trans = len(inc["transitions"])


def incident_frames(inc: dict[str, Any], feed: IncidentFeed) -> tuple[list[str], bool]:
    """The frames ``feed`` has not seen yet (advancing it), and whether the incident has closed."""
    start_after_shown(inc, feed)
    frames: list[str] = []
    for t in inc["transitions"][feed.n_trans :]:
        feed.n_trans += 1
        data = {k: v for k, v in t.items() if k != "html"}
        frames.append(event("transition", {**data, "html": t["html"]}, f"{feed.step_id}.{feed.n_trans}"))
    for s in inc["steps"]:
        if s["id"] > feed.step_id:
            feed.step_id = s["id"]
            data = {"id": s["id"], "parent": s["parent"], "html": s["html"]}
            frames.append(event("step", data, f"{feed.step_id}.{feed.n_trans}"))
    closed = inc["closed_at"] is not None
    if closed:
        frames.append(event("closed", closed_summary(inc), f"{feed.step_id}.{feed.n_trans}"))
    return frames, closed


def closed_summary(inc: dict[str, Any]) -> dict[str, Any]:
    """What the page updates in place when the incident closes: state, times, report."""
    opened, closed = inc["opened_at"], inc["closed_at"]
    return {
        "state": inc["state"],
        "report": inc.get("report") or "",
        "closed_at": closed,
        "closed_text": clock(closed),
        "duration": duration(closed - opened) if closed is not None else None,
    }


def status_snapshot() -> dict[str, Any]:
    """Each target's summary as the index shows it; equal snapshots mean nothing to redraw."""
    ctx = web_context()
    try:
        targets = ctx.core.status()["targets"]
    except (RuntimeError, TimeoutError):
        return {"core": "down"}
    return {
        t["name"]: {
            "conditions": sorted(t.get("conditions") or []),
            "incident": (t["incident"] or {}).get("id"),
            "state": (t["incident"] or {}).get("state"),
            "silenced": bool(t.get("silence")),
            "health": (t.get("activity") or {}).get("health"),
            "doing": (t.get("activity") or {}).get("text"),
        }
        for t in targets
    }


def _stream(frames: Iterator[str]) -> Response:
    resp = Response(stream_with_context(frames), mimetype="text/event-stream")
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


def _deferred(feed: IncidentFeed | StatusFeed) -> Response | None:
    """Hand the feed to breakglass's server when it offers to stream it; None under other servers."""
    defer: Callable[[object], None] | None = request.environ.get(DEFER_KEY)
    if defer is None:
        return None
    defer(feed)
    return _stream(iter(()))


@bp.get(f"/incidents/<{ID_RULE}:incident_id>/events")
def incident_events(incident_id: int) -> Response:
    """New steps and transitions of one incident until it closes; resumes after Last-Event-ID."""
    inc = web_context().store.get_incident(incident_id)
    if inc is None:
        abort(404)
    # The event id is "<steps seen>.<transitions seen>" so a reconnect resumes where it left off.
    last = request.headers.get("Last-Event-ID", "")
    try:
        step_id, n_trans = (int(x) for x in last.split(".")) if last else (-1, -1)
    except ValueError:
        step_id, n_trans = -1, -1
    feed = IncidentFeed(incident_id, step_id, n_trans, keepalive_seconds())
    # Without a resume point the cursor is what exists now, not whenever the stream first reads.
    start_after_shown(inc, feed)
    deferred = _deferred(feed)
    if deferred is not None:
        return deferred
    poll = _poll()

    def frames() -> Iterator[str]:
        yield RETRY_FRAME
        quiet_since = time.monotonic()
        rendered: dict[Any, Any] = {}
        while True:
            inc = load_incident(incident_id, rendered, after=feed.step_id)
            if inc is None:
                return
            sent, closed = incident_frames(inc, feed)
            yield from sent
            if closed:
                return
            now = time.monotonic()
            if sent:
                quiet_since = now
            elif now - quiet_since >= feed.keepalive:
                # A comment line keeps proxies and the browser from timing the stream out.
                yield KEEPALIVE_FRAME
                quiet_since = now
            time.sleep(poll)

    return _stream(frames())


@bp.get("/events")
def index_events() -> Response:
    """A ``status`` event whenever a target's conditions, activity or incident change."""
    feed = StatusFeed(keepalive_seconds())
    deferred = _deferred(feed)
    if deferred is not None:
        return deferred
    poll = _poll()

    def frames() -> Iterator[str]:
        yield RETRY_FRAME
        previous: dict[str, Any] | None = None
        quiet_since = time.monotonic()
        while True:
            snap = status_snapshot()
            now = time.monotonic()
            if snap != previous:
                yield event("status", snap)
                previous, quiet_since = snap, now
            elif now - quiet_since >= feed.keepalive:
                yield KEEPALIVE_FRAME
                quiet_since = now
            time.sleep(poll)

    return _stream(frames())
