"""An incident's steps as a person reads them: a conversation with the agent, then the watchdog's own lines.

Pure functions of the stored steps (``{"id", "at", "kind", "data"}``), so every
kind the agent, the runbook, the policy and the governor record is tested
without a page. The model's words read as what it said; each tool call is one
entry (the command it ran) holding what happened while it ran: the policy's
verdict, the governor's steps and the tool's answer, its output folded. A
refusal shows the reason the policy (or the budget) gave. Fields that say
nothing (None, empty) are dropped; times (``*_at``) read as clock times, never
epoch numbers.

A step's place never depends on later steps, so the live page, which gets one
step at a time, nests each new step under the same call as a reload does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from breakglass.web.humanize import clock

# Who speaks in each kind of step: the model, a person, the tools, the policy or the watchdog itself.
SPEAKERS = {
    "agent_text": "agent",
    "tool_call": "agent",
    "tool_result": "tool",
    "policy": "policy",
    "operator_instruction": "person",
    "usage": "model",
}
# Fields shown in the sentence, the command line or the output block, never again as fields.
SHOWN = {
    "text",
    "command",
    "output",
    "input",
    "name",
    "id",
    "reason",
    "allowed",
    "verb",
    "result",
    "status",
    "mutates",
    "acted",
}
# Kinds whose title already says the step's "decision" or "who".
_TITLED = {"decision", "operator_instruction"}
# What each tool call reads as, by tool name.
TOOL_TITLES = {
    "devvm_shell": "agent runs on the VM",
    "pve": "agent asks the Proxmox host",
    "read_file": "agent reads a runbook",
    "grep": "agent searches the runbooks",
    "glob": "agent lists runbooks",
}
# Steps after which no tool call of the model is still running (its loop moved on or ended).
TURN_ENDS = {"usage", "agent_text", "fallback"}


@dataclass
class StepView:
    """What the page draws for one step."""

    speaker: str
    title: str
    text: str = ""
    command: str = ""
    output: str = ""
    output_label: str = "output"
    refused: bool = False
    fields: list[tuple[str, str]] = field(default_factory=list)
    raw: str = ""
    # The id of the tool_call step this step happened inside (0: a top-level entry).
    parent: int = 0
    # A tool_call's own steps nest under it: True for tool_call entries.
    holds: bool = False


def _value(key: str, value: Any) -> str | None:
    """A field value as short text; None when it says nothing."""
    if value is None or value == "" or value == [] or value == {}:
        return None
    if key.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
        return clock(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "; ".join(value)
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _command_of(data: dict[str, Any]) -> str:
    inp = data.get("input")
    if isinstance(inp, dict):
        if data.get("name") == "pve" and isinstance(inp.get("verb"), str):
            return f"pve {inp['verb']}"
        for key in ("command", "cmd", "verb", "path", "pattern"):
            if isinstance(inp.get(key), str):
                return str(inp[key])
        return " ".join(f"{k}={v}" for k, v in inp.items())
    return str(data.get("command") or data.get("verb") or "")


def _is_refusal(kind: str, data: dict[str, Any]) -> bool:
    """A step saying an action was refused, with the reason: the policy's verdict or the budget's."""
    if kind == "policy":
        return data.get("allowed") is False
    return kind == "decision" and str(data.get("decision") or "").endswith(" refused")


@dataclass
class Thread:
    """The conversation so far, step by step: which tool call is running (the model's run one after another).

    Each step goes through :meth:`follow` once, in order; ``last`` is the id of the last one, so a
    caller that keeps a Thread needs only the steps after it.
    """

    pending: list[int] = field(default_factory=list)  # tool_call step ids without a result yet
    by_call_id: dict[str, int] = field(default_factory=dict)  # the model's call id -> step id
    refused: set[int] = field(default_factory=set)  # calls with a refusal already shown inside them
    turns: int = 0
    previous_kind: str = ""
    last: int = 0

    def follow(self, step: dict[str, Any]) -> int:
        """Take the next step; the id of the tool_call step it belongs to (0: none)."""
        kind = str(step.get("kind") or "note")
        data = step.get("data")
        data = data if isinstance(data, dict) else {}
        step_id = int(step.get("id") or 0)
        parent = self._place(kind, data, step_id)
        self.previous_kind, self.last = kind, max(self.last, step_id)
        if _is_refusal(kind, data) and parent:
            self.refused.add(parent)
        if kind == "usage":
            self.turns += 1
        return parent

    def _place(self, kind: str, data: dict[str, Any], step_id: int) -> int:
        if kind == "tool_call":
            if self.previous_kind != "tool_call":
                self.pending.clear()  # a new batch: nothing of an older one is still running
            self.pending.append(step_id)
            self.by_call_id[str(data.get("id"))] = step_id
            return 0
        if kind == "tool_result":
            parent = self.by_call_id.get(str(data.get("id")), 0)
            if parent in self.pending:
                self.pending.remove(parent)
            return parent
        ended = kind == "decision" and str(data.get("decision", "")).startswith("remediation")
        if kind in TURN_ENDS or ended:
            self.pending.clear()
            return 0
        return self.pending[0] if self.pending else 0


def _tool_result(view: StepView, data: dict[str, Any], refusal_shown: bool) -> None:
    status = str(data.get("status") or "ok")
    output = str(data.get("output") or "")
    first = output.split("\n", 1)[0]
    view.refused = status == "denied"
    if view.refused and refusal_shown:
        # The reason is the refusal step just above; what the model read stays one click away.
        view.title, view.output_label = "refused; the agent was told why", "what the agent was told"
    elif view.refused:
        view.title, view.text = "refused", first.removeprefix("refused: ")
        view.output_label = "what the agent was told"
    elif data.get("name") == "devvm_shell" and first.startswith("exit status "):
        view.title = f"exited {first.removeprefix('exit status ')}"
    elif status == "error":
        view.title = f"failed: {first[:200]}"
    else:
        view.title = "answered"
    view.output = output


def describe(step: dict[str, Any], thread: Thread | None = None) -> StepView:
    """The readable view of one stored step; ``thread`` carries what earlier steps started."""
    thread = Thread() if thread is None else thread
    kind = str(step.get("kind") or "note")
    data = step.get("data")
    data = data if isinstance(data, dict) else {"text": data}
    view = StepView(speaker=SPEAKERS.get(kind, "watchdog"), title=kind.replace("_", " "))
    view.parent = thread.follow(step)
    output = data.get("output")
    if kind == "agent_text":
        view.title, view.text = "agent says", str(data.get("text") or "")
    elif kind == "operator_instruction":
        view.title = f"{data.get('who') or 'a person'} tells the agent"
        view.text = str(data.get("text") or "")
    elif kind == "usage":
        view.title = (
            f"model turn {thread.turns}: {data.get('input_tokens', 0)} tokens in, "
            f"{data.get('output_tokens', 0)} out"
        )
    elif kind == "tool_call":
        view.title = TOOL_TITLES.get(str(data.get("name")), f"agent runs {data.get('name') or 'a tool'}")
        if data.get("mutates"):
            view.title += " (changes the VM)"
        view.command = _command_of(data)
        view.holds = True
    elif kind == "tool_result":
        _tool_result(view, data, view.parent in thread.refused)
        output = None
    elif kind == "command":
        exit_status = data.get("exit_status")
        view.command = str(data.get("command") or "")
        if data.get("error"):
            view.title = "command failed to run"
        elif data.get("timed_out"):
            view.title = "command timed out"
        else:
            view.title = f"command exited {exit_status}" if exit_status is not None else "command"
    elif kind == "policy":
        view.refused = data.get("allowed") is False
        what = data.get("verb") or data.get("command") or "the action"
        verdict = "refused" if view.refused else "allowed"
        view.title = f"policy {verdict} {what}"
        view.text = str(data.get("reason") or "").removeprefix("refused: ")
    elif kind == "verb":
        view.title = f"power: {data.get('verb')} -> {data.get('result') or 'in flight'}"
    elif kind == "decision":
        view.refused = _is_refusal(kind, data)
        view.title = f"decision: {data.get('decision')}"
        view.text = str(data.get("because") or "")
    elif kind == "fallback":
        view.title = f"fell back to the {data.get('to') or 'runbook'}"
        view.text = str(data.get("reason") or "")
    elif kind == "note":
        view.title, view.text = "note", str(data.get("text") or "")
    else:
        view.text = str(data.get("text") or "")
    if isinstance(output, str):
        view.output = output
    elif output is not None:
        view.output = json.dumps(output, indent=2, sort_keys=True, default=str)
    if kind != "usage":
        for key, value in data.items():
            titled = key in ("decision", "who") and kind in _TITLED
            if key in SHOWN or titled or (key == "because" and view.text):
                continue
            shown = _value(key, value)
            if shown is not None:
                view.fields.append((key.replace("_", " "), shown))
    view.raw = json.dumps(data, indent=2, sort_keys=True, default=str)
    return view


def conversation(steps: Iterable[dict[str, Any]]) -> list[StepView]:
    """Each step's view in order, placed in the conversation by the steps before it."""
    thread = Thread()
    return [describe(s, thread) for s in steps]
