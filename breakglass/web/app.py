"""The Flask app factory: health, metrics and the JSON API over injected parts.

Nothing here is global: :func:`create_app` receives the config, the store, the
metrics registry and a handle to the core, and keeps them in
``app.extensions`` where blueprints find them through
:func:`breakglass.web.context.web_context` (blueprints never import this module).
The asyncio core runs in another thread; handlers reach it only through the
thread-safe :class:`CoreHandle`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, InternalServerError

from breakglass.web import api, health, instructions, pages, sse, webhook
from breakglass.web.auth import init_auth
from breakglass.web.context import (
    EXTENSION,
    MAX_BODY_BYTES,
    QUICK_ANSWERS,
    ApiError,
    CoreHandle,
    QuickAnswer,
    WebContext,
    error_response,
    web_context,
)

if TYPE_CHECKING:
    from breakglass.config import Config
    from breakglass.metrics import Metrics
    from breakglass.store import Store

log = structlog.get_logger("breakglass.web")

__all__ = ["ApiError", "CoreHandle", "WebContext", "create_app", "error_response", "web_context"]

API_PREFIX = "/api/"

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


class _App(Flask):
    """Flask, asking once per view or hook whether it is ``async def`` (Flask asks on every call)."""

    def __init__(self, import_name: str) -> None:
        super().__init__(import_name)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except KeyError:
            sync = self._sync[func] = super().ensure_sync(func)
            return sync
        except TypeError:  # an unhashable callable: asked every time, as Flask does
            return super().ensure_sync(func)


def create_app(
    cfg: Config,
    *,
    store: Store,
    metrics: Metrics,
    core: CoreHandle,
    testing: bool = False,
) -> Flask:
    """Build the WSGI app serving health, metrics and the JSON API from the given parts."""
    app = _App(__name__)
    app.config.update(TESTING=testing, MAX_CONTENT_LENGTH=MAX_BODY_BYTES)
    # Keep the field order of each serialiser (id first) instead of sorting keys.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    ctx = app.extensions[EXTENSION] = WebContext(cfg=cfg, store=store, metrics=metrics, core=core)

    def alert_copies(headers: dict[str, str], raw: bytes) -> Any:
        return webhook.copies_answer(ctx, headers.get("authorization"), raw)

    app.extensions[QUICK_ANSWERS] = {("POST", webhook.PATH): _json_quick(app, webhook.PATH, alert_copies)}

    # Authentication and CSRF run before every other hook and handler.
    init_auth(app, cfg)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhook.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(sse.bp)
    app.register_blueprint(instructions.bp)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.after_request(_security_headers)
    return app


def _json_quick(app: Flask, path: str, answer: Callable[[dict[str, str], bytes], Any]) -> QuickAnswer:
    """A quick answer of ``answer``'s JSON, framed as the app frames a ``jsonify`` on ``path``."""
    headers = [("Content-Type", app.json.mimetype), *answer_headers(path)]  # type: ignore[attr-defined]

    def quick(request_headers: dict[str, str], raw: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        obj = answer(request_headers, raw)
        if obj is None:
            return None
        return 200, headers, f"{app.json.dumps(obj, separators=(',', ':'))}\n".encode()

    return quick


def answer_headers(path: str) -> list[tuple[str, str]]:
    """The headers every answer on ``path`` carries unless its view set them."""
    headers = list(SECURITY_HEADERS.items())
    # Pages, API answers and metrics are live state: never cached. Static assets may be.
    if not path.startswith("/static/"):
        headers.append(("Cache-Control", "no-store"))
    return headers


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
    # One pass over the headers (setdefault scanned them once per header).
    present = {name.lower() for name in response.headers.keys()}  # noqa: SIM118 (Headers, not dict)
    for name, value in answer_headers(request.path):
        if name == "Cache-Control":
            response.headers[name] = value
        elif name.lower() not in present:
            response.headers.add(name, value)
    return response
