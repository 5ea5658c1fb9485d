"""The agent's turns read as a conversation on the incident page.

A real incident: the real core and simulator over SSH, the real anthropic SDK
against the scripted fake Messages API (scenario ``conversation``: the model
speaks, runs a command, tries ``sudo reboot`` and then ``pve reset`` on a
healthy VM, both refused, and reports). The page is rendered by the real app
over the incident's store and read as a tree.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from agent_support import SCENARIOS, agent_core, manual

from breakglass.web.app import create_app

__all__ = ["agent_core"]  # the fixture, imported for pytest


def steps_tree(html: str) -> ET.Element:
    """The page's ``<ol id="steps">`` as an element tree (its markup is well-formed)."""
    start = html.index('<ol id="steps"')
    depth, pos = 0, start
    while True:
        opening, closing = html.find("<ol", pos), html.find("</ol>", pos)
        if opening != -1 and opening < closing:
            depth, pos = depth + 1, opening + 3
            continue
        depth, pos = depth - 1, closing + len("</ol>")
        if depth == 0:
            return ET.fromstring(html[start:pos])


def classes(el: ET.Element) -> set[str]:
    return set((el.get("class") or "").split())


def kind(li: ET.Element) -> str:
    return next(c.removeprefix("step-") for c in classes(li) if c.startswith("step-"))


def text(el: ET.Element | None) -> str:
    return "".join(el.itertext()) if el is not None else ""


def child(li: ET.Element, tag: str, cls: str | None = None) -> ET.Element | None:
    """``li``'s own child ``tag`` (with class ``cls``), not one of a nested step's."""
    return next((c for c in li if c.tag == tag and (cls is None or cls in classes(c))), None)


def inner(li: ET.Element) -> list[ET.Element]:
    """The steps nested in a tool call's entry."""
    box = child(li, "ol", "inner")
    assert box is not None, f"step {li.get('id')} holds no inner list"
    return list(box)


def test_the_agents_turns_read_as_words_commands_with_folded_output_and_refusals_with_reasons(
    agent_core: Any,
) -> None:
    r, _fake = agent_core("conversation")
    incident_id = manual(r, "builds feel slow")
    inc = r.wait_closed(incident_id, within=60)
    app = create_app(r.cfg, store=r.store, metrics=r.metrics, core=r.handle)
    html = app.test_client().get(f"/incidents/{incident_id}").get_data(as_text=True)
    top = list(steps_tree(html))

    # The model's words, in order, each as its own entry.
    script = json.loads((SCENARIOS / "conversation.json").read_text())
    said = [b["text"] for t in script["turns"] for b in t["content"] if b["type"] == "text"]
    words = [text(child(li, "p", "text")) for li in top if kind(li) == "agent_text"]
    assert words == said

    # Every step is shown once: each tool call holds its result and what the watchdog did meanwhile.
    calls = [li for li in top if kind(li) == "tool_call"]
    assert [text(child(li, "pre", "command")) for li in calls] == [
        "$ uptime && cat /proc/loadavg",
        "$ sudo reboot",
        "$ pve reset",
    ]
    shown = [li.get("id") for li in top] + [n.get("id") for li in calls for n in inner(li)]
    assert sorted(shown) == sorted(f"step-{s['id']}" for s in inc["steps"])

    # The command that ran: its output folded (a closed <details>), not spilled on the page.
    (ran,) = inner(calls[0])
    assert kind(ran) == "tool_result"
    assert "exited 0" in text(child(ran, "div", "step-head"))
    output = child(ran, "details", "output")
    assert output is not None
    assert output.get("open") is None
    assert "load average" in text(output.find("pre"))
    assert "load average" not in text(child(ran, "p", "text"))

    # Each refused action: the policy's verdict with its reason in plain sight, once.
    policy_steps = {
        s["data"].get("command") or s["data"].get("verb"): s["data"]
        for s in inc["steps"]
        if s["kind"] == "policy" and not s["data"]["allowed"]
    }
    for call, what in ((calls[1], "sudo reboot"), (calls[2], "reset")):
        verdict, answer = inner(call)
        assert [kind(verdict), kind(answer)] == ["policy", "tool_result"]
        assert {"refused"} <= classes(verdict)
        assert {"refused"} <= classes(answer)
        assert f"policy refused {what}" in text(child(verdict, "div", "step-head"))
        reason = policy_steps[what]["reason"]
        assert text(child(verdict, "p", "text")) == reason.removeprefix("refused: ")
        # What the model was told repeats the reason: folded, not said twice.
        assert child(answer, "p", "text") is None
        told = child(answer, "details", "output")
        assert told is not None
        assert "what the agent was told" in text(told.find("summary"))
    assert "powers off or reboots the guest" in policy_steps["sudo reboot"]["reason"]
    assert "SSH and the guest agent both answer" in policy_steps["reset"]["reason"]

    # The turns are marked by the model's token use, and the watchdog's own steps follow at the top level.
    assert [kind(li) for li in top][:3] == ["usage", "agent_text", "tool_call"]
    assert "model turn 1:" in text(child(top[0], "div", "step-head"))
    assert {"decision", "evidence"} <= {kind(li) for li in top[-3:]}


def test_a_step_is_placed_by_the_steps_before_it_so_the_live_page_nests_as_a_reload_does() -> None:
    from breakglass.web.steps import conversation

    def step(n: int, kind: str, **data: Any) -> dict[str, Any]:
        return {"id": n, "at": 0.0, "kind": kind, "data": data}

    steps = [
        step(1, "usage", input_tokens=1, output_tokens=1),
        step(2, "tool_call", id="a", name="devvm_shell", input={"command": "df -h"}),
        step(3, "tool_call", id="b", name="pve", input={"verb": "cycle"}),
        step(4, "tool_result", id="a", name="devvm_shell", status="ok", output="exit status 0"),
        step(5, "policy", verb="cycle", allowed=True, reason="QMP reports an I/O error"),
        step(6, "forensics", qmp="io-error"),
        step(7, "decision", decision="send cycle", because="budget 1 of 3"),
        step(8, "tool_result", id="b", name="pve", status="ok", output="{}"),
        step(9, "usage", input_tokens=1, output_tokens=1),
        step(10, "tool_call", id="c", name="devvm_shell", input={"command": "sleep 999"}),
        # The loop was cut short while "c" ran: the fallback and the runbook's steps are top level.
        step(11, "fallback", to="runbook", reason="wall clock"),
        step(12, "command", command="uptime", exit_status=0, output="up"),
    ]
    parents = [v.parent for v in conversation(steps)]
    assert parents == [0, 0, 0, 2, 3, 3, 3, 3, 0, 0, 0, 0]
    # Each prefix places its steps the same way: the live page sees the steps one at a time.
    for n in range(1, len(steps)):
        assert [v.parent for v in conversation(steps[:n])] == parents[:n]
