"""Unattended recovery end to end: the real core against the simulator over SSH.

The simulator's power_log is the ground truth for which verbs were sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Running, override, power_verbs, start_core, wait_for

from breakglass.sim.runner import SimHandle


@pytest.fixture
def running(sim: SimHandle, tmp_path: Path) -> Iterator[Running]:
    """The core for the simulator's ``test`` profile, allowed to stop the simulated hog."""
    cfg = override(sim.config, remediation={"hog_allowlist": ("leaky-batch",)})
    r = start_core(cfg, tmp_path / "core.db")
    yield r
    r.stop()


def _first_round(r: Running) -> None:
    wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first probe round")


LEAST_FORCE = [
    ("io_stall", ["cycle"], "resolved"),
    ("guest_hang", ["reset"], "resolved"),
    ("vm_stopped", ["start"], "resolved"),
    ("vm_paused", ["cycle"], "resolved"),
    ("sshd_dead", ["reset"], "resolved"),
    ("unit_failed", [], "resolved"),
    ("disk_full", [], "resolved"),
    ("memory_hog", [], "resolved"),
    ("pve_unreachable", [], "escalated"),
]


@pytest.mark.parametrize(("fault", "verbs", "final"), LEAST_FORCE, ids=[f[0] for f in LEAST_FORCE])
def test_each_fault_opens_one_incident_fixed_with_the_least_force(
    running: Running, sim: SimHandle, fault: str, verbs: list[str], final: str
) -> None:
    _first_round(running)
    sim.inject(fault)
    opened = running.wait_opened()
    inc = running.wait_closed(opened["id"])
    assert inc["state"] == final, inc["report"]
    assert power_verbs(sim.state()) == verbs
    assert len(running.incidents()) == 1
    assert inc["report"]
    assert "Found:" in inc["report"]
    states = [t["to_state"] for t in inc["transitions"]]
    assert states[:2] == ["open", "diagnosing"]
    assert states[-1] == final
    if final == "resolved":
        assert fault not in sim.state()["faults"], "the repair must clear the fault for real"
        # The report carries its own confirmation, not only the timeline.
        rounds = running.cfg.incidents.verify_rounds
        assert f"Confirmed: {rounds} consecutive green probe rounds" in inc["report"]
        assert "verifying" in states
    if inc["trigger"] == "rule":
        # When the first bad round was seen: the page's time to detect.
        assert inc["evidence"]["bad_since"] <= inc["opened_at"]


def test_network_partition_escalates_as_observer_side_without_acting(
    running: Running, sim: SimHandle
) -> None:
    _first_round(running)
    sim.inject("network_partition")
    inc = running.wait_closed(running.wait_opened()["id"])
    assert inc["state"] == "escalated"
    assert "observer" in inc["report"].lower()
    assert power_verbs(sim.state()) == []
    # The counter moves just after the state is committed (the notice comes first): wait for it.
    wait_for(
        lambda: running.metrics.registry.get_sample_value(
            "breakglass_escalations_total", {"target": running.target, "reason": "observer_side"}
        )
        == 1,
        within=5,
        what="the escalation counted",
    )


def test_a_transient_load_spike_opens_nothing(running: Running, sim: SimHandle) -> None:
    _first_round(running)
    sim.inject("load_spike")
    wait_for(lambda: "load_spike" not in sim.state()["faults"], within=15, what="the spike to pass")
    # The spike is over; give the rules three more rounds to (not) fire.
    seen = running.core.feed.latest(running.target)
    assert seen is not None
    for _ in range(3):
        seen = wait_for(
            lambda prev=seen: (r := running.core.feed.latest(running.target)) and r.at > prev.at and r,
            within=10,
            what="another probe round",
        )
    assert running.incidents() == []
    assert power_verbs(sim.state()) == []


def test_repeated_io_stalls_spend_the_budget_then_escalate_with_the_next_allowed_time(
    sim: SimHandle, tmp_path: Path
) -> None:
    # A budget of two: spent by two cycles, then two stalls escalate (one incident takes ~8 s).
    cfg = override(sim.config, incidents={"cooldown_seconds": 0}, budget={"max_actions": 2})
    r = start_core(cfg, tmp_path / "core.db")
    try:
        _first_round(r)
        budget = cfg.budget.max_actions
        assert budget == 2
        for n in range(1, budget + 3):
            sim.inject("io_stall")
            inc = r.wait_closed(r.wait_opened(count=n)["id"])
            if n <= budget:
                assert inc["state"] == "resolved", inc["report"]
            else:
                assert inc["state"] == "escalated"
                assert "next power action allowed at" in inc["report"]
                sim.clear()
                wait_for(
                    lambda: r.store.active_incident(r.target) is None, within=10, what="no active incident"
                )
        assert power_verbs(sim.state()) == ["cycle"] * budget
        status = r.handle.status()["targets"][0]
        assert status["budget"]["remaining"] == 0
        assert status["budget"]["next_allowed_at"] is not None
    finally:
        r.stop()


def test_dry_run_sends_nothing_but_records_the_decision(sim: SimHandle, tmp_path: Path) -> None:
    cfg = override(sim.config, budget={"dry_run": True})
    r = start_core(cfg, tmp_path / "core.db")
    try:
        _first_round(r)
        sim.inject("io_stall")
        inc = r.wait_closed(r.wait_opened()["id"])
        assert inc["state"] == "escalated"
        assert power_verbs(sim.state()) == []
        assert [(p["verb"], p["result"]) for p in inc["power_actions"]] == [("cycle", "dry_run")]
        assert any("would send cycle" in str(s["data"]) for s in inc["steps"])
    finally:
        r.stop()


def test_fifty_concurrent_triggers_open_one_incident(running: Running, sim: SimHandle) -> None:
    import concurrent.futures

    _first_round(running)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(
            pool.map(
                lambda n: running.handle.trigger(
                    running.target, trigger="manual", reason=f"press {n}", who=f"user{n}"
                ),
                range(50),
            )
        )
    assert sum(r.created for r in results) == 1
    assert len({r.incident_id for r in results}) == 1
    inc = running.wait_closed(results[0].incident_id)
    assert inc["state"] == "resolved"
    assert len(running.incidents()) == 1
    assert power_verbs(sim.state()) == []
