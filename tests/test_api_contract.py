"""The JSON API checked against its own OpenAPI document by schemathesis.

Schemathesis generates requests from breakglass/web/openapi.yaml for every
operation and checks each answer against the document: no 5xx, a documented
status, a body matching the documented schema, and no schema-valid request
refused. Requests go over loopback to the real Flask app under breakglass's
own server, over a real SQLite store, with the right bearer tokens; a bounded
number of examples per operation, derandomized, so every run sends the same
requests.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import jsonschema
import pytest
import schemathesis
import yaml
from api_support import API_TOKEN, WEBHOOK_TOKEN
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from servers import Servers

SPEC: dict[str, Any] = yaml.safe_load(
    (resources.files("breakglass.web") / "openapi.yaml").read_text(encoding="utf-8")
)
schema = schemathesis.openapi.from_dict(SPEC)
EXAMPLES = 30


@pytest.fixture
def served(app: Flask, servers: Servers) -> str:
    """The app under breakglass's own server (what ``serve`` runs) on a loopback port."""
    return f"http://127.0.0.1:{servers.web(app).effective_port}"


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_the_document_says(case: Any, served: str) -> None:
    token = WEBHOOK_TOKEN if case.operation.path == "/api/v1/alertmanager" else API_TOKEN
    case.call_and_validate(base_url=served, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _bad_request_schema() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(
        {**SPEC, "$ref": "#/components/responses/BadRequest/content/application~1json/schema"}
    )


@pytest.mark.parametrize(
    ("path", "token"),
    [
        ("/api/v1/alertmanager", WEBHOOK_TOKEN),
        ("/api/v1/incidents", API_TOKEN),
        ("/api/v1/silences", API_TOKEN),
        ("/api/v1/targets/devvm/grant", API_TOKEN),
    ],
)
def test_a_body_that_is_not_json_gets_the_documented_400_with_a_list_of_problems(
    client: FlaskClient, path: str, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    r = client.post(path, data=b"\xff{not json", content_type="application/json", headers=auth)
    assert r.status_code == 400
    body = r.get_json()
    _bad_request_schema().validate(body)
    assert body["detail"][0]["param"] == "(body)"
    assert "not JSON" in body["detail"][0]["problem"]
