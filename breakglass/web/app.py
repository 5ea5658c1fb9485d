"""The Flask app factory: health, metrics and the JSON API over injected parts.

Nothing here is global: :func:`create_app` receives the config, the store, the
metrics registry and a handle to the core, and keeps them in
``app.extensions`` where blueprints find them through :func:`web_context`.
The asyncio core runs in another thread; handlers reach it only through the
thread-safe :class:`CoreHandle`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError

if TYPE_CHECKING:
    from breakglass.config import Config
    from breakglass.metrics import Metrics
    from breakglass.store import Store

log = structlog.get_logger("breakglass.web")

API_PREFIX = "/api/"
EXTENSION = "breakglass"

# The page served later uses no inline script or style, so the policy can be strict now.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}
# Request bodies are small JSON documents or form posts; anything larger is refused with 413.
MAX_BODY_BYTES = 1024 * 1024


class CoreHandle(Protocol):
    """What the web server may ask of the core loop running in another thread."""

    def alive(self) -> bool:
        """True when the core loop answers within about a second; never raises."""
        ...

    def status(self) -> dict[str, Any]:
        """Each target's readings, conditions, incident, budget and silence.

        Shape: ``{"targets": [{"name", "readings": dict | None, "conditions": [str],
        "incident": {"id", "state", "trigger"} | None, "budget": {"remaining",
        "next_allowed_at", "dry_run", ...}, "silence": dict | None, ...}],
        "generated_at": float}``. Raises ``RuntimeError`` (or ``TimeoutError``)
        when the core does not answer.
        """
        ...

    def trigger(
        self, target: str, *, trigger: str, reason: str, who: str, evidence: dict[str, Any] | None = None
    ) -> Any:
        """Open or attach an incident; a TriggerResult. Raises CoreUnavailable when the core is down."""
        ...

    def grant(self, target: str, who: str, why: str) -> int:
        """Grant one extra power action for ``target``; the grant's id."""
        ...


@dataclass(frozen=True)
class WebContext:
    """The parts one app serves from, injected by :func:`create_app`."""

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


def create_app(
    cfg: Config,
    *,
    store: Store,
    metrics: Metrics,
    core: CoreHandle,
    testing: bool = False,
) -> Flask:
    """Build the WSGI app serving health, metrics and the JSON API from the given parts."""
    app = Flask(__name__)
    app.config.update(TESTING=testing, MAX_CONTENT_LENGTH=MAX_BODY_BYTES)
    # Keep the field order of each serialiser (id first) instead of sorting keys.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = WebContext(cfg=cfg, store=store, metrics=metrics, core=core)

    # Imported here so the blueprints can import web_context from this module.
    from breakglass.web import api, health, pages, sse, webhook
    from breakglass.web.auth import init_auth

    # Authentication and CSRF run before every other hook and handler.
    init_auth(app, cfg)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhook.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(sse.bp)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.after_request(_security_headers)
    return app


def _is_api() -> bool:
    return request.path.startswith(API_PREFIX)


def _api_error(exc: ApiError) -> tuple[Response, int]:
    return error_response(exc.status, exc.code, exc.detail)


def _http_error(exc: HTTPException) -> Any:
    """HTTP errors under /api/ answer JSON; elsewhere Werkzeug's page (the UI comes later)."""
    if not _is_api():
        return exc
    code = (exc.name or "error").lower().replace(" ", "_").replace("'", "")
    body, status = error_response(exc.code or 500, code, exc.description)
    # Keep headers the error defines beyond its content type (405's Allow, 401's WWW-Authenticate).
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            body.headers[name] = value
    return body, status


def _unexpected_error(exc: Exception) -> Any:
    """A bug: log it with the traceback, answer 500 without internals."""
    log.exception("request_failed", method=request.method, path=request.path, error=repr(exc))
    if not _is_api():
        return InternalServerError()
    return error_response(500, "internal_error", "an unexpected error occurred; see the service log")


def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Pages, API answers and metrics are live state: never cached. Static assets may be.
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response
