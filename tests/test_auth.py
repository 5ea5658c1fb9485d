"""Authentication modes, API-token writes and CSRF on form posts, through the real app."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import API_TOKEN, LOGIN_TOKEN, TriggerCore, counts, make_app, with_tokens
from flask import Blueprint, Flask, render_template_string
from flask.testing import FlaskClient
from web_support import web_config

from breakglass.store import Store
from breakglass.web.auth import current_user

FORM = '<form method="post"><input type="hidden" name="csrf_token" value="{{ csrf_token() }}"></form>'


def _form_blueprint(store: Store) -> Blueprint:
    """A page with a form and its state-changing POST, guarded by the app's own hooks."""
    bp = Blueprint("form_for_test", __name__)

    @bp.get("/form")
    def form() -> Any:
        return render_template_string(FORM + "<p>{{ current_user() }}</p>")

    @bp.post("/form")
    def post() -> Any:
        store.add_silence("devvm", "from a form", current_user(), 2e9)
        return "done"

    return bp


def _app(tmp_path: Path, store_path: Path | None = None, **auth: Any) -> tuple[Flask, Store]:
    cfg = with_tokens(web_config(tmp_path), tmp_path, **auth)
    store = Store(store_path or cfg.store_path)
    app = make_app(cfg, store, TriggerCore(cfg, store))
    app.register_blueprint(_form_blueprint(store))
    return app, store


@pytest.fixture
def none_app(tmp_path: Path) -> Iterator[tuple[Flask, Store]]:
    app, store = _app(tmp_path)
    yield app, store
    store.close()


def _csrf(client: FlaskClient, **kw: Any) -> str:
    page = client.get("/form", **kw)
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match
    return match.group(1)


def test_without_auth_the_user_is_local_and_a_form_with_its_csrf_token_is_accepted(
    none_app: tuple[Flask, Store],
) -> None:
    app, store = none_app
    client = app.test_client()
    token = _csrf(client)
    assert "<p>local</p>" in client.get("/form").get_data(as_text=True)
    r = client.post("/form", data={"csrf_token": token})
    assert r.status_code == 200
    assert store.list_silences(0)[0]["who"] == "local"


@pytest.mark.parametrize("token", [None, "", "not-the-token"])
def test_a_form_post_with_a_missing_or_wrong_csrf_token_is_refused_and_changes_nothing(
    none_app: tuple[Flask, Store], token: str | None
) -> None:
    app, store = none_app
    client = app.test_client()
    _csrf(client)
    before = counts(store)
    r = client.post("/form", data={} if token is None else {"csrf_token": token})
    assert r.status_code == 400
    assert "CSRF" in r.get_data(as_text=True)
    assert counts(store) == before


