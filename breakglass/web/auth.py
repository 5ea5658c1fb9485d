"""Who is asking, and whether a state-changing request may proceed.

Three modes (``web.auth.mode``):

- ``none``: everyone is ``local``; ``serve`` binds only loopback in this mode.
- ``proxy``: an auth proxy in front sets a header naming the user; it is
  trusted only from ``proxy_addresses`` and only for ``proxy_users``.
- ``token``: ``Authorization: Bearer <token>``, or a session cookie obtained
  by posting the token to ``/login``.

Always open: ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus scrapes it
without credentials; it carries no secrets), ``/static/`` and
``/api/v1/alertmanager`` (which checks its own bearer token).

JSON API writes (any non-GET under ``/api/v1``) need the API token
(``web.api_token_file``) as a bearer token, whatever the mode: a browser
cannot attach it, so those routes need no CSRF token. Every other
state-changing request (the page's forms) must carry the session's CSRF
token in its ``csrf_token`` form field; a missing or wrong one gets 400
before any handler runs.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

import structlog
from flask import Blueprint, Flask, Response, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.wrappers import Request

from breakglass.config import Config, read_secret
from breakglass.web.context import error_response

log = structlog.get_logger("breakglass.web")

EXEMPT_PREFIXES = ("/static/",)
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/alertmanager"})
API_PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_SESSION_KEY = "csrf"
USER_SESSION_KEY = "user"
AUTH_EXTENSION = "breakglass.auth"
# A name a token holder may give itself (recorded as who); anything else falls back.
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")

bp = Blueprint("auth", __name__)


class AuthState:
    """Secrets read once at start-up; kept out of logs and pages."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.mode = cfg.web.auth.mode
        self.login_token = read_secret(cfg.web.auth.token_file)
        self.api_token = read_secret(cfg.web.api_token_file)
        if self.mode == "token" and not self.login_token:
            raise ValueError(f"web.auth.token_file {cfg.web.auth.token_file} is empty")


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without building the cookie signer for a request with no cookie.

    Prometheus, Alertmanager and API clients send no session cookie; the signer Flask
    builds for every request anyway (an itsdangerous serializer, which test-encodes a
    document) was a tenth of the CPU of answering them. The session is the same empty one.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def tokens_equal(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if any."""
    return parse_bearer(request.headers.get("Authorization"))


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization`` header's value when it is ``Bearer ...``, if any."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def current_user() -> str:
    """The authenticated user of this request (``local`` when auth is off)."""
    return str(getattr(g, "user", None) or "local")


def csrf_token() -> str:
    """This session's CSRF token, created on first use; put it in every form as ``csrf_token``."""
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def csrf_valid() -> bool:
    """True when the posted form's ``csrf_token`` matches this session's token."""
    expected = session.get(CSRF_SESSION_KEY)
    given = request.form.get(CSRF_FIELD)
    return isinstance(expected, str) and tokens_equal(given, expected)


def init_auth(app: Flask, cfg: Config) -> None:
    """Install authentication, CSRF checking, ``/login`` and the template helpers on ``app``."""
    state = AuthState(cfg)
    app.extensions[AUTH_EXTENSION] = state
    if not app.secret_key:
        # Sessions only hold the CSRF token and a login; a restart simply asks again.
        app.secret_key = secrets.token_bytes(32)
    public = cfg.web.public_url or ""
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=public.startswith("https://"),
        SESSION_COOKIE_NAME="breakglass_session",
    )
    app.session_interface = SessionInterface()
    app.add_template_global(csrf_token, "csrf_token")
    app.add_template_global(current_user, "current_user")
    app.before_request(_guard)
    app.register_blueprint(bp)


def _state() -> AuthState:
    from flask import current_app

    st: AuthState = current_app.extensions[AUTH_EXTENSION]
    return st


def _exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


