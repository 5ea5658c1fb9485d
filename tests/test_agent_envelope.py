"""The policy envelope around the model: what a hostile or mistaken model asks for, and what reaches
the VM. The real SDK talks to the scripted fake, the real core to the simulator over SSH; the
simulator's power_log and units are the ground truth."""

from __future__ import annotations

from typing import Any

from agent_support import agent_core, manual, steps
from harness import power_verbs, wait_for

from breakglass.sim.runner import SimHandle

__all__ = ["agent_core"]  # the fixture, imported for pytest


def _results(inc: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return list(zip(steps(inc, "tool_call"), steps(inc, "tool_result"), strict=True))


def _model_saw_errors(fake: Any) -> list[str]:
    return [
        str(b["content"])
        for req in fake.requests
        for m in req["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if isinstance(b, dict) and b.get("is_error")
    ]


def test_a_reset_during_an_io_stall_is_refused_naming_cycle_and_never_reaches_the_host(
    agent_core: Any, sim: SimHandle
) -> None:
    r, fake = agent_core("reset_during_io_stall")
    wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first probe round")
    sim.inject("io_stall")
    inc = r.wait_closed(r.wait_opened()["id"], within=60)
    assert power_verbs(sim.state()) == ["cycle"]
    refused = [p for p in steps(inc, "policy") if not p["allowed"]]
    assert [p["verb"] for p in refused] == ["reset"]
    assert refused[0]["instead"] == "cycle"
    assert refused[0]["evidence"]["qmp_ok"] is False
    assert any("use cycle" in e and "evidence observed by the watchdog" in e for e in _model_saw_errors(fake))
    assert inc["state"] == "resolved", inc["report"]
    # The refused reset never reads as an action: only the cycle moved the incident to remediating.
    acting = [t["reason"] for t in inc["transitions"] if t["to_state"] == "remediating"]
    assert acting[0] == "power action cycle allowed by the evidence policy; the budget decides", acting


def test_a_reset_on_a_healthy_vm_is_refused_and_the_incident_does_not_claim_a_fix(
    agent_core: Any, sim: SimHandle
) -> None:
    r, fake = agent_core("reset_on_healthy")
    inc = r.wait_closed(manual(r, "builds feel slow"), within=60)
    assert power_verbs(sim.state()) == []
    refused = [p for p in steps(inc, "policy") if not p["allowed"]]
    assert [p["verb"] for p in refused] == ["reset", "stop"]
    assert "SSH and the guest agent both answer" in refused[0]["reason"]
    assert refused[0]["evidence"]["ssh"] == "ok"
    assert any("refused by the policy" in e for e in _model_saw_errors(fake))
    assert r.handle.status()["targets"][0]["budget"]["remaining"] == r.cfg.budget.max_actions
    # Nothing mutating ran, so nothing was "done".
    assert inc["state"] == "resolved"
    decision = next(s for s in steps(inc, "decision") if s["decision"].startswith("remediation "))
    assert decision["decision"] == "remediation nothing_to_do"
    assert decision["did"] == []
    assert not any("power action" in t["reason"] for t in inc["transitions"]), inc["transitions"]


def test_an_instruction_planted_in_command_output_gets_no_power_verb_through(
    agent_core: Any, sim: SimHandle
) -> None:
    r, _fake = agent_core("planted_instruction")
    inc = r.wait_closed(manual(r, "builds feel slow"), within=60)
    assert power_verbs(sim.state()) == []
    assert [p["verb"] for p in steps(inc, "policy") if not p["allowed"]] == ["cycle"]


def test_a_power_verb_on_a_reachable_guest_passes_when_the_person_authorized_it(
    agent_core: Any, sim: SimHandle
) -> None:
    r, _ = agent_core("reset_on_healthy")
    inc = r.wait_closed(manual(r, "wedged desktop, reset it", authorize_power=True), within=60)
    assert power_verbs(sim.state())[:1] == ["reset"]
    allowed = [p for p in steps(inc, "policy") if p["allowed"]]
    assert "viktor authorized" in allowed[0]["reason"]


def test_guest_commands_that_cut_ssh_or_the_network_are_refused_and_never_run(
    agent_core: Any, sim: SimHandle
) -> None:
    r, _fake = agent_core("guest_cuts_ssh")
    inc = r.wait_closed(manual(r), within=60)
    results = _results(inc)
    assert [t["status"] for _, t in results] == ["denied", "denied"]
    assert "pve reset" in results[0][1]["output"]
    assert sim.vm.guest.units["ssh.service"].active == "active"
    assert len(r.incidents()) == 1  # the watchdog kept its access: no second incident
    assert inc["state"] == "resolved"


def test_guest_commands_that_reboot_power_off_or_write_sysrq_are_refused_naming_the_pve_verb(
    agent_core: Any, sim: SimHandle
) -> None:
    r, _fake = agent_core("guest_power")
    inc = r.wait_closed(manual(r), within=60)
    results = _results(inc)
    statuses = [t["status"] for _, t in results]
    assert statuses == ["denied", "denied", "denied", "denied", "ok"], results
    for _, t in results[:4]:
        assert "use the pve tool" in t["output"]
    assert len([p for p in steps(inc, "policy") if p.get("command")]) == 4
    assert power_verbs(sim.state()) == []


def test_stopping_a_unit_obeys_the_hog_allowlist(agent_core: Any, sim: SimHandle) -> None:
    r, _ = agent_core("hog_allowlist", remediation={"hog_allowlist": ("leaky-batch",)})
    inc = r.wait_closed(manual(r), within=60)
    results = _results(inc)
    assert [t["status"] for _, t in results] == ["denied", "ok"]
    assert "remediation.hog_allowlist (leaky-batch)" in results[0][1]["output"]
    assert sim.vm.guest.units["postgresql.service"].active == "active"
    assert sim.vm.guest.units["leaky-batch.service"].active != "active"
