"""What every blueprint needs from the app: the injected parts, the error shape, id bounds.

Blueprints import from here, never from :mod:`breakglass.web.app`, so the
app factory can import them without a cycle (flaskr's ``db.py`` habit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from flask import Response, current_app, jsonify

if TYPE_CHECKING:
    from breakglass.config import Config
    from breakglass.metrics import Metrics
    from breakglass.store import Store

EXTENSION = "breakglass"
# Request bodies are small JSON documents or form posts; anything larger is refused with 413.
MAX_BODY_BYTES = 1024 * 1024
# SQLite integers are signed 64-bit; a larger id cannot exist and must never reach the driver.
MAX_ID = 2**63 - 1
# The URL rule for an id: Werkzeug answers 404 itself for anything above MAX_ID.
ID_RULE = f"int(max={MAX_ID})"

# Requests the server may answer without the app, on its loop: (method, path) to a function of
# the request's headers (lower-case names) and body giving (status, headers, body), or None for
# the app to answer. Only answers that never wait or write belong here: SQLite reads of the
# store are fine (in WAL mode a reader does not wait for a writer), a lock or the core is not.
QUICK_ANSWERS = "breakglass.quick_answers"
QuickAnswer = Callable[[dict[str, str], bytes], "tuple[int, list[tuple[str, str]], bytes] | None"]


class CoreHandle(Protocol):
    """What the web server may ask of the core loop running in another thread."""

    def alive(self) -> bool:
        """True when the core loop answers within about a second; never raises."""
        ...

    def attention(self) -> list[str]:
        """The targets a person should look at, most urgent first (an active incident, a firing
        condition, a round that was not green). Raises like :meth:`status`."""
        ...

    def status(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Each target's (or only ``names``') readings, conditions, incident, budget, silence, activity.

        Shape: ``{"targets": [{"name", "readings": dict | None, "conditions": [str],
        "incident": {"id", "state", "trigger"} | None, "budget": {"remaining",
        "next_allowed_at", "dry_run", ...}, "silence": dict | None, "activity": {...},
        ...}], "generated_at": float}``. Raises ``RuntimeError`` (or ``TimeoutError``)
        when the core does not answer.
        """
        ...

    def trigger(
        self,
        target: str,
        *,
        trigger: str,
        reason: str,
        who: str,
        evidence: dict[str, Any] | None = None,
        alert: str | None = None,
        authorize_power: bool = False,
    ) -> Any:
        """Open or attach an incident; a TriggerResult. Raises CoreUnavailable when the core is down.

        ``alert`` (a firing alert's fingerprint) is recorded with the incident atomically;
        a copy while that incident is active comes back with ``duplicate`` set.
        ``authorize_power`` (a person's manual trigger only) lets the evidence policy
        allow a power verb on a guest that still answers SSH.
        """
        ...

    def grant(self, target: str, who: str, why: str) -> int:
        """Grant one extra power action for ``target``; the grant's id."""
        ...

    def instruct(self, incident_id: int, who: str, text: str) -> int:
        """Add an operator instruction to an active incident; the step's id.

        KeyError for an unknown incident, ValueError for a closed one.
        """
        ...


@dataclass(frozen=True)
class WebContext:
    """The parts one app serves from, injected by ``create_app``."""

    cfg: Config
    store: Store
    metrics: Metrics
    core: CoreHandle


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": ...}`` with an HTTP status."""

    def __init__(self, status: int, code: str, detail: Any = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def web_context() -> WebContext:
    """The injected parts of the app handling the current request."""
    ctx: WebContext = current_app.extensions[EXTENSION]
    return ctx


def error_response(status: int, code: str, detail: Any = None) -> tuple[Response, int]:
    """A JSON error body in the API's one shape."""
    return jsonify({"error": code, "detail": detail}), status
