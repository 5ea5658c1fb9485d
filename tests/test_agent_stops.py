"""Every way a model turn can end, parallel calls, caching, hand-over reports and a hostile regex:
the real SDK against the scripted fake (which answers like the real API), the real core, the simulator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest
from agent_support import agent_core, assert_conversation_is_well_formed, manual, steps
from harness import override, power_verbs, wait_for
from servers import Servers

from breakglass.agent.tools import Toolbox, ToolResult
from breakglass.core import watch_loop_lag
from breakglass.incidents.context import RemediationContext
from breakglass.metrics import Metrics
from breakglass.remote import DevvmShell, PveClient
from breakglass.sim.fake_messages import Script, invalid_request
from breakglass.sim.runner import SimHandle

__all__ = ["agent_core"]  # the fixture, imported for pytest


def _results(inc: dict[str, Any]) -> list[dict[str, Any]]:
    return steps(inc, "tool_result")


def test_the_fake_answers_400_to_tool_blocks_without_tools_like_the_real_api(servers: Servers) -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "pve", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]},
    ]
    assert "must define tools" in (invalid_request({"messages": history}) or "")
    assert invalid_request({"messages": history, "tools": [{"name": "pve"}]}) is None
    fake = servers.fake_messages(Script({"turns": [{"content": [{"type": "text", "text": "ok"}]}]}))
    client = anthropic.Anthropic(api_key="k", base_url=fake.base_url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="must define tools"):
        client.messages.create(model="m", max_tokens=10, messages=history)  # type: ignore[arg-type]
    client.close()


def test_a_refusal_hands_the_incident_to_the_runbook_with_the_reason(agent_core: Any, sim: SimHandle) -> None:
    r, _fake = agent_core("refusal")
    wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first probe round")
    sim.inject("unit_failed")
    inc = r.wait_closed(r.wait_opened()["id"], within=60)
    fallback = steps(inc, "fallback")
    assert [f["kind"] for f in fallback] == ["refusal"]
    assert "can't help" in fallback[0]["reason"]
    assert inc["state"] == "resolved", inc["report"]
    assert "unit_failed" not in sim.state()["faults"]
    assert (
        r.metrics.registry.get_sample_value(
            "breakglass_agent_fallbacks_total", {"target": r.target, "reason": "refusal"}
        )
        == 1
    )


def test_a_tool_call_cut_off_at_max_tokens_is_asked_again_with_room_and_never_run_half(
    agent_core: Any,
) -> None:
    r, fake = agent_core("max_tokens_tool_call")
    inc = r.wait_closed(manual(r), within=30)
    assert [req["max_tokens"] for req in fake.requests] == [4096, 8192, 8192]
    assert [c["input"] for c in steps(inc, "tool_call")] == [{"verb": "status"}]
    assert steps(inc, "fallback") == []
    assert inc["report"].startswith("Found: VM healthy")
    assert_conversation_is_well_formed(fake)


def test_a_second_cut_off_hands_over_to_the_runbook(agent_core: Any, sim: SimHandle) -> None:
    r, fake = agent_core("max_tokens_twice")
    inc = r.wait_closed(manual(r), within=30)
    assert len(fake.requests) == 2
    assert [f["kind"] for f in steps(inc, "fallback")] == ["max_tokens"]
    assert steps(inc, "tool_call") == []
    assert power_verbs(sim.state()) == []


def test_a_paused_turn_is_continued_not_taken_as_the_report(agent_core: Any) -> None:
    r, fake = agent_core("pause_turn")
    inc = r.wait_closed(manual(r), within=30)
    assert len(fake.requests) == 3
    last = fake.requests[1]["messages"][-1]
    assert last["role"] == "assistant"
    assert last["content"][0]["text"] == "Let me think about the host first"
    assert inc["report"].startswith("Found: VM healthy"), inc["report"]
    assert_conversation_is_well_formed(fake)


def test_a_stop_from_the_model_is_never_left_standing(agent_core: Any, sim: SimHandle) -> None:
    r, _fake = agent_core("stop_left_standing")
    inc = r.wait_closed(manual(r, "desktop frozen", authorize_power=True), within=60)
    assert power_verbs(sim.state()) == ["stop", "start"]
    assert sim.state()["vm"] != "stopped"
    assert inc["state"] == "resolved", inc["report"]


def test_a_stop_that_cannot_be_undone_escalates_saying_the_vm_is_stopped(
    agent_core: Any, sim: SimHandle
) -> None:
    r, _fake = agent_core("stop_left_standing", budget={"max_actions": 1})
    inc = r.wait_closed(manual(r, "desktop frozen", authorize_power=True), within=60)
    assert power_verbs(sim.state()) == ["stop"]
    assert inc["state"] == "escalated"
    assert "the VM is stopped" in inc["report"]


def test_a_hand_over_after_the_model_cycled_reports_the_cycle(agent_core: Any, sim: SimHandle) -> None:
    r, _fake = agent_core("cycle_then_unavailable")
    wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first probe round")
    sim.inject("io_stall")
    inc = r.wait_closed(r.wait_opened()["id"], within=60)
    assert power_verbs(sim.state()) == ["cycle"]
    assert [f["kind"] for f in steps(inc, "fallback")] == ["unavailable"]
    assert "pve cycle by the model (ok)" in inc["report"]
    decision = next(s for s in steps(inc, "decision") if s["decision"].startswith("remediation "))
    assert decision["decision"] == "remediation acted"


def test_parallel_tool_calls_run_but_only_one_power_verb_per_turn(agent_core: Any, sim: SimHandle) -> None:
    r, fake = agent_core("parallel_power")
    inc = r.wait_closed(manual(r, "wedged desktop", authorize_power=True), within=60)
    statuses = [t["status"] for t in _results(inc)]
    assert statuses == ["ok", "ok", "ok", "denied"]
    assert "one power verb per turn" in _results(inc)[3]["output"]
    assert power_verbs(sim.state()) == ["reset"]
    assert_conversation_is_well_formed(fake)


def test_prompt_caching_is_asked_for_and_cache_tokens_are_counted(agent_core: Any) -> None:
    r, fake = agent_core("injection")
    inc = r.wait_closed(manual(r), within=30)
    usage = steps(inc, "usage")
    assert usage[0]["cache_write_tokens"] > 0
    assert all(u["cache_read_tokens"] > 0 for u in usage[1:])
    read = r.metrics.registry.get_sample_value(
        "breakglass_agent_tokens_total", {"target": r.target, "direction": "cache_read"}
    )
    assert read == sum(u["cache_read_tokens"] for u in usage)
    # Tool output reaches the model marked as untrusted data.
    results = [
        b
        for m in fake.requests[-1]["messages"]
        if m["role"] == "user"
        for b in m["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]
    assert results
    assert all(
        b["content"].startswith('<tool_output tool="') and 'trust="untrusted"' in b["content"]
        for b in results
    )
    # Looking around is not acting.
    decision = next(s for s in steps(inc, "decision") if s["decision"].startswith("remediation "))
    assert decision["decision"] == "remediation nothing_to_do"


BIG_LINES = ("a" * 40 + "!\n") * 100_000  # 4 MB; Python's re needs 2**40 steps per line for (a+)+$


def test_a_catastrophic_regex_from_the_model_finishes_and_the_incident_goes_on(agent_core: Any) -> None:
    r, _fake = agent_core("catastrophic_regex")
    runbooks = r.cfg.agent.runbooks_dir
    assert runbooks is not None
    (runbooks / "big.log").write_text(BIG_LINES)
    inc = r.wait_closed(manual(r), within=60)
    results = _results(inc)
    assert results[0]["status"] == "ok"
    assert results[0]["output"] == "(no matches)"
    assert results[1]["status"] == "error"
    assert "RE2 syntax" in results[1]["output"]
    worst = r.metrics.registry.get_sample_value("breakglass_core_loop_lag_seconds_bucket", {"le": "1.0"})
    total = r.metrics.registry.get_sample_value("breakglass_core_loop_lag_seconds_count")
    assert worst == total, "the core loop was blocked for a second or more"


def test_the_core_loop_lag_stays_under_100_ms_while_grep_runs_a_hostile_regex(
    sim: SimHandle, tmp_path: Path
) -> None:
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "big.log").write_text(BIG_LINES)
    cfg = override(sim.config, agent={"runbooks_dir": runbooks})
    target = cfg.targets[0]
    p = cfg.probe
    ctx = RemediationContext(
        incident_id=1,
        target=target,
        config=cfg,
        shell=DevvmShell(target.devvm, connect_timeout=1, command_timeout=1),
        pve=PveClient(target.pve, connect_timeout=p.connect_timeout_seconds, status_timeout=1),
        power=_no_power,
        record=lambda kind, data: None,
        latest=None,
        conditions=(),
    )
    metrics = Metrics()

    async def run() -> tuple[ToolResult, float]:
        lag = asyncio.create_task(watch_loop_lag(metrics, every=0.01))
        started = time.monotonic()
        res = await Toolbox(ctx).call("grep", {"pattern": "(a+)+$"})
        took = time.monotonic() - started
        lag.cancel()
        return res, took

    res, took = asyncio.run(run())
    assert res.status == "ok", res.text
    reg = metrics.registry
    ticks = reg.get_sample_value("breakglass_core_loop_lag_seconds_count") or 0
    fast = reg.get_sample_value("breakglass_core_loop_lag_seconds_bucket", {"le": "0.1"})
    assert ticks >= took / 0.02  # the loop kept waking while the search ran
    assert fast == ticks, f"{ticks - (fast or 0)} of {ticks} wake-ups were 100 ms late or worse"


async def _no_power(verb: Any, *, trace: Any, evidence: Any) -> Any:
    raise AssertionError("grep never sends a power verb")
