"""Server-Sent Events: an incident's new steps and transitions, and index-level changes.

Each stream polls the store (by step id) every ``POLL_SECONDS`` and holds one
waitress thread while open, which is why ``web.threads`` defaults to 16.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, abort, current_app, render_template, request, stream_with_context

from breakglass.web.context import ID_RULE, web_context

bp = Blueprint("sse", __name__)

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
RETRY_MILLISECONDS = 3000


def _keepalive() -> float:
    return float(current_app.config.get("SSE_KEEPALIVE_SECONDS", KEEPALIVE_SECONDS))


def _poll() -> float:
    return float(current_app.config.get("SSE_POLL_SECONDS", POLL_SECONDS))


def event(name: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One SSE frame; the JSON data is one line, so no field can break the framing."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, default=str)}\n\n"


def _stream(frames: Iterator[str]) -> Response:
    resp = Response(stream_with_context(frames), mimetype="text/event-stream")
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.get(f"/incidents/<{ID_RULE}:incident_id>/events")
def incident_events(incident_id: int) -> Response:
    """New steps and transitions of one incident until it closes; resumes after Last-Event-ID."""
    store = web_context().store
    if store.get_incident(incident_id) is None:
        abort(404)
    # The event id is "<steps seen>.<transitions seen>" so a reconnect resumes where it left off.
    last = request.headers.get("Last-Event-ID", "")
    try:
        step_id, n_trans = (int(x) for x in last.split(".")) if last else (-1, -1)
    except ValueError:
        step_id, n_trans = -1, -1
    keepalive, poll = _keepalive(), _poll()

    def frames() -> Iterator[str]:
        nonlocal step_id, n_trans
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        quiet_since = time.monotonic()
        while True:
            inc = store.get_incident(incident_id)
            if inc is None:
                return
            if step_id < 0:
                # A fresh page already shows what is stored; send only what comes next.
                step_id = inc["steps"][-1]["id"] if inc["steps"] else 0
                n_trans = len(inc["transitions"])
            sent = False
            for t in inc["transitions"][n_trans:]:
                n_trans += 1
                yield event(
                    "transition",
                    {**t, "html": render_template("_transition.html", t=t)},
                    f"{step_id}.{n_trans}",
                )
                sent = True
            for s in inc["steps"]:
                if s["id"] > step_id:
                    step_id = s["id"]
                    yield event(
                        "step",
                        {"id": s["id"], "html": render_template("_step.html", s=s)},
                        f"{step_id}.{n_trans}",
                    )
                    sent = True
            if inc["closed_at"] is not None:
                yield event(
                    "closed",
                    {"state": inc["state"], "report": inc.get("report") or ""},
                    f"{step_id}.{n_trans}",
                )
                return
            now = time.monotonic()
            if sent:
                quiet_since = now
            elif now - quiet_since >= keepalive:
                # A comment line keeps proxies and the browser from timing the stream out.
                yield ": keepalive\n\n"
                quiet_since = now
            time.sleep(poll)

    return _stream(frames())


def _snapshot() -> dict[str, Any]:
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
        }
        for t in targets
    }


@bp.get("/events")
def index_events() -> Response:
    """A ``status`` event whenever a target's conditions or incident change (the index reloads its parts)."""
    keepalive, poll = _keepalive(), _poll()

    def frames() -> Iterator[str]:
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        previous: dict[str, Any] | None = None
        quiet_since = time.monotonic()
        while True:
            snap = _snapshot()
            now = time.monotonic()
            if snap != previous:
                yield event("status", snap)
                previous, quiet_since = snap, now
            elif now - quiet_since >= keepalive:
                yield ": keepalive\n\n"
                quiet_since = now
            time.sleep(poll)

    return _stream(frames())
