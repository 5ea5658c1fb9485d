"""The model agent end to end: the real anthropic SDK against a scripted fake Messages API,
the real core, and the simulator over SSH. Ground truth is the simulator's power_log and
the requests the fake recorded."""

from __future__ import annotations

import json
from typing import Any

from agent_support import (
    INJECTION,
    agent_core,
    assert_conversation_is_well_formed,
    manual,
    steps,
    tool_defs,
)
from harness import power_verbs, wait_for

from breakglass.agent.tools import TOOL_SCHEMAS
from breakglass.sim.runner import SimHandle

__all__ = ["agent_core"]  # the fixture, imported for pytest

def test_the_agent_fixes_an_io_stall_with_forensics_then_cycle(agent_core: Any, sim: SimHandle) -> None:
    r, fake = agent_core("io_stall_cycle")
    wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first probe round")
    sim.inject("io_stall")
    inc = r.wait_closed(r.wait_opened()["id"], within=60)
    assert inc["state"] == "resolved", inc["report"]
    assert power_verbs(sim.state()) == ["cycle"]
    calls = [(c["name"], c["input"]) for c in steps(inc, "tool_call")]
    assert ("pve", {"verb": "forensics"}) in calls
    assert calls.index(("pve", {"verb": "forensics"})) < calls.index(("pve", {"verb": "cycle"}))
    assert inc["report"].startswith("Found: QEMU I/O stall")
    assert inc["tokens_in"] > 0
    assert inc["tokens_out"] > 0
    assert all(tool_defs(req) == TOOL_SCHEMAS for req in fake.requests)
    assert all(req["model"] == "claude-sonnet-5-5" for req in fake.requests)
    assert_conversation_is_well_formed(fake)
    assert (
        r.metrics.registry.get_sample_value(
            "breakglass_agent_tokens_total", {"target": r.target, "direction": "input"}
        )
        == inc["tokens_in"]
    )


def test_a_power_storm_meets_the_governor_and_the_denial_reaches_the_model(
    agent_core: Any, sim: SimHandle
) -> None:
    r, fake = agent_core("budget_storm")
    # The person opening the incident authorized power on a reachable guest: the budget still bounds it.
    inc = r.wait_closed(manual(r, authorize_power=True), within=60)
    sent = power_verbs(sim.state())
    assert 1 <= len(sent) <= r.cfg.budget.max_actions
    results = steps(inc, "tool_result")
    denied = [t for t in results if t["status"] == "denied"]
    assert denied, results
    assert "refused by the budget" in denied[0]["output"]
    # The model saw the denial as an error result.
    errors = [
        b
        for req in fake.requests
        for m in req["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if b.get("is_error")
    ]
    assert any("refused by the budget" in b["content"] for b in errors)
    assert inc["state"] == "escalated"
    assert_conversation_is_well_formed(fake)


def test_file_tools_refuse_paths_outside_the_runbooks_folder(agent_core: Any) -> None:
    r, fake = agent_core("file_escape")
    inc = r.wait_closed(manual(r), within=30)
    results = {
        json.dumps(c["input"]): t
        for c, t in zip(steps(inc, "tool_call"), steps(inc, "tool_result"), strict=True)
    }
    for path in ("../../etc/passwd", "/etc/passwd", "escape/passwd"):
        res = results[json.dumps({"path": path})]
        assert res["status"] == "denied", (path, res)
        assert "root:" not in res["output"]
    assert "use cycle, not reset" in results[json.dumps({"path": "runbooks/proxmox-host.md"})]["output"]
    assert "passwd" not in results[json.dumps({"pattern": "**/*.md"})]["output"]
    assert "runbooks/proxmox-host.md:1:" in results[json.dumps({"pattern": "cycle"})]["output"]
    assert_conversation_is_well_formed(fake)


def test_a_prompt_injection_in_an_alert_changes_neither_tools_nor_budget(
    agent_core: Any, sim: SimHandle
) -> None:
    r, fake = agent_core("injection")
    wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first probe round")
    alert = {"labels": {"alertname": "DevvmSlow", "target": "devvm"}, "annotations": {"summary": INJECTION}}
    res = r.handle.trigger(
        r.target, trigger="alertmanager", reason="DevvmSlow", who="alertmanager", evidence={"alerts": [alert]}
    )
    inc = r.wait_closed(res.incident_id, within=30)
    assert inc["state"] == "resolved"
    first = fake.requests[0]
    assert INJECTION not in json.dumps(first["system"])
    opening = first["messages"][0]["content"]
    assert INJECTION in opening.split("<incident_data>", 1)[1]
    assert "untrusted" in opening.split("<incident_data>", 1)[0]
    assert all(tool_defs(req) == TOOL_SCHEMAS for req in fake.requests)
    assert power_verbs(sim.state()) == []
    assert r.handle.status()["targets"][0]["budget"]["remaining"] == r.cfg.budget.max_actions


def test_an_overloaded_answer_is_retried_and_the_agent_goes_on(agent_core: Any) -> None:
    r, fake = agent_core("overloaded_then_ok")
    inc = r.wait_closed(manual(r), within=30)
    assert inc["state"] == "resolved"
    assert len(fake.requests) == 3  # one 529, then two real turns
    assert steps(inc, "fallback") == []


def test_server_errors_forever_hand_the_incident_to_the_runbook(agent_core: Any, sim: SimHandle) -> None:
    r, fake = agent_core("server_error_forever")
    wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first probe round")
    sim.inject("unit_failed")
    inc = r.wait_closed(r.wait_opened()["id"], within=40)
    assert inc["state"] == "resolved", inc["report"]
    fallback = steps(inc, "fallback")
    assert len(fallback) == 1
    assert fallback[0]["kind"] == "unavailable"
    assert "500" in fallback[0]["reason"]
    assert len(fake.requests) == 3  # the first try and the SDK's two retries
    assert "unit_failed" not in sim.state()["faults"]


def test_an_authentication_error_falls_back_at_once(agent_core: Any) -> None:
    r, fake = agent_core("unauthorized")
    inc = r.wait_closed(manual(r), within=30)
    assert len(fake.requests) == 1
    fallback = steps(inc, "fallback")
    assert fallback
    assert fallback[0]["kind"] == "auth"
    assert "sk-ant-test-key-not-real" not in json.dumps(inc)


def test_the_turn_limit_ends_with_tools_kept_and_tool_choice_none(agent_core: Any) -> None:
    r, fake = agent_core("endless_tools", max_turns=3)
    inc = r.wait_closed(manual(r), within=30)
    assert len(fake.requests) == 3
    assert "tool_choice" not in fake.requests[0]
    # The history holds tool blocks: the real API refuses a request without tools (400).
    assert tool_defs(fake.requests[-1]) == TOOL_SCHEMAS
    assert fake.requests[-1]["tool_choice"] == {"type": "none"}
    assert steps(inc, "fallback") == []
    assert_conversation_is_well_formed(fake)
    assert inc["report"]


def test_the_token_budget_stops_the_loop_with_a_recorded_reason(agent_core: Any) -> None:
    r, fake = agent_core("endless_tools", max_tokens_per_incident=1500)
    inc = r.wait_closed(manual(r), within=30)
    assert len(fake.requests) == 2  # 1000 tokens each: the second crosses the budget
    notes = [s["text"] for s in steps(inc, "note")]
    assert any("token budget spent (2000 of 1500)" in n for n in notes)
    assert "token budget spent" in inc["report"]
