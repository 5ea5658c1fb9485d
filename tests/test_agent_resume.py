"""The model's conversation rebuilt from an incident's stored steps (breakglass.agent.resume).

The steps are written to a real store, as the loop and the manager write them,
and read back as the manager hands them over on a resume; the last test starts
the real core (real SDK, the fake Messages API, the simulator) on such a store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_support import agent_core
from harness import wait_for

from breakglass.agent.messages import cached_tools, operator_instruction, tool_output
from breakglass.agent.resume import INTERRUPTED, CannotRebuild, rebuild
from breakglass.incidents.context import Instruction
from breakglass.sim.fake_messages import Script, invalid_request
from breakglass.store import Store

__all__ = ["agent_core"]  # the fixture, imported for pytest

FIRST = "An incident is open for devvm (VM 100). Diagnose and repair it."
LIST_FAILED = {"command": "systemctl --failed --no-pager", "timeout_s": 5}
RESTART = {"command": "sudo systemctl restart postgresql", "timeout_s": 10}


class Steps:
    """An incident in a real store whose clock the test moves; steps added as the loop adds them."""

    def __init__(self, path: Path) -> None:
        self.now = 1_000.0
        self.store = Store(path, clock=lambda: self.now)
        self.incident, _ = self.store.open_incident("devvm", "rule", "units failed", "watchdog", {})

    def add(self, kind: str, /, after: float = 1.0, **data: Any) -> int:
        self.now += after
        return self.store.add_step(self.incident, kind, data)

    def usage(self, turn: int, stop_reason: str, total: int, elapsed: float, sent: list[int]) -> int:
        return self.add(
            "usage",
            input_tokens=total // 2,
            output_tokens=10,
            stop_reason=stop_reason,
            total_tokens=total,
            turn=turn,
            elapsed_seconds=elapsed,
            instructions=sent,
        )

    def steps(self) -> list[dict[str, Any]]:
        inc = self.store.get_incident(self.incident)
        assert inc is not None
        return list(inc["steps"])


@pytest.fixture
def stored(tmp_path: Path) -> Callable[[], Steps]:
    made: list[Steps] = []

    def make() -> Steps:
        made.append(Steps(tmp_path / f"{len(made)}.db"))
        return made[-1]

    yield make
    for s in made:
        s.store.close()


def _a_finished_pass(s: Steps) -> None:
    """An earlier pass of the same incident: its conversation ended, the manager decided."""
    s.usage(1, "tool_use", 90, 1.0, [])
    s.add("tool_call", id="old1", name="pve", input={"verb": "status"}, mutates=False)
    s.add("tool_result", id="old1", name="pve", status="ok", output="running", acted=False)
    s.usage(2, "end_turn", 200, 3.0, [])
    s.add("agent_text", text="Found: ...\nDid: ...\nState now: ...")
    s.add("decision", decision="remediation acted", found="...", did=[], escalation=None, detail="")
    s.add("decision", decision="diagnose again for the next action", because="not verified")


def test_the_current_pass_rebuilds_with_instructions_where_they_were_sent_and_dangling_calls_answered(
    stored: Callable[[], Steps],
) -> None:
    s = stored()
    _a_finished_pass(s)
    early = s.add("operator_instruction", who="viktor", text="leave the NFS mount alone")
    s.usage(1, "tool_use", 120, 2.0, [early])
    s.add("agent_text", text="Looking at the failed units.")
    s.add("tool_call", id="t1", name="devvm_shell", input=LIST_FAILED, mutates=False)
    listed = "exit status 0\nstdout:\npg"
    s.add("tool_result", id="t1", name="devvm_shell", status="ok", output=listed, acted=False)
    second = s.add("operator_instruction", who="ana", text="postgres may be restarted")
    # Given while the second request was out: recorded before its usage step, sent with the third.
    late = s.add("operator_instruction", who="viktor", text="tell me before a power verb")
    s.usage(2, "tool_use", 300, 6.5, [second])
    s.add("tool_call", id="t2", name="devvm_shell", input=RESTART, mutates=True)
    s.add("tool_call", id="t3", name="pve", input={"verb": "status"}, mutates=False)
    s.add("note", after=4.0, text="the watchdog stopped during this incident; it resumes on the next start")

    got = rebuild(s.steps(), FIRST)

    pg = tool_output("devvm_shell", listed)
    assert got.messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": FIRST},
                operator_instruction("viktor", "leave the NFS mount alone"),
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking at the failed units."},
                {"type": "tool_use", "id": "t1", "name": "devvm_shell", "input": LIST_FAILED},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": pg, "is_error": False},
                operator_instruction("ana", "postgres may be restarted"),
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t2", "name": "devvm_shell", "input": RESTART},
                {"type": "tool_use", "id": "t3", "name": "pve", "input": {"verb": "status"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": tool_output("devvm_shell", INTERRUPTED),
                    "is_error": True,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "t3",
                    "content": tool_output("pve", INTERRUPTED),
                    "is_error": True,
                },
            ],
        },
    ]
    # The real API would take it: every tool_use answered, tools defined.
    assert invalid_request({"messages": got.messages, "tools": cached_tools()}) is None
    assert "restarted before" in INTERRUPTED
    assert "may or may not have run" in INTERRUPTED
    assert [c["id"] for c in got.unanswered] == ["t2", "t3"]
    # The restart may have happened: it counts as done, never as undone; the status read does not.
    assert [(a.what, a.status.split(":")[0]) for a in got.acted] == [
        ("ran `sudo systemctl restart postgresql`", "unknown")
    ]
    assert (got.turns, got.tokens, got.report, got.retried) == (2, 300, None, False)
    # The wall clock: 6.5 s up to the second usage step, then 3 more steps to the last one (1+1+4 s).
    assert got.elapsed == pytest.approx(6.5 + 6.0)
    assert got.pending == [Instruction("viktor", "tell me before a power verb", late)]
    assert got.sent_instructions == {early, second}


def test_a_cut_off_answer_is_dropped_again_and_a_stored_result_is_answered_as_it_was(
    stored: Callable[[], Steps],
) -> None:
    s = stored()
    s.usage(1, "max_tokens", 50, 1.0, [])
    s.add("agent_text", text="I will run")
    s.usage(2, "tool_use", 150, 3.0, [])
    s.add("tool_call", id="t1", name="devvm_shell", input=RESTART, mutates=True)
    failed = "exit status 1\nstderr:\nno"
    s.add("tool_result", id="t1", name="devvm_shell", status="error", output=failed, acted=True)

    got = rebuild(s.steps(), FIRST)

    assert [m["role"] for m in got.messages] == ["user", "assistant", "user"]
    call = {"type": "tool_use", "id": "t1", "name": "devvm_shell", "input": RESTART}
    assert got.messages[1]["content"] == [call]  # the cut-off turn is not in the history
    [answer] = got.messages[2]["content"]
    assert answer["is_error"] is True
    assert answer["content"] == tool_output("devvm_shell", failed)
    assert (got.retried, got.turns, got.unanswered) == (True, 2, [])
    assert [(a.what, a.status) for a in got.acted] == [("ran `sudo systemctl restart postgresql`", "exit 1")]


def test_a_conversation_that_had_reported_gives_its_report_and_an_empty_pass_starts_at_turn_1(
    stored: Callable[[], Steps],
) -> None:
    s = stored()
    s.usage(1, "end_turn", 80, 1.0, [])
    s.add("agent_text", text="Found: fine.\nDid: nothing.\nState now: healthy.")
    got = rebuild(s.steps(), FIRST)
    assert got.report == "Found: fine.\nDid: nothing.\nState now: healthy."

    empty = stored()
    pending = empty.add("operator_instruction", who="viktor", text="check the NFS mount")
    got = rebuild(empty.steps(), FIRST)
    assert got.messages == [{"role": "user", "content": FIRST}]
    assert got.turns == 0
    assert got.pending == [Instruction("viktor", "check the NFS mount", pending)]


@pytest.mark.parametrize(
    ("write", "why"),
    [
        # Stored by a version that did not number its turns.
        (lambda s: s.add("usage", input_tokens=1, output_tokens=1, stop_reason="tool_use"), "older version"),
        # The model handed the pass to the runbook: there is no conversation to go on with.
        (
            lambda s: (
                s.usage(1, "tool_use", 10, 1.0, []),
                s.add("fallback", to="runbook", kind="unavailable", reason="overloaded"),
            ),
            "runbook",
        ),
        (lambda s: s.usage(1, "refusal", 10, 1.0, []), "refusal"),
        # A turn's tool call with no result, yet a later turn was asked: the steps are not whole.
        (
            lambda s: (
                s.usage(1, "tool_use", 10, 1.0, []),
                s.add("tool_call", id="t1", name="pve", input={"verb": "status"}, mutates=False),
                s.usage(2, "end_turn", 20, 2.0, []),
            ),
            "no stored result",
        ),
    ],
)
def test_steps_that_hold_no_conversation_to_go_on_with_say_why(
    stored: Callable[[], Steps], write: Callable[[Steps], Any], why: str
) -> None:
    s = stored()
    write(s)
    with pytest.raises(CannotRebuild, match=why):
        rebuild(s.steps(), FIRST)


def test_turns_stored_by_an_older_version_make_the_model_diagnose_afresh_and_the_note_says_why(
    agent_core: Any, tmp_path: Path
) -> None:
    script = Script(
        {"name": "older", "turns": [{"content": [{"type": "text", "text": "Found: fine.\nDid: nothing."}]}]}
    )
    # An incident a stopped watchdog of an older version left mid-conversation: turns without numbers.
    store = Store(tmp_path / "older.db")
    left, _ = store.open_incident("devvm", "manual", "builds feel slow", "viktor", {})
    assert store.transition(left, "diagnosing", "agent diagnosing")
    store.add_step(left, "usage", {"input_tokens": 9, "output_tokens": 9, "stop_reason": "tool_use"})
    store.add_step(left, "tool_call", {"id": "t1", "name": "pve", "input": {"verb": "status"}})
    store.close()

    r, fake = agent_core(script)
    done = r.wait_closed(left, within=60)

    assert done["state"] == "resolved"
    assert [i["id"] for i in r.incidents()] == [left]
    notes = [s["data"]["text"] for s in done["steps"] if s["kind"] == "note"]
    why = "its turns were stored without turn numbers (an older version)"
    assert f"resumed after a restart: the model diagnoses afresh: {why}" in notes
    # A fresh conversation: the opening message alone, numbered from turn 1.
    assert [len(req["messages"]) for req in fake.requests] == [1]
    assert [s["data"].get("turn") for s in done["steps"] if s["kind"] == "usage"] == [None, 1]


def _escalation(store: Store, incident_id: int) -> dict[str, Any]:
    """The incident once it has been escalated (its ``notice`` step written)."""

    def escalated() -> dict[str, Any] | None:
        inc = store.get_incident(incident_id)
        return inc if inc and any(s["kind"] == "notice" for s in inc["steps"]) else None

    return wait_for(escalated, within=60, what=f"incident {incident_id} to be escalated")


def test_a_budget_refusal_before_the_restart_still_escalates_for_the_budget_after_it(
    agent_core: Any, tmp_path: Path
) -> None:
    report = "Found: the guest looks hung.\nDid: asked for a cycle; the budget refused it.\nState now: hung."
    script = Script({"name": "refused", "turns": [{"content": [{"type": "text", "text": report}]}]})
    # Left by a stopped watchdog after the budget refused the model's cycle, before its next turn.
    store = Store(tmp_path / "refused.db")
    left, _ = store.open_incident("devvm", "manual", "builds hang", "viktor", {})
    assert store.transition(left, "diagnosing", "agent diagnosing")
    later = store.clock() + 3600
    refusal = "power action cycle refused by the budget: 3 actions in the window"
    budget = {"verb": "cycle", "reason": "3 actions in the window", "next_allowed_at": later}
    for kind, data in (
        ("usage", {"input_tokens": 5, "output_tokens": 5, "stop_reason": "tool_use", "total_tokens": 10,
                   "turn": 1, "elapsed_seconds": 1.0, "instructions": []}),
        ("tool_call", {"id": "t1", "name": "pve", "input": {"verb": "cycle"}, "mutates": True}),
        ("tool_result", {"id": "t1", "name": "pve", "status": "denied", "output": refusal, "acted": False,
                         "budget": budget}),
    ):
        store.add_step(left, kind, data)
    store.close()

    r, fake = agent_core(script)
    # Escalated, it may be worked again at once (healthy, or the real budget allows): wait for the notice.
    done = _escalation(r.store, left)

    req = fake.requests[0]
    assert [m["role"] for m in req["messages"]] == ["user", "assistant", "user"]
    assert req["messages"][2]["content"][0]["is_error"] is True
    assert [s["data"]["reason"] for s in done["steps"] if s["kind"] == "notice"] == ["budget"]
    [escalated] = [t for t in done["transitions"] if t["to_state"] == "escalated"]
    assert "next power action allowed at" in escalated["reason"]


def test_a_dry_run_before_the_restart_still_escalates_as_a_dry_run_after_it(
    agent_core: Any, tmp_path: Path
) -> None:
    report = "Found: the guest looks hung.\nDid: cycle (dry run).\nState now: hung."
    script = Script({"name": "dry", "turns": [{"content": [{"type": "text", "text": report}]}]})
    # Left by a stopped watchdog after its dry-run cycle was recorded, before the model's next turn.
    store = Store(tmp_path / "dry.db")
    left, _ = store.open_incident("devvm", "manual", "builds hang", "viktor", {})
    assert store.transition(left, "diagnosing", "agent diagnosing")
    store.ledger_insert("devvm", left, "cycle", "agent", dry_run=True, result="dry_run")
    for kind, data in (
        ("usage", {"input_tokens": 5, "output_tokens": 5, "stop_reason": "tool_use", "total_tokens": 10,
                   "turn": 1, "elapsed_seconds": 1.0, "instructions": []}),
        ("tool_call", {"id": "t1", "name": "pve", "input": {"verb": "cycle"}, "mutates": True}),
        ("tool_result", {"id": "t1", "name": "pve", "status": "ok",
                         "output": "dry run: cycle was recorded, not sent", "acted": True}),
    ):
        store.add_step(left, kind, data)
    store.close()

    r, fake = agent_core(script, budget={"dry_run": True})
    # Escalated, it may be worked again at once (healthy, or the real budget allows): wait for the notice.
    done = _escalation(r.store, left)

    assert len(fake.requests[0]["messages"]) == 3  # the resumed conversation, not a fresh one
    assert [s["data"]["reason"] for s in done["steps"] if s["kind"] == "notice"] == ["dry_run"]
    # What the resumed conversation counts as done includes the dry run from before the restart.
    [decided] = [s["data"] for s in done["steps"] if s["data"].get("decision", "").startswith("remediation")]
    assert decided["did"] == ["pve cycle (dry_run)"]
