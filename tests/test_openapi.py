"""The OpenAPI document is valid, covers every route, and the app's real answers match it."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from api_support import API_TOKEN, WEBHOOK_TOKEN, TriggerCore, make_app, with_tokens
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from prometheus_client import CollectorRegistry
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from web_support import StoreCore, healthy_readings, record_power_action, web_config

from breakglass.config import Config
from breakglass.core import Core, CoreThread
from breakglass.metrics import Metrics
from breakglass.store import Store
from breakglass.web.app import create_app

DOC_URI = "urn:breakglass:openapi"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    text = (resources.files("breakglass.web") / "openapi.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@pytest.fixture
def history(store: Store) -> dict[str, int]:
    """A resolved incident with steps, a power action and a report, and an active one."""
    store.add_readings(healthy_readings("devvm"))
    done, _ = store.open_incident("devvm", "rule", "guest agent silent", "watchdog", {"conditions": ["ssh"]})
    store.add_step(done, "evidence", {"text": "ssh timed out after 5 s"})
    store.add_step(done, "decision", {"decision": "cycle", "evidence": {"qmp_status": "io-error"}})
    record_power_action(store, done, "devvm", "cycle", "ok")
    store.set_report(done, "Found: io stall\nDid: cycle\nState now: healthy")
    for state in ("diagnosing", "remediating", "verifying", "resolved"):
        store.transition(done, state, f"to {state}")
    active, _ = store.open_incident("other", "manual", "looks slow", "alice", {})
    return {"done": done, "active": active}


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _template(path: str) -> str:
    """The document's path for a concrete request path, or the path itself."""
    return re.sub(r"^/api/v1/incidents/[^/]+$", "/api/v1/incidents/{id}", path)


def check_against_doc(doc: dict[str, Any], method: str, path: str, status: int, body: Any) -> None:
    """Fail unless ``status`` is documented for the operation and ``body`` matches its JSON schema."""
    template = _template(path.split("?")[0])
    operation = doc["paths"][template][method]
    assert str(status) in operation["responses"], (
        f"{method.upper()} {template} answered undocumented {status}"
    )
    ref = _pointer("paths", template, method, "responses", str(status))
    response = operation["responses"][str(status)]
    if "$ref" in response:
        ref = response["$ref"].lstrip("#")
    schema_ref = f"{DOC_URI}#{ref}{_pointer('content', 'application/json', 'schema')}"
    registry = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    validator = Draft202012Validator({"$ref": schema_ref}, registry=registry)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate_spec(doc)


def test_every_json_route_of_the_app_is_documented_and_nothing_else_is(
    doc: dict[str, Any], app: Flask
) -> None:
    served = set()
    for rule in app.url_map.iter_rules():
        # The document covers the JSON API and the health routes; pages and /login are HTML.
        if not rule.rule.startswith(("/api/", "/healthz", "/readyz", "/metrics")):
            continue
        path = re.sub(r"<(?:[^:>]+:)?[^>]+>", "{}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((method.lower(), path))
    documented = {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served == documented


def test_documented_error_codes_match_the_codes_the_api_uses(
    doc: dict[str, Any], client: FlaskClient
) -> None:
    r = client.get("/api/v1/incidents?limit=0")
    assert (
        doc["components"]["responses"]["BadRequest"]["content"]["application/json"]["schema"]["allOf"][1][
            "properties"
        ]["error"]["const"]
        == r.get_json()["error"]
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/api/v1/status", 200),
        ("/api/v1/incidents", 200),
        ("/api/v1/incidents?target=devvm&state=resolved", 200),
        ("/api/v1/incidents?limit=1", 200),
        ("/api/v1/incidents?limit=0", 400),
        ("/api/v1/incidents?state=nope&limit=x", 400),
        ("/api/v1/incidents/{done}", 200),
        ("/api/v1/incidents/{active}", 200),
        ("/api/v1/incidents/424242", 404),
    ],
)
def test_real_answers_match_their_documented_schemas(
    doc: dict[str, Any], client: FlaskClient, history: dict[str, int], path: str, status: int
) -> None:
    path = path.format(**history)
    r = client.get(path)
    assert r.status_code == status
    check_against_doc(doc, "get", path, r.status_code, r.get_json())


def test_a_populated_incident_exercises_every_part_of_its_schema(
    doc: dict[str, Any], client: FlaskClient, history: dict[str, int]
) -> None:
    body = client.get(f"/api/v1/incidents/{history['done']}").get_json()
    assert body["steps"]
    assert body["transitions"]
    assert body["power_actions"]
    assert body["report"]
    check_against_doc(doc, "get", "/api/v1/incidents/1", 200, body)


@pytest.mark.parametrize("path", ["/readyz", "/api/v1/status"])
def test_answers_with_a_dead_core_match_their_documented_schemas(
    doc: dict[str, Any], client: FlaskClient, core: StoreCore, path: str
) -> None:
    core.is_alive = False
    r = client.get(path)
    assert r.status_code == 503
    check_against_doc(doc, "get", path, 503, r.get_json())


def test_metrics_answers_with_a_documented_content_type(doc: dict[str, Any], client: FlaskClient) -> None:
    r = client.get("/metrics")
    assert r.mimetype in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


query_values = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    params=st.lists(
        st.tuples(st.sampled_from(["limit", "state", "target", "other"]), query_values), max_size=4
    )
)
def test_any_query_string_gets_a_documented_answer_and_never_a_5xx(
    doc: dict[str, Any], client: FlaskClient, history: dict[str, int], params: list[tuple[str, str]]
) -> None:
    path = "/api/v1/incidents?" + urlencode(params)
    r = client.get(path)
    assert r.status_code in (200, 400)
    check_against_doc(doc, "get", path, r.status_code, r.get_json())


