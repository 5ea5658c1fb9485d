"""The model's conversation rebuilt from an incident's stored steps, to go on after a restart.

The steps are the conversation; nothing else stores it. Each model turn
records, in order: a ``usage`` step (its ``turn`` number in the conversation,
its ``stop_reason``, the tokens spent so far, the seconds the conversation has
run, and the ids of the ``operator_instruction`` steps sent with that request),
then one ``agent_text`` or ``tool_call`` step per content block; each tool
that ran records a ``tool_result``. From those, :func:`rebuild` makes the
message list the loop would have sent next:

- the current pass is what follows the manager's last ``remediation ...``
  decision; its conversation starts at its last turn-1 ``usage`` step;
- the first user message is the incident's opening message (built again from
  the incident, as the first time); operator instructions go where they were
  sent, by step id; those never sent are returned as pending;
- an answer cut off at ``max_tokens`` was dropped and asked again with more
  room: it is dropped again and the room stays doubled;
- a ``tool_use`` whose result was never stored is answered with an error
  saying the watchdog restarted first: it may or may not have run, and one
  that changes the VM is counted as possibly done, never as undone.

It cannot be rebuilt (:class:`CannotRebuild`, with why) when the model had
handed the pass to the runbook, when its last turn ended in a refusal or an
unknown stop, or when the turns were stored by a version that did not number
them; the agent then diagnoses afresh and says why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from breakglass.agent.messages import add_to_user_turn, operator_instruction, tool_result
from breakglass.agent.tools import Sent
from breakglass.incidents.context import Instruction

INTERRUPTED = (
    "no result: the watchdog restarted before this call's result was recorded. It may or may "
    "not have run: if it changes the VM, assume it may have taken effect (check the VM's state "
    "before repeating it)."
)
ENDED = ("end_turn", "stop_sequence")
GOES_ON = ("tool_use", "pause_turn", "max_tokens")


class CannotRebuild(Exception):
    """The stored steps do not hold a conversation the loop can go on with; the message says why."""


@dataclass
class Rebuilt:
    """A conversation as the loop had it when it stopped."""

    messages: list[dict[str, Any]]
    turns: int = 0  # model turns already asked (usage steps)
    tokens: int = 0  # tokens they spent
    elapsed: float = 0.0  # seconds the conversation had run, up to its last stored step
    retried: bool = False  # an answer was cut off: the room stays doubled
    report: str | None = None  # the model had ended its turn with this report
    unanswered: list[dict[str, Any]] = field(default_factory=list)  # tool_call data with no result
    pending: list[Instruction] = field(default_factory=list)  # instructions never sent
    sent_instructions: set[int] = field(default_factory=set)  # instruction step ids already sent
    acted: list[Sent] = field(default_factory=list)  # what changed (or may have changed) the VM
    verbs_ok: list[str] = field(default_factory=list)  # power verbs the host carried out
    budget: dict[str, Any] | None = None  # the budget's last refusal of a power verb (tool_result data)


def current_pass(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps after the manager's last ``remediation ...`` decision (the end of a pass)."""
    start = 0
    for n, s in enumerate(steps):
        if s["kind"] == "decision" and str((s["data"] or {}).get("decision", "")).startswith("remediation "):
            start = n + 1
    return list(steps[start:])


def rebuild(steps: Sequence[dict[str, Any]], first: str) -> Rebuilt:
    """The conversation of the incident's current pass from its ``steps`` (oldest first).

    ``first`` is the opening user message. Raises :class:`CannotRebuild` with the reason.
    """
    pass_steps = current_pass(steps)
    if any(s["kind"] == "fallback" for s in pass_steps):
        raise CannotRebuild("the model had handed this pass to the runbook")
    usage = [n for n, s in enumerate(pass_steps) if s["kind"] == "usage"]
    starts = [n for n in usage if (pass_steps[n]["data"] or {}).get("turn") == 1]
    if usage and not starts:
        raise CannotRebuild("its turns were stored without turn numbers (an older version)")
    conv = pass_steps[starts[-1] :] if starts else []
    instructions = {
        int(s["id"]): Instruction(str(s["data"].get("who")), str(s["data"].get("text")), int(s["id"]))
        for s in pass_steps
        if s["kind"] == "operator_instruction"
    }
    out = Rebuilt(messages=[{"role": "user", "content": first}])
    turns = _turns(conv)
    for n, (u, blocks, results) in enumerate(turns, start=1):
        last = n == len(turns)
        _one_turn(out, n, u, blocks, results, instructions, last=last)
    if conv:
        last_usage = turns[-1][0] if turns else {}
        data = last_usage.get("data") or {}
        out.tokens = int(data.get("total_tokens") or 0)
        ran = float(data.get("elapsed_seconds") or 0.0)
        out.elapsed = ran + max(0.0, float(conv[-1]["at"]) - float(last_usage.get("at") or 0.0))
    out.turns = len(turns)
    out.pending = [i for step, i in sorted(instructions.items()) if step not in out.sent_instructions]
    return out


