"""Operator instructions on an active incident: the page form (CSRF) and the JSON API (token).

The instruction is stored as an ``operator_instruction`` step and handed to
the incident's remediator before its next turn: the model agent sees it as a
user turn marked as the operator's, the runbook records it. It changes no
policy: power verbs and guest commands pass the same envelope as before.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, jsonify, redirect, request, url_for
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from werkzeug.wrappers import Response

from breakglass.web.api import MAX_TEXT, parse_body
from breakglass.web.auth import current_user
from breakglass.web.context import ID_RULE, ApiError, web_context

bp = Blueprint("instructions", __name__)


class InstructionBody(BaseModel):
    """``POST /api/v1/incidents/<id>/instructions``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: StrictStr = Field(min_length=1, max_length=MAX_TEXT)


def _instruct(incident_id: int, text: str) -> int:
    """Hand the instruction to the core; KeyError/ValueError pass through, a dead core is RuntimeError."""
    who = current_user()
    # Logged once, by the manager that records it (operator_instruction).
    return web_context().core.instruct(incident_id, who, text)


@bp.post(f"/api/v1/incidents/<{ID_RULE}:incident_id>/instructions")
def api_instruct(incident_id: int) -> Any:
    """Add an instruction to an active incident."""
    body = parse_body(InstructionBody)
    try:
        step = _instruct(incident_id, body.text.strip() or body.text)
    except KeyError:
        raise ApiError(404, "not_found", f"no incident #{incident_id}") from None
    except ValueError as exc:
        raise ApiError(409, "not_active", str(exc)) from None
    except (RuntimeError, TimeoutError) as exc:
        raise ApiError(503, "core_unavailable", str(exc) or "the core did not answer") from None
    return jsonify({"incident": incident_id, "step": step}), 201


@bp.post(f"/incidents/<{ID_RULE}:incident_id>/instructions")
def page_instruct(incident_id: int) -> Response:
    """The incident page's instruction form."""
    text = request.form.get("text", "").strip()[:MAX_TEXT]
    if not text:
        abort(400, "write the instruction")
    try:
        _instruct(incident_id, text)
    except KeyError:
        abort(404)
    except ValueError as exc:
        abort(409, str(exc))
    except (RuntimeError, TimeoutError) as exc:
        abort(503, f"the core did not take the instruction: {exc}")
    return redirect(url_for("pages.incident", incident_id=incident_id), 303)
