"""The JSON API under /api/v1, described by openapi.yaml beside this file.

Conventions (the same for every route): times are Unix epoch seconds as JSON
numbers (``*_at`` fields, null when not yet known); errors are
``{"error": code, "detail": ...}`` with the matching HTTP status; bad input
is a 4xx, never a 5xx.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from flask import Blueprint, jsonify, request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from breakglass.store import STATES
from breakglass.web.auth import current_user
from breakglass.web.body import load_json, validate
from breakglass.web.context import MAX_ID, ApiError, web_context

log = structlog.get_logger("breakglass.web")

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# The same shape config.Target enforces for names, so a filter can only name a possible target.
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
T = TypeVar("T")


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
        "active": row.get("closed_at") is None,
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


# -- writes (bearer API token; see auth.py) ------------------------------------

MAX_TEXT = 2000
MAX_SILENCE_SECONDS = 30 * 24 * 3600


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TriggerBody(_Body):
    """``POST /api/v1/incidents``."""

    target: StrictStr = Field(pattern=TARGET_NAME.pattern)
    reason: StrictStr = Field(min_length=1, max_length=MAX_TEXT)
    # Lets the evidence policy allow a power verb while the guest still answers SSH.
    authorize_power: StrictBool = False


class SilenceBody(_Body):
    """``POST /api/v1/silences``: an end time or a duration, not both."""

    target: StrictStr = Field(pattern=TARGET_NAME.pattern)
    reason: StrictStr = Field(min_length=1, max_length=MAX_TEXT)
    expires_at: StrictFloat | StrictInt | None = None
    duration_seconds: StrictFloat | StrictInt | None = Field(None, gt=0, le=MAX_SILENCE_SECONDS)

    @model_validator(mode="after")
    def _one_end(self) -> SilenceBody:
        if (self.expires_at is None) == (self.duration_seconds is None):
            raise ValueError("give exactly one of expires_at and duration_seconds")
        return self


class GrantBody(_Body):
    """``POST /api/v1/targets/<name>/grant``."""

    why: StrictStr = Field(min_length=1, max_length=MAX_TEXT)


B = TypeVar("B", bound=BaseModel)


def parse_body(model: type[B]) -> B:
    """The JSON body validated by ``model``; ApiError 400 naming each bad field."""
    if not request.is_json:
        raise ApiError(400, "bad_request", [{"param": "(body)", "problem": "send a JSON object"}])
    return validate(model, load_json(request.get_data(cache=False)))


def _known_target(name: str) -> str:
    """``name`` when it is a configured target; 404 otherwise (a well-formed name of nothing)."""
    if name not in {t.name for t in web_context().cfg.targets}:
        raise ApiError(404, "not_found", f"no target named {name!r}")
    return name


def _core_call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (RuntimeError, TimeoutError) as exc:
        log.warning("core_unavailable", error=str(exc))
        raise ApiError(503, "core_unavailable", str(exc) or "the core did not answer") from None


@bp.post("/incidents")
def create_incident() -> Any:
    """Open a manual incident, or attach the reason to the target's active one."""
    body = parse_body(TriggerBody)
    target = _known_target(body.target)
    source = "cli" if request.headers.get("X-Breakglass-Client") == "cli" else "manual"
    who = current_user()
    res = _core_call(
        lambda: web_context().core.trigger(
            target,
            trigger=source,
            reason=body.reason,
            who=who,
            evidence={"note": body.reason},
            authorize_power=body.authorize_power,
        )
    )
    log.info("manual_trigger", target=target, who=who, incident=res.incident_id, created=res.created)
    out = {"id": res.incident_id, "target": target, "created": bool(res.created), "trigger": source}
    return jsonify(out), 201 if res.created else 200


@bp.get("/silences")
def list_silences() -> Any:
    """Silences in force now."""
    rows = web_context().store.list_silences(time.time())
    return jsonify({"silences": [silence_json(r) for r in rows]})


@bp.post("/silences")
def create_silence() -> Any:
    """Silence automatic incidents for a target until a time."""
    body = parse_body(SilenceBody)
    target = _known_target(body.target)
    now = time.time()
    if body.duration_seconds is not None:
        expires = now + float(body.duration_seconds)
    else:
        expires = float(body.expires_at or 0)
        if not now < expires <= now + MAX_SILENCE_SECONDS:
            raise ApiError(
                400, "bad_request", [{"param": "expires_at", "problem": "must be in the next 30 days"}]
            )
    store = web_context().store
    silence_id = store.add_silence(target, body.reason, current_user(), expires)
    row = next((r for r in store.list_silences(now) if r["id"] == silence_id), None)
    log.info("silence_added", target=target, who=current_user(), until=expires)
    return jsonify(
        silence_json(
            row
            or {
                "id": silence_id,
                "target": target,
                "reason": body.reason,
                "who": current_user(),
                "created_at": now,
                "expires_at": expires,
            }
        )
    ), 201


@bp.post("/targets/<name>/grant")
def grant(name: str) -> Any:
    """Allow one more power action for a target whose budget is spent; records who and why."""
    target = _known_target(name)
    body = parse_body(GrantBody)
    who = current_user()
    grant_id = _core_call(lambda: web_context().core.grant(target, who, body.why))
    log.info("grant_added", target=target, who=who)
    return jsonify({"id": grant_id, "target": target, "who": who, "why": body.why}), 201


def silence_json(row: dict[str, Any]) -> dict[str, Any]:
    """The API's view of a silence."""
    return {
        "id": row["id"],
        "target": row["target"],
        "reason": row.get("reason"),
        "who": row.get("who"),
        "created_at": row.get("created_at"),
        "expires_at": row["expires_at"],
    }
