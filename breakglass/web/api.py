"""The JSON API under /api/v1, described by openapi.yaml beside this file.

Conventions (the same for every route): times are Unix epoch seconds as JSON
numbers (``*_at`` fields, null when not yet known); errors are
``{"error": code, "detail": ...}`` with the matching HTTP status; bad input
is a 4xx, never a 5xx.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from flask import Blueprint, jsonify, request

from breakglass.store import CLOSED_STATES, STATES
from breakglass.web.app import ApiError, web_context

log = structlog.get_logger("breakglass.web")

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# The same shape config.Target enforces for names, so a filter can only name a possible target.
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# SQLite integers are signed 64-bit; a larger id cannot exist and must not reach the driver.
MAX_ID = 2**63 - 1


@bp.get("/status")
def status() -> Any:
    """Each target's latest readings, active conditions, incident, budget and silence."""
    try:
        body = web_context().core.status()
    except (RuntimeError, TimeoutError) as exc:
        log.warning("status_unavailable", error=str(exc))
        raise ApiError(503, "core_unavailable", str(exc) or "the core did not answer") from None
    return jsonify(body)


@bp.get("/incidents")
def list_incidents() -> Any:
    """Incidents, newest first, filtered by target and state, at most ``limit`` of them."""
    target, states, limit = _incident_filters()
    store = web_context().store
    rows = store.list_incidents(target=target, limit=limit, states=states)
    # The list rows lack steps; every incident in the API has one shape, so read each in full.
    full = (store.get_incident(row["id"]) for row in rows)
    return jsonify({"incidents": [incident_json(inc) for inc in full if inc is not None]})


@bp.get("/incidents/<int:incident_id>")
def get_incident(incident_id: int) -> Any:
    """One incident with its steps, transitions and power actions."""
    row = web_context().store.get_incident(incident_id) if incident_id <= MAX_ID else None
    if row is None:
        raise ApiError(404, "not_found", f"no incident with id {incident_id}")
    return jsonify(incident_json(row))


def _incident_filters() -> tuple[str | None, list[str] | None, int]:
    """Parse ``target``, ``state`` (repeated or comma-separated) and ``limit``; 400 on any bad one."""
    problems: list[dict[str, str]] = []
    targets = request.args.getlist("target")
    target: str | None = None
    if len(targets) > 1:
        problems.append({"param": "target", "problem": "give at most one target"})
    elif targets:
        target = targets[0]
        if not TARGET_NAME.match(target):
            problems.append({"param": "target", "problem": f"{target!r} is not a valid target name"})
    states: list[str] | None = None
    raw_states = [s.strip() for value in request.args.getlist("state") for s in value.split(",")]
    if raw_states:
        unknown = [s for s in raw_states if s not in STATES]
        if unknown:
            problems.append(
                {"param": "state", "problem": f"unknown state(s) {unknown}; expected any of {list(STATES)}"}
            )
        states = list(dict.fromkeys(raw_states))
    limit = DEFAULT_LIMIT
    raw_limit = request.args.get("limit")
    if raw_limit is not None:
        if raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT:
            limit = int(raw_limit)
        else:
            problems.append(
                {"param": "limit", "problem": f"{raw_limit!r} is not an integer from 1 to {MAX_LIMIT}"}
            )
    if problems:
        raise ApiError(400, "bad_request", problems)
    return target, states, limit


def incident_json(row: dict[str, Any]) -> dict[str, Any]:
    """The API's view of a stored incident: a fixed set of fields, times in epoch seconds."""
    return {
        "id": row["id"],
        "target": row["target"],
        "trigger": row["trigger"],
        "who": row.get("who"),
        "reason": row.get("reason"),
        "state": row["state"],
        "active": row["state"] not in CLOSED_STATES,
        "opened_at": row["opened_at"],
        "closed_at": row.get("closed_at"),
        "report": row.get("report"),
        "tokens_in": row.get("tokens_in") or 0,
        "tokens_out": row.get("tokens_out") or 0,
        "evidence": row.get("evidence") or {},
        "steps": [_step_json(s) for s in row.get("steps") or ()],
        "transitions": [_transition_json(t) for t in row.get("transitions") or ()],
        "power_actions": [_power_json(p) for p in row.get("power_actions") or ()],
    }


def _step_json(step: dict[str, Any]) -> dict[str, Any]:
    return {"id": step.get("id"), "at": step["at"], "kind": step["kind"], "data": step.get("data") or {}}


def _transition_json(t: dict[str, Any]) -> dict[str, Any]:
    return {"at": t["at"], "from": t.get("from_state"), "to": t["to_state"], "reason": t.get("reason")}


def _power_json(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": p.get("id"),
        "verb": p["verb"],
        "result": p.get("result"),
        "at": p["at"],
        "finished_at": p.get("finished_at"),
        "who": p.get("who"),
        "dry_run": bool(p.get("dry_run")),
        "decision": p.get("decision") or {},
        "detail": p.get("detail") or None,
    }
