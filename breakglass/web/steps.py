"""An incident step as a person reads it: a sentence, the command, its output folded, the raw JSON last.

Pure functions of one stored step (``{"id", "at", "kind", "data"}``), so every
kind the agent, the runbook, the policy and the governor record is tested
without a page. Fields that say nothing (None, empty) are dropped; times
(``*_at``) read as clock times, never epoch numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from breakglass.web.humanize import clock

# Who speaks in each kind of step: the model, the watchdog's own runbook/governor, or the policy.
SPEAKERS = {
    "agent_text": "agent",
    "tool_call": "agent",
    "tool_result": "tool",
    "policy": "policy",
    "fallback": "watchdog",
}
# Fields shown in the sentence, the command line or the output block, never again as fields.
SHOWN = {"text", "command", "output", "input", "name", "id", "reason", "allowed", "verb", "result", "status"}


@dataclass
class StepView:
    """What the page draws for one step."""

    speaker: str
    title: str
    text: str = ""
    command: str = ""
    output: str = ""
    refused: bool = False
    fields: list[tuple[str, str]] = field(default_factory=list)
    raw: str = ""


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
        for key in ("command", "cmd", "verb", "path", "pattern"):
            if isinstance(inp.get(key), str):
                return str(inp[key])
        return " ".join(f"{k}={v}" for k, v in inp.items())
    return str(data.get("command") or data.get("verb") or "")


def describe(step: dict[str, Any]) -> StepView:
    """The readable view of one stored step."""
    kind = str(step.get("kind") or "note")
    data = step.get("data")
    data = data if isinstance(data, dict) else {"text": data}
    view = StepView(speaker=SPEAKERS.get(kind, "watchdog"), title=kind.replace("_", " "))
    output = data.get("output")
    if kind == "agent_text":
        view.title, view.text = "agent says", str(data.get("text") or "")
    elif kind == "tool_call":
        view.title = f"agent runs {data.get('name') or 'a tool'}"
        view.command = _command_of(data)
    elif kind == "tool_result":
        status = data.get("status") or "ok"
        view.title = f"{data.get('name') or 'tool'} answered ({status})"
        view.refused = status == "denied"
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
        view.title = f"refused {what}" if view.refused else f"allowed {what}"
        view.text = str(data.get("reason") or "")
    elif kind == "verb":
        view.title = f"power: {data.get('verb')} -> {data.get('result') or 'in flight'}"
    elif kind == "decision":
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
    for key, value in data.items():
        if key in SHOWN or (key == "because" and view.text) or (key == "decision" and kind == "decision"):
            continue
        shown = _value(key, value)
        if shown is not None:
            view.fields.append((key.replace("_", " "), shown))
    view.raw = json.dumps(data, indent=2, sort_keys=True, default=str)
    return view