def test_the_real_cores_status_matches_its_documented_schema(
    doc: dict[str, Any], cfg: Config, store: Store
) -> None:
    metrics = Metrics(CollectorRegistry())
    thread = CoreThread(Core(cfg, store=store, metrics=metrics), schedule=False)
    handle = thread.start()
    try:
        handle.call(handle.core.process(healthy_readings("devvm")))
        store.add_silence("other", "kernel upgrade", "alice", expires_at=4e9)
        app = create_app(cfg, store=store, metrics=metrics, core=handle, testing=True)
        body = app.test_client().get("/api/v1/status").get_json()
    finally:
        thread.stop()
    by_name = {t["name"]: t for t in body["targets"]}
    assert by_name["devvm"]["readings"] is not None
    assert by_name["other"]["silence"]["reason"] == "kernel upgrade"
    check_against_doc(doc, "get", "/api/v1/status", 200, body)


WRITES: list[tuple[str, Any, bool]] = [
    ("/api/v1/incidents", {"target": "devvm", "reason": "slow"}, True),
    ("/api/v1/incidents", {"target": "devvm", "reason": "slower"}, True),
    ("/api/v1/incidents", {"target": "ghost", "reason": "x"}, True),
    ("/api/v1/incidents", {"target": "devvm", "reason": "x"}, False),
    ("/api/v1/silences", {"target": "devvm", "reason": "x", "duration_seconds": 60}, True),
    ("/api/v1/silences", {"target": "devvm", "reason": "x"}, True),
    ("/api/v1/targets/devvm/grant", {"why": "one more"}, True),
    ("/api/v1/incidents/1/instructions", {"text": "leave postgres running"}, True),
    ("/api/v1/incidents/1/instructions", {}, True),
    ("/api/v1/incidents/4242/instructions", {"text": "x"}, True),
    ("/api/v1/targets/devvm/grant", {}, True),
    (
        "/api/v1/alertmanager",
        {
            "version": "4",
            "groupKey": "g",
            "status": "firing",
            "receiver": "bg",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"target": t},
                    "startsAt": "2026-11-28T10:00:00Z",
                    "fingerprint": t,
                }
                for t in ("devvm", "devvm", "elsewhere")
            ],
        },
        True,
    ),
    ("/api/v1/alertmanager", {"version": "3"}, True),
    ("/api/v1/alertmanager", {"version": "4"}, False),
]


def test_write_answers_match_their_documented_schemas(doc: dict[str, Any], tmp_path: Path) -> None:
    cfg = with_tokens(web_config(tmp_path), tmp_path)
    store = Store(cfg.store_path)
    try:
        client = make_app(cfg, store, TriggerCore(cfg, store)).test_client()
        for path, body, authorised in WRITES:
            token = WEBHOOK_TOKEN if path.endswith("alertmanager") else API_TOKEN
            headers = {"Authorization": f"Bearer {token}"} if authorised else {}
            r = client.post(path, json=body, headers=headers)
            template = re.sub(r"/targets/[^/]+/", "/targets/{name}/", path)
            template = re.sub(r"/incidents/\d+/", "/incidents/{id}/", template)
            check_against_doc(doc, "post", template, r.status_code, r.json)
        r = client.get("/api/v1/silences")
        check_against_doc(doc, "get", "/api/v1/silences", r.status_code, r.json)
        assert len(r.json["silences"]) == 1
    finally:
        store.close()
