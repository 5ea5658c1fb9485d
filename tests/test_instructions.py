"""Operator instructions and power authorization: the page (CSRF), the API (token), and the agent
receiving an instruction as the operator's next user turn (real SDK, fake API, real core, simulator)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from agent_support import agent_core, manual, steps
from api_support import API_TOKEN, counts, with_tokens
from flask.testing import FlaskClient
from harness import wait_for
from prometheus_client import CollectorRegistry
from web_support import web_config

from breakglass.core import Core, CoreThread
from breakglass.incidents.manager import POWER_AUTHORIZED_BY
from breakglass.metrics import Metrics
from breakglass.store import Store
from breakglass.web.app import create_app

__all__ = ["agent_core"]  # the fixture, imported for pytest

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _instructions(store: Store, incident_id: int) -> list[dict[str, Any]]:
    inc = store.get_incident(incident_id) or {}
    return [s["data"] for s in inc.get("steps", []) if s["kind"] == "operator_instruction"]


def test_the_api_opens_an_incident_with_power_authorized_only_when_asked(
    client: FlaskClient, store: Store
) -> None:
    r = client.post("/api/v1/incidents", json={"target": "devvm", "reason": "slow"}, headers=AUTH)
    assert POWER_AUTHORIZED_BY not in store.get_incident(r.json["id"])["evidence"]
    store.transition(r.json["id"], "failed", "test")
    body = {"target": "devvm", "reason": "wedged desktop", "authorize_power": True}
    r = client.post("/api/v1/incidents", json=body, headers=AUTH)
    assert r.status_code == 201
    assert store.get_incident(r.json["id"])["evidence"][POWER_AUTHORIZED_BY] == "api"
    bad = client.post(
        "/api/v1/incidents", json={"target": "devvm", "reason": "x", "authorize_power": "yes"}, headers=AUTH
    )
    assert bad.status_code == 400
    assert bad.json["detail"][0]["param"] == "authorize_power"


def test_the_api_adds_an_instruction_to_an_active_incident_and_refuses_the_rest(
    client: FlaskClient, store: Store
) -> None:
    opened = client.post("/api/v1/incidents", json={"target": "devvm", "reason": "slow"}, headers=AUTH)
    incident_id = opened.json["id"]
    url = f"/api/v1/incidents/{incident_id}/instructions"
    r = client.post(url, json={"text": "leave postgres running"}, headers=AUTH)
    assert r.status_code == 201
    assert r.json["incident"] == incident_id
    assert _instructions(store, incident_id) == [{"who": "api", "text": "leave postgres running"}]
    before = counts(store)
    assert client.post(url, json={"text": "x"}).status_code == 401
    assert client.post(url, json={"text": ""}, headers=AUTH).status_code == 400
    assert client.post(url, json={"text": "x", "extra": 1}, headers=AUTH).status_code == 400
    missing = client.post("/api/v1/incidents/4242/instructions", json={"text": "x"}, headers=AUTH)
    assert missing.status_code == 404
    store.transition(incident_id, "failed", "test")
    closed = client.post(url, json={"text": "too late"}, headers=AUTH)
    assert closed.status_code == 409
    assert closed.json["error"] == "not_active"
    assert counts(store)[1] == before[1]  # refused requests add no step
    assert len(_instructions(store, incident_id)) == 1


def test_the_page_form_needs_its_csrf_token_and_records_the_person(client: FlaskClient, store: Store) -> None:
    page = client.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    r = client.post(
        "/incidents",
        data={"csrf_token": token.group(1), "target": "devvm", "note": "frozen", "authorize_power": "yes"},
    )
    incident_id = int(r.headers["Location"].rsplit("/", 1)[1])
    assert store.get_incident(incident_id)["evidence"][POWER_AUTHORIZED_BY] == "local"
    detail = client.get(f"/incidents/{incident_id}").get_data(as_text=True)
    assert "Instruction for the agent" in detail
    url = f"/incidents/{incident_id}/instructions"
    assert client.post(url, data={"text": "no reboot please"}).status_code == 400  # no CSRF token
    assert _instructions(store, incident_id) == []
    r = client.post(url, data={"csrf_token": token.group(1), "text": "no reboot please"})
    assert r.status_code == 303
    assert _instructions(store, incident_id) == [{"who": "local", "text": "no reboot please"}]


def test_the_agent_gets_an_instruction_as_the_operators_next_user_turn(agent_core: Any) -> None:
    r, fake = agent_core("operator_instruction")
    incident_id = manual(r)
    wait_for(lambda: fake.requests, within=10, what="the first model request")
    step = r.handle.instruct(incident_id, "viktor", "leave postgres running")
    assert step > 0
    inc = r.wait_closed(incident_id, within=30)
    assert len(fake.requests) == 2
    assert not any("operator_instruction" in str(m) for m in fake.requests[0]["messages"])
    last = fake.requests[1]["messages"][-1]
    assert last["role"] == "user"
    assert [b["type"] for b in last["content"]] == ["tool_result", "text"]
    opening = '<operator_instruction from="viktor">\nleave postgres running'
    assert last["content"][1]["text"].startswith(opening)
    assert steps(inc, "operator_instruction") == [{"who": "viktor", "text": "leave postgres running"}]


def test_an_instruction_through_the_api_and_the_real_core_is_logged_once(
    tmp_path: Path, captured: io.StringIO
) -> None:
    cfg = with_tokens(web_config(tmp_path), tmp_path)
    store = Store(tmp_path / "c.db")
    metrics = Metrics(CollectorRegistry())
    core = Core(cfg, store=store, metrics=metrics)
    thread = CoreThread(core, schedule=False)
    handle = thread.start()
    try:
        incident_id, _ = store.open_incident(
            "devvm", "manual", "slow", "ana", {}, owner=core.manager.owner, lease_seconds=60
        )
        app = create_app(cfg, store=store, metrics=metrics, core=handle, testing=True)
        url = f"/api/v1/incidents/{incident_id}/instructions"
        r = app.test_client().post(url, json={"text": "leave postgres running"}, headers=AUTH)
        assert r.status_code == 201
    finally:
        thread.stop()
        store.close()
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.startswith("{")]
    logged = [e for e in lines if e.get("event") == "operator_instruction"]
    assert len(logged) == 1  # the manager's line; the web layer logged it a second time
    [line] = logged
    assert (line["incident"], line["who"], line["step"]) == (incident_id, "api", r.json["step"])
