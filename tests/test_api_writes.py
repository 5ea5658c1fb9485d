"""JSON API writes: manual triggers, silences and grants; bad bodies change nothing."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml
from api_support import API_TOKEN, TriggerCore, counts
from flask.testing import FlaskClient
from harness import override
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Servers

from breakglass.config import read_secret
from breakglass.sim.runner import SimHandle
from breakglass.store import Store
from breakglass.web.app import create_app

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def test_a_manual_trigger_opens_an_incident_then_attaches(client: FlaskClient, store: Store) -> None:
    first = client.post("/api/v1/incidents", json={"target": "devvm", "reason": "slow"}, headers=AUTH)
    assert first.status_code == 201
    assert first.json["created"] is True
    assert first.json["trigger"] == "manual"
    second = client.post("/api/v1/incidents", json={"target": "devvm", "reason": "still slow"}, headers=AUTH)
    assert second.status_code == 200
    assert second.json == {**first.json, "created": False}
    inc = store.get_incident(first.json["id"])
    assert inc is not None
    assert inc["who"] == "api"
    assert inc["reason"] == "slow"


def test_the_cli_header_marks_the_trigger_and_names_the_user(client: FlaskClient, store: Store) -> None:
    headers = {**AUTH, "X-Breakglass-Client": "cli", "X-Breakglass-User": "carol"}
    r = client.post("/api/v1/incidents", json={"target": "other", "reason": "x"}, headers=headers)
    assert r.json["trigger"] == "cli"
    inc = store.get_incident(r.json["id"])
    assert inc is not None
    assert inc["trigger"] == "cli"
    assert inc["who"] == "api:carol"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"target": "devvm"}, "reason"),
        ({"target": "devvm", "reason": ""}, "reason"),
        ({"target": "devvm", "reason": "x", "extra": 1}, "extra"),
        ({"target": ["devvm"], "reason": "x"}, "target"),
        ("devvm", "(body)"),
    ],
)
def test_a_bad_trigger_body_gets_400_and_opens_nothing(
    client: FlaskClient, store: Store, body: Any, param: str
) -> None:
    r = client.post("/api/v1/incidents", json=body, headers=AUTH)
    assert r.status_code == 400
    assert param in [p["param"] for p in r.json["detail"]]
    assert counts(store) == (0, 0, 0)


def test_a_trigger_while_the_core_is_down_is_a_503(client: FlaskClient, core: TriggerCore) -> None:
    core.is_alive = False
    r = client.post("/api/v1/incidents", json={"target": "devvm", "reason": "x"}, headers=AUTH)
    assert r.status_code == 503


def test_a_silence_by_duration_is_listed_with_who_set_it(client: FlaskClient) -> None:
    r = client.post(
        "/api/v1/silences",
        json={"target": "devvm", "reason": "kernel work", "duration_seconds": 600},
        headers=AUTH,
    )
    assert r.status_code == 201
    assert r.json["who"] == "api"
    assert 590 < r.json["expires_at"] - time.time() <= 600
    listed = client.get("/api/v1/silences").json["silences"]
    assert [s["id"] for s in listed] == [r.json["id"]]


def test_a_silence_by_end_time_is_accepted(client: FlaskClient) -> None:
    until = time.time() + 3600
    r = client.post(
        "/api/v1/silences", json={"target": "other", "reason": "x", "expires_at": until}, headers=AUTH
    )
    assert r.status_code == 201
    assert r.json["expires_at"] == pytest.approx(until)


@pytest.mark.parametrize(
    "body",
    [
        {"target": "devvm", "reason": "x"},
        {"target": "devvm", "reason": "x", "duration_seconds": 60, "expires_at": 2e9},
        {"target": "devvm", "reason": "x", "duration_seconds": -5},
        {"target": "devvm", "reason": "x", "expires_at": 1000},
        {"target": "devvm", "reason": "x", "expires_at": 9e18},
        {"target": "devvm", "reason": "x", "duration_seconds": "60"},
    ],
)
def test_a_bad_silence_gets_400_and_adds_nothing(
    client: FlaskClient, store: Store, body: dict[str, Any]
) -> None:
    r = client.post("/api/v1/silences", json=body, headers=AUTH)
    assert r.status_code == 400
    assert counts(store) == (0, 0, 0)


def test_a_grant_records_who_and_why(client: FlaskClient, store: Store) -> None:
    r = client.post("/api/v1/targets/devvm/grant", json={"why": "one more cycle"}, headers=AUTH)
    assert r.status_code == 201
    assert r.json["who"] == "api"
    [grant] = store.grants("devvm")
    assert grant["who"] == "api"
    assert grant["why"] == "one more cycle"


@pytest.mark.parametrize(("name", "body"), [("devvm", {}), ("devvm", {"why": ""})])
def test_a_bad_grant_gets_400_and_records_nothing(
    client: FlaskClient, store: Store, name: str, body: dict[str, Any]
) -> None:
    r = client.post(f"/api/v1/targets/{name}/grant", json=body, headers=AUTH)
    assert r.status_code == 400
    assert store.grants("devvm") == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/incidents", {"target": "ghost", "reason": "x"}),
        ("/api/v1/silences", {"target": "ghost", "reason": "x", "duration_seconds": 60}),
        ("/api/v1/targets/ghost/grant", {"why": "x"}),
    ],
)
def test_a_well_formed_write_for_an_unknown_target_gets_404_naming_it_and_changes_nothing(
    client: FlaskClient, store: Store, path: str, body: dict[str, Any]
) -> None:
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == 404
    assert r.json == {"error": "not_found", "detail": "no target named 'ghost'"}
    assert (counts(store), store.grants("ghost")) == ((0, 0, 0), [])


def test_a_silence_with_both_an_end_and_a_duration_is_refused_and_the_document_says_so(
    client: FlaskClient, store: Store
) -> None:
    body = {"target": "devvm", "reason": "x", "expires_at": 2_000_600.0, "duration_seconds": 60}
    r = client.post("/api/v1/silences", json=body, headers=AUTH)
    assert r.status_code == 400
    assert "exactly one of expires_at and duration_seconds" in json.dumps(r.json["detail"])
    assert counts(store) == (0, 0, 0)
    # The document's schema refuses the same body, and takes either one alone: the two agree.
    doc = yaml.safe_load((resources.files("breakglass.web") / "openapi.yaml").read_text(encoding="utf-8"))
    silence = jsonschema.Draft202012Validator({**doc, "$ref": "#/components/schemas/SilenceRequest"})
    assert not silence.is_valid(body)
    assert silence.is_valid({"target": "devvm", "reason": "x", "duration_seconds": 60})
    assert silence.is_valid({"target": "devvm", "reason": "x", "expires_at": 2_000_600.0})
    assert not silence.is_valid({"target": "devvm", "reason": "x"})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/incidents", {"target": "devvm", "reason": "x"}),
        ("/api/v1/silences", {"target": "devvm", "reason": "x", "duration_seconds": 60}),
        ("/api/v1/targets/devvm/grant", {"why": "x"}),
    ],
)
def test_every_write_needs_the_api_token(
    client: FlaskClient, store: Store, path: str, body: dict[str, Any]
) -> None:
    assert client.post(path, json=body).status_code == 401
    assert client.post(path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert counts(store) == (0, 0, 0)
    assert store.grants("devvm") == []


def test_an_oversized_body_is_refused_with_413(client: FlaskClient, store: Store) -> None:
    body = {"target": "devvm", "reason": "x" * (1024 * 1024 + 1)}
    assert client.post("/api/v1/incidents", json=body, headers=AUTH).status_code == 413
    assert counts(store) == (0, 0, 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
bodies = json_values | st.fixed_dictionaries(
    {},
    optional={
        "target": st.sampled_from(["devvm", "other", "", "ghost"]) | json_values,
        "reason": st.text(max_size=20) | json_values,
        "why": st.text(max_size=20) | json_values,
        "expires_at": st.floats() | st.integers() | json_values,
        "duration_seconds": st.floats() | st.integers() | json_values,
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/api/v1/incidents", "/api/v1/silences", "/api/v1/targets/devvm/grant"]),
    body=bodies,
)
def test_generated_bodies_never_get_a_5xx_and_a_4xx_changes_nothing(
    client: FlaskClient, store: Store, path: str, body: Any
) -> None:
    before = (counts(store), len(store.grants("devvm")))
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code < 500
    if r.status_code >= 400:
        assert (counts(store), len(store.grants("devvm"))) == before


def test_100_concurrent_manual_triggers_and_webhook_posts_make_one_incident(
    sim: SimHandle, servers: Servers
) -> None:
    # Verification lasts many probe rounds, so the incident stays active through the burst.
    cfg = override(sim.config, incidents={"verify_rounds": 50})
    running = servers.core(cfg)
    app = create_app(cfg, store=running.store, metrics=running.metrics, core=running.handle)
    server = servers.web(app, threads=16, store=running.store)
    base = f"http://127.0.0.1:{server.effective_port}/api/v1"
    api = {"Authorization": f"Bearer {read_secret(cfg.web.api_token_file)}"}
    hook = {"Authorization": f"Bearer {read_secret(cfg.web.webhook_token_file)}"}
    target = running.target

    def manual(i: int) -> tuple[int, Any]:
        return _post(f"{base}/incidents", {"target": target, "reason": f"manual {i}"}, api)

    def webhook(i: int) -> tuple[int, Any]:
        alert = {
            "status": "firing",
            "labels": {"alertname": "DevvmDown", "target": target},
            "annotations": {},
            "startsAt": "2026-11-28T10:00:00Z",
            "fingerprint": f"fp{i}",
        }
        body = {"version": "4", "groupKey": "g", "status": "firing", "receiver": "bg", "alerts": [alert]}
        return _post(f"{base}/alertmanager", body, hook)

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(manual if i % 2 else webhook, i) for i in range(100)]
        answers = [f.result(timeout=60) for f in futures]
    servers.close()
    assert {status for status, _ in answers} <= {200, 201}
    ids = {b["id"] for s, b in answers if "id" in b} | {
        a["incident_id"] for s, b in answers for a in b.get("alerts", ())
    }
    assert len(ids) == 1
    assert sum(1 for s, _ in answers if s == 201) + sum(len(b.get("opened", ())) for _, b in answers) == 1
    store = Store(cfg.store_path)
    try:
        assert len(store.list_incidents(target=target)) == 1
    finally:
        store.close()


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