def _turns(
    conv: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], list[dict[str, Any]], dict[str, dict[str, Any]]]]:
    """Each turn: its usage step, its content steps (text, tool calls) in order, its results by id."""
    turns: list[tuple[dict[str, Any], list[dict[str, Any]], dict[str, dict[str, Any]]]] = []
    for s in conv:
        kind = s["kind"]
        if kind == "usage":
            turns.append((s, [], {}))
        elif turns and kind in ("agent_text", "tool_call"):
            turns[-1][1].append(s)
        elif turns and kind == "tool_result":
            turns[-1][2][str(s["data"].get("id"))] = s["data"]
    return turns


def _one_turn(
    out: Rebuilt,
    n: int,
    usage: dict[str, Any],
    blocks: list[dict[str, Any]],
    results: dict[str, dict[str, Any]],
    instructions: dict[int, Instruction],
    *,
    last: bool,
) -> None:
    data = usage["data"] or {}
    if data.get("turn") != n:
        raise CannotRebuild(f"its stored turns are not numbered in order (turn {data.get('turn')} as {n})")
    if out.report is not None:
        raise CannotRebuild("a turn follows the model's final report")
    _send_instructions(out, data.get("instructions") or [], instructions)
    reason = data.get("stop_reason")
    if reason == "max_tokens":
        out.retried = True  # the cut-off answer was dropped; the room stayed doubled
        return
    if reason not in (*GOES_ON, *ENDED):
        raise CannotRebuild(f"its last turn ended with stop_reason {reason!r}")
    content: list[dict[str, Any]] = []
    for s in blocks:
        d = s["data"]
        if s["kind"] == "agent_text":
            content.append({"type": "text", "text": d["text"]})
        else:
            content.append({"type": "tool_use", "id": d["id"], "name": d["name"], "input": d["input"]})
    if reason in ENDED:
        text = "\n".join(b["text"] for b in content if b["type"] == "text").strip()
        out.report = text or "(the model ended without a report)"
        return
    if not content:
        raise CannotRebuild(f"turn {n} ({reason}) held content the steps do not carry")
    out.messages.append({"role": "assistant", "content": content})
    if reason != "tool_use":
        return
    answers = []
    for s in blocks:
        if s["kind"] != "tool_call":
            continue
        call = s["data"]
        res = results.get(str(call["id"]))
        if res is None and not last:
            raise CannotRebuild(f"tool call {call['id']} of turn {n} has no stored result")
        if res is None:
            out.unanswered.append(call)
            _count_acted(out, call, None)
            answers.append(tool_result(call["id"], call["name"], INTERRUPTED, is_error=True))
            continue
        _count_acted(out, call, res)
        if isinstance(res.get("budget"), dict):
            out.budget = res["budget"]
        output, status = str(res.get("output") or ""), res.get("status") or "ok"
        answers.append(tool_result(call["id"], call["name"], output, is_error=status != "ok"))
    out.messages.append({"role": "user", "content": answers})


def _send_instructions(out: Rebuilt, ids: list[Any], instructions: dict[int, Instruction]) -> None:
    """The instructions sent with a request, added to the last user turn as the loop did."""
    blocks = []
    for step in ids:
        found = instructions.get(int(step))
        if found is None:
            raise CannotRebuild(f"operator instruction step {step} is not in this pass")
        blocks.append(operator_instruction(found.who, found.text))
        out.sent_instructions.add(int(step))
    if blocks:
        add_to_user_turn(out.messages, blocks)


def _count_acted(out: Rebuilt, call: dict[str, Any], res: dict[str, Any] | None) -> None:
    """What the toolbox had counted as done: mutating commands and power verbs."""
    if res is None and not call.get("mutates"):
        return
    if res is not None and not res.get("acted"):
        return
    raw = call.get("input")
    args: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if call.get("name") == "pve":
        what = f"pve {args.get('verb')}"
    else:
        what = f"ran `{str(args.get('command', ''))[:200]}`"
    if res is None:
        out.acted.append(Sent(what, "unknown: the watchdog restarted before its result was recorded"))
        return
    output = str(res.get("output") or "")
    if call.get("name") == "pve":
        how = _pve_result(output, str(res.get("status")))
        if how == "ok":
            out.verbs_ok.append(str(args.get("verb")))
    else:
        first = output.split("\n", 1)[0]
        how = "timed out" if first.startswith("timed out") else first.replace("exit status ", "exit ", 1)
    out.acted.append(Sent(what, how))


def _pve_result(output: str, status: str) -> str:
    if output.startswith("dry run:"):
        return "dry_run"
    try:
        return str(json.loads(output)["result"])
    except (ValueError, KeyError, TypeError):
        return status
