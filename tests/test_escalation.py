"""One escalation per episode: an escalated incident stays open while the target is sick.

Real core, real store, the simulator's test profile (a round a second, a 3 s
cooldown): before, a VM kept sick after an escalation opened a new incident
after every cooldown, each one escalating and notifying again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import Running, override, power_verbs, start_core, wait_for

from breakglass.sim.runner import SimHandle


def _rounds(r: Running, n: int, within: float) -> None:
    """Wait until ``n`` more probe rounds have been processed."""
    first = r.core.feed.latest(r.target)
    start = first.at if first else 0.0
    seen: list[float] = []

    def more() -> bool:
        latest = r.core.feed.latest(r.target)
        if latest is not None and latest.at > (seen[-1] if seen else start):
            seen.append(latest.at)
        return len(seen) >= n

    wait_for(more, within=within, what=f"{n} probe rounds", every=0.02)


def _events(r: Running) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    r.core.observers.add(lambda event, data: got.append((event, data)))
    return got


Events = list[tuple[str, dict[str, Any]]]


def _escalate(
    sim: SimHandle, tmp_path: Path, **sections: dict[str, Any]
) -> tuple[Running, dict[str, Any], Events]:
    """A core whose target's VM is stopped and whose first incident is escalated; its events."""
    r = start_core(override(sim.config, **sections), tmp_path / "c.db")
    events = _events(r)
    try:
        wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first round")
        sim.inject("vm_stopped")
        inc = r.wait_closed(r.wait_opened()["id"])
    except BaseException:
        r.stop()
        raise
    assert inc["state"] == "escalated"
    return r, inc, events


def _kinds(r: Running, incident_id: int, kind: str) -> list[dict[str, Any]]:
    inc = r.store.get_incident(incident_id)
    assert inc is not None
    return [s["data"] for s in inc["steps"] if s["kind"] == kind]


def test_a_vm_kept_sick_after_escalation_opens_no_second_incident_until_a_person_acts(
    sim: SimHandle, tmp_path: Path
) -> None:
    r, inc, events = _escalate(sim, tmp_path, budget={"max_actions": 0})
    try:
        assert inc["closed_at"] is None  # still open: waiting for a person or for the budget
        # Fifteen rounds is five cooldowns at the test profile.
        _rounds(r, 15, within=40)
        assert [i["id"] for i in r.incidents()] == [inc["id"]]
        assert r.store.get_incident(inc["id"])["state"] == "escalated"
        assert [e for e, _ in events].count("escalated") == 1
        assert _kinds(r, inc["id"], "notice") == [{"event": "escalated", "reason": "budget"}]
        assert power_verbs(sim.state()) == []
        status = r.handle.status()["targets"][0]
        assert status["activity"]["needs_person"] is True
        # A person acts: one more power action. The same incident is worked again.
        r.handle.grant(r.target, "viktor", "start it, I checked the host")
        done = wait_for(
            lambda: (i := r.store.get_incident(inc["id"])) and i["state"] == "resolved" and i,
            within=40,
            what="the same incident to resolve",
        )
        assert power_verbs(sim.state()) == ["start"]
        assert [i["id"] for i in r.incidents()] == [inc["id"]]
        assert done["closed_at"] is not None
    finally:
        r.stop()


def test_an_escalation_for_the_budget_is_worked_again_when_the_budget_allows(
    sim: SimHandle, tmp_path: Path
) -> None:
    cfg = override(sim.config, budget={"max_actions": 1, "window_seconds": 8.0, "min_gap_seconds": 1.0})
    r = start_core(cfg, tmp_path / "c.db")
    try:
        wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first round")
        # The budget was spent a moment ago by an earlier action.
        r.store.ledger_insert(r.target, None, "reset", "earlier", result="ok")
        sim.inject("vm_stopped")
        inc = r.wait_closed(r.wait_opened()["id"])
        assert inc["state"] == "escalated"
        spent_at = time.time()
        done = wait_for(
            lambda: (i := r.store.get_incident(inc["id"])) and i["state"] == "resolved" and i,
            within=40,
            what="the same incident to resolve once the window allows",
        )
        assert time.time() - spent_at > 3  # it waited for the window, not one cooldown
        assert power_verbs(sim.state()) == ["start"]
        assert [i["id"] for i in r.incidents()] == [done["id"]]
        assert any("budget allows" in n.get("text", "") for n in _kinds(r, inc["id"], "note"))
    finally:
        r.stop()


def test_a_still_sick_escalation_reminds_at_the_repeat_interval_not_every_round(
    sim: SimHandle, tmp_path: Path
) -> None:
    r, inc, events = _escalate(
        sim, tmp_path, budget={"max_actions": 0}, incidents={"repeat_interval_seconds": 4.0}
    )
    escalated_at = time.time()
    try:
        wait_for(lambda: len(_kinds(r, inc["id"], "notice")) >= 3, within=30, what="two reminders")
        elapsed = time.time() - escalated_at
        notices = _kinds(r, inc["id"], "notice")
        assert [n["event"] for n in notices[:3]] == ["escalated", "reminder", "reminder"]
        assert len(notices) <= elapsed / 4.0 + 1.5  # about one per interval, never one per round
        reminders = [d for e, d in events if e == "reminder"]
        assert reminders
        assert reminders[0]["incident"] == inc["id"]
        assert [i["id"] for i in r.incidents()] == [inc["id"]]
    finally:
        r.stop()


def test_an_escalated_vm_that_recovers_is_verified_and_resolved(sim: SimHandle, tmp_path: Path) -> None:
    r, inc, _ = _escalate(sim, tmp_path, budget={"max_actions": 0})
    try:
        sim.clear()  # someone started it by hand
        done = wait_for(
            lambda: (i := r.store.get_incident(inc["id"])) and i["state"] == "resolved" and i,
            within=40,
            what="the escalated incident to resolve",
        )
        assert [t["to_state"] for t in done["transitions"]][-3:] == ["escalated", "verifying", "resolved"]
        assert power_verbs(sim.state()) == []
    finally:
        r.stop()