def test_a_csrf_token_from_another_session_is_refused(none_app: tuple[Flask, Store]) -> None:
    app, store = none_app
    theirs = _csrf(app.test_client())
    mine = app.test_client()
    _csrf(mine)
    assert mine.post("/form", data={"csrf_token": theirs}).status_code == 400
    assert store.list_silences(0) == []


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {API_TOKEN}", "Bearer "])
def test_api_writes_without_the_right_bearer_token_get_401(
    none_app: tuple[Flask, Store], header: str | None
) -> None:
    app, store = none_app
    headers = {} if header is None else {"Authorization": header}
    before = counts(store)
    r = app.test_client().post("/api/v1/incidents", json={"target": "devvm", "reason": "x"}, headers=headers)
    assert r.status_code == 401
    assert r.json is not None
    assert r.json["error"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert counts(store) == before


def test_api_writes_are_refused_when_no_api_token_is_configured(tmp_path: Path) -> None:
    cfg = web_config(tmp_path)
    store = Store(cfg.store_path)
    try:
        app = make_app(cfg, store, TriggerCore(cfg, store))
        r = app.test_client().post(
            "/api/v1/incidents",
            json={"target": "devvm", "reason": "x"},
            headers={"Authorization": "Bearer anything"},
        )
        assert r.status_code == 401
        assert "web.api_token_file" in r.json["detail"]
    finally:
        store.close()


def test_health_and_metrics_stay_open_in_every_mode(tmp_path: Path) -> None:
    app, store = _app(tmp_path, mode="token")
    try:
        client = app.test_client()
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/api/v1/status").status_code == 401
    finally:
        store.close()


@pytest.fixture
def proxy_app(tmp_path: Path) -> Iterator[tuple[Flask, Store]]:
    app, store = _app(tmp_path, mode="proxy", proxy_users=("alice",), proxy_addresses=("10.0.0.2",))
    yield app, store
    store.close()


def test_the_proxy_header_names_the_user_when_it_comes_from_the_proxy(
    proxy_app: tuple[Flask, Store],
) -> None:
    app, store = proxy_app
    client = app.test_client()
    kw: dict[str, Any] = {
        "headers": {"X-Forwarded-User": "alice"},
        "environ_base": {"REMOTE_ADDR": "10.0.0.2"},
    }
    token = _csrf(client, **kw)
    assert client.post("/form", data={"csrf_token": token}, **kw).status_code == 200
    assert store.list_silences(0)[0]["who"] == "alice"
    assert client.get("/api/v1/status", **kw).status_code == 200


@pytest.mark.parametrize(
    ("user", "addr"),
    [(None, "10.0.0.2"), ("mallory", "10.0.0.2"), ("alice", "10.0.0.9"), ("alice", "127.0.0.1")],
)
def test_the_proxy_header_is_refused_from_elsewhere_or_for_other_users(
    proxy_app: tuple[Flask, Store], user: str | None, addr: str
) -> None:
    app, _ = proxy_app
    client = app.test_client()
    headers = {} if user is None else {"X-Forwarded-User": user}
    page = client.get("/form", headers=headers, environ_base={"REMOTE_ADDR": addr})
    assert page.status_code == 403
    api = client.get("/api/v1/status", headers=headers, environ_base={"REMOTE_ADDR": addr})
    assert api.status_code == 401
    assert api.json is not None
    assert api.json["error"] == "unauthorized"


@pytest.fixture
def token_app(tmp_path: Path) -> Iterator[tuple[Flask, Store]]:
    app, store = _app(tmp_path, mode="token")
    yield app, store
    store.close()


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Bearer {LOGIN_TOKEN}x"])
def test_token_mode_refuses_a_missing_or_wrong_token(
    token_app: tuple[Flask, Store], header: str | None
) -> None:
    app, _ = token_app
    client = app.test_client()
    headers = {} if header is None else {"Authorization": header}
    page = client.get("/form", headers=headers)
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/login")
    assert client.get("/api/v1/status", headers=headers).status_code == 401


def test_token_mode_accepts_the_bearer_token(token_app: tuple[Flask, Store]) -> None:
    app, _ = token_app
    r = app.test_client().get("/api/v1/status", headers={"Authorization": f"Bearer {LOGIN_TOKEN}"})
    assert r.status_code == 200


def test_logging_in_with_the_token_gives_a_session_that_names_the_user(
    token_app: tuple[Flask, Store],
) -> None:
    app, store = token_app
    client = app.test_client()
    login = client.get("/login?next=/form")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.get_data(as_text=True))
    assert csrf
    wrong = client.post("/login", data={"csrf_token": csrf.group(1), "token": "nope", "user": "bob"})
    assert wrong.status_code == 401
    assert client.get("/form").status_code == 302
    ok = client.post(
        "/login", data={"csrf_token": csrf.group(1), "token": LOGIN_TOKEN, "user": "bob", "next": "/form"}
    )
    assert ok.status_code == 302
    assert ok.headers["Location"] == "/form"
    token = _csrf(client)
    assert client.post("/form", data={"csrf_token": token}).status_code == 200
    assert store.list_silences(0)[0]["who"] == "bob"


def test_login_never_redirects_to_another_site(token_app: tuple[Flask, Store]) -> None:
    app, _ = token_app
    client = app.test_client()
    login = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.get_data(as_text=True))
    assert csrf
    r = client.post(
        "/login", data={"csrf_token": csrf.group(1), "token": LOGIN_TOKEN, "next": "//evil.example/"}
    )
    assert r.headers["Location"] == "/"


@pytest.mark.parametrize(
    "query",
    [
        "/%09/evil.example",
        "/%0a/evil.example",
        "/%0d%0a/evil.example",
        "%2F%5Cevil.example",
        "/%5C%5Cevil.example",
        "%09//evil.example",
        "https://evil.example/",
        "/%00/evil.example",
    ],
)
def test_login_never_redirects_off_site_whatever_hides_the_host(
    token_app: tuple[Flask, Store], query: str
) -> None:
    from urllib.parse import urljoin, urlsplit

    app, _ = token_app
    client = app.test_client()
    login = client.get(f"/login?next={query}")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.get_data(as_text=True))
    assert csrf
    nxt = re.search(r'name="next" value="([^"]*)"', login.get_data(as_text=True))
    assert nxt
    r = client.post("/login", data={"csrf_token": csrf.group(1), "token": LOGIN_TOKEN, "next": nxt.group(1)})
    assert r.status_code == 302
    location = r.headers["Location"]
    # What a browser does with the Location: drop tabs and newlines, read backslashes as slashes.
    seen = re.sub(r"[\x00-\x1f]", "", location).replace("\\", "/")
    assert urlsplit(urljoin("http://breakglass.local/login", seen)).netloc == "breakglass.local"


def test_login_keeps_a_same_site_path_with_its_query(token_app: tuple[Flask, Store]) -> None:
    app, _ = token_app
    client = app.test_client()
    login = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.get_data(as_text=True))
    assert csrf
    r = client.post(
        "/login",
        data={"csrf_token": csrf.group(1), "token": LOGIN_TOKEN, "next": "/incidents?state=resolved"},
    )
    assert r.headers["Location"] == "/incidents?state=resolved"