def _is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def _guard() -> Any:
    """Authenticate the request, then check CSRF on form posts; answer the refusal if any."""
    path = request.path
    # Unknown paths and methods answer 404/405 as they are: there is nothing to protect.
    if _exempt(path) or request.routing_exception is not None:
        return None
    st = _state()
    if _is_api(path) and request.method not in SAFE_METHODS:
        return _api_write(st)
    refusal = _authenticate(st)
    if refusal is not None:
        return refusal
    if request.method not in SAFE_METHODS and not _is_api(path) and not csrf_valid():
        log.warning("csrf_refused", path=path, user=current_user())
        return Response(
            "missing or wrong CSRF token; reload the page and try again\n", 400, mimetype="text/plain"
        )
    return None


def _api_write(st: AuthState) -> Any:
    """JSON writes: the API token as a bearer token, nothing else."""
    if not st.api_token:
        return _unauthorized(
            "API writes are disabled: set web.api_token_file and send its token as a bearer token"
        )
    if not tokens_equal(bearer_token(), st.api_token):
        return _unauthorized("missing or wrong bearer token (web.api_token_file)")
    named = request.headers.get("X-Breakglass-User", "")
    g.user = f"api:{named}" if USER_NAME.match(named) else "api"
    return None


def _authenticate(st: AuthState) -> Any:
    if st.mode == "none":
        g.user = "local"
        return None
    if st.mode == "proxy":
        return _proxy(st)
    return _token(st)


def _proxy(st: AuthState) -> Any:
    a = st.cfg.web.auth
    user = request.headers.get(a.proxy_header, "").strip()
    if request.remote_addr not in a.proxy_addresses:
        log.warning("auth_refused", reason="not from a trusted proxy", remote=request.remote_addr)
        return _refuse("requests must come through the configured auth proxy")
    if user not in a.proxy_users:
        log.warning("auth_refused", reason="user not allowed", remote=request.remote_addr)
        return _refuse("this user is not allowed (web.auth.proxy_users)")
    g.user = user
    return None


def _token(st: AuthState) -> Any:
    if tokens_equal(bearer_token(), st.login_token) or (
        _is_api(request.path) and tokens_equal(bearer_token(), st.api_token)
    ):
        g.user = "token"
        return None
    user = session.get(USER_SESSION_KEY)
    if isinstance(user, str) and user:
        g.user = user
        return None
    if request.path == "/login":
        return None
    if _is_api(request.path):
        return _unauthorized("log in with the token (web.auth.token_file) as a bearer token")
    if request.method in SAFE_METHODS:
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    return Response("log in first\n", 401, mimetype="text/plain")


def _unauthorized(detail: str) -> Any:
    body, status = error_response(401, "unauthorized", detail)
    body.headers["WWW-Authenticate"] = 'Bearer realm="breakglass"'
    return body, status


def _refuse(detail: str) -> Any:
    if _is_api(request.path):
        return _unauthorized(detail)
    return Response(f"forbidden: {detail}\n", 403, mimetype="text/plain")


# Browsers drop tabs and newlines anywhere in a URL and read a backslash as a slash,
# so "/\t/evil.example" and "/\\evil.example" both leave the site once they are done.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_next(raw: str) -> str:
    """``raw`` when it is a path on this site, else ``/``: never a redirect to another host."""
    nxt = _CONTROL.sub("", raw).replace("\\", "/")
    parts = urlsplit(nxt)
    if parts.scheme or parts.netloc or not nxt.startswith("/") or nxt.startswith("//"):
        return "/"
    return nxt


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """A small form that trades the token for a session cookie (token mode only)."""
    st = _state()
    if st.mode != "token":
        return redirect("/")
    nxt = safe_next(request.values.get("next", "/"))
    wrong = False
    if request.method == "POST":
        if tokens_equal(request.form.get("token", ""), st.login_token):
            named = request.form.get("user", "").strip()
            session.clear()
            session[USER_SESSION_KEY] = named if USER_NAME.match(named) else "token"
            log.info("login", user=session[USER_SESSION_KEY])
            return redirect(nxt)
        log.warning("login_refused", remote=request.remote_addr)
        wrong = True
    # The app's own stylesheet and layout, like every other page.
    return Response(render_template("login.html", wrong=wrong, next=nxt), 401 if wrong else 200)


@bp.post("/logout")
def logout() -> Any:
    """Forget this session's login."""
    session.clear()
    return redirect("/")
