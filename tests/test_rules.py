"""Rules: conditions fire after exactly their rounds or for-duration, clear with hysteresis."""

from __future__ import annotations

from typing import Any

import pytest
from readings_support import PVE_DOWN, SSH_DOWN, healthy_readings

from breakglass.config import RuleSettings
from breakglass.watchdog.probes import Readings
from breakglass.watchdog.rules import (
    CONDITIONS,
    ConditionState,
    Evaluation,
    TargetState,
    evaluate,
    health_problems,
    is_healthy,
    with_grace,
)

T0 = 1_800_000_000.0
INTERVAL = 30.0

# Distinct counts per condition, so a test cannot pass by borrowing another rule's count.
RULES = RuleSettings(
    ssh_slow_seconds=5.0,
    ssh_rounds=3,
    guest_agent_rounds=4,
    vm_not_running_rounds=2,
    mem_available_ratio=0.03,
    swap_used_ratio=0.90,
    memory_for_seconds=120.0,
    disk_used_ratio=0.98,
    disk_rounds=2,
    load_per_cpu=8.0,
    load_for_seconds=300.0,
    failed_units_rounds=3,
    pve_rounds=3,
    clear_rounds=2,
    boot_grace_seconds=180.0,
)

GiB = 1024**3

SSH_DOWN_FIELDS = SSH_DOWN
PVE_DOWN_FIELDS = PVE_DOWN


def green(at: float = T0, **overrides: Any) -> Readings:
    """A fully healthy round, with ``overrides`` applied."""
    fields: dict[str, Any] = {
        "ssh_login_seconds": 0.2, "ncpu": 8, "mem_total_bytes": 16 * GiB, "mem_available_bytes": 12 * GiB,
        "swap_total_bytes": 2 * GiB, "disk_used_ratio": 0.40, "uptime_seconds": 86_400.0,
    }
    return healthy_readings(at=at, **{**fields, **overrides})


def run(
    rounds: list[dict[str, Any]],
    *,
    state: TargetState | None = None,
    start: float = T0,
    rules: RuleSettings = RULES,
) -> list[Evaluation]:
    """Evaluate one round per overrides dict, INTERVAL seconds apart."""
    out: list[Evaluation] = []
    st = state or TargetState()
    for i, overrides in enumerate(rounds):
        now = start + i * INTERVAL
        ev = evaluate(st, green(now, **overrides), rules, now)
        out.append(ev)
        st = ev.state
    return out


BAD: dict[str, dict[str, Any]] = {
    "ssh_down": {**SSH_DOWN_FIELDS, "ssh_error": "refused", "ssh_refused": True},
    "guest_agent_silent": {"guest_agent_ok": False},
    "vm_not_running": {"vm_status": "paused"},
    "memory_pressure": {"mem_available_bytes": GiB // 10, "swap_used_bytes": 2 * GiB - 1},
    "disk_full": {"disk_used_ratio": 0.985},
    "load_high": {"load1": 80.0},
    "units_failed": {"failed_units": ("nginx.service",)},
    "pve_unreachable": PVE_DOWN_FIELDS,
}

# Rounds until the condition fires: a count, or for-duration / INTERVAL + the first round.
ROUNDS_TO_FIRE = {
    "ssh_down": 3,
    "guest_agent_silent": 4,
    "vm_not_running": 2,
    "memory_pressure": 5,  # bad at 0, 30, 60, 90, 120 s: held 120 s on the 5th round
    "disk_full": 2,
    "load_high": 11,  # held 300 s on the 11th round
    "units_failed": 3,
    "pve_unreachable": 3,
}

DETAIL = {
    "ssh_down": "ssh login failed (refused), 3 rounds",
    "guest_agent_silent": "guest agent not answering, 4 rounds",
    "vm_not_running": "vm status paused, 2 rounds",
    "memory_pressure": "for 120 s",
    "disk_full": "root disk 98.5% used",
    "load_high": "10.0 per cpu",
    "units_failed": "failed units: nginx.service",
    "pve_unreachable": "proxmox host unreachable (refused)",
}


def test_the_tables_cover_every_condition() -> None:
    assert set(BAD) == set(ROUNDS_TO_FIRE) == set(DETAIL) == set(CONDITIONS)


@pytest.mark.parametrize("name", CONDITIONS)
def test_each_condition_fires_after_exactly_its_rounds_and_not_before(name: str) -> None:
    n = ROUNDS_TO_FIRE[name]
    evs = run([BAD[name]] * (n + 2))
    for ev in evs[: n - 1]:
        assert name not in ev.active
        assert name not in ev.fired
    assert name in evs[n - 1].fired
    assert name in evs[n - 1].active
    assert DETAIL[name] in evs[n - 1].detail[name]
    assert evs[n - 1].state.condition(name).since == T0 + (n - 1) * INTERVAL
    # Still active afterwards, and it fires only once.
    for ev in evs[n:]:
        assert name in ev.active
        assert name not in ev.fired


@pytest.mark.parametrize("name", CONDITIONS)
def test_each_condition_clears_only_after_clear_rounds_good_rounds(name: str) -> None:
    n = ROUNDS_TO_FIRE[name]
    evs = run([BAD[name]] * n + [{}, {}])
    assert name in evs[n - 1].active
    assert name in evs[n].active, "one good round is not enough"
    assert "good for 1 round" in evs[n].detail[name]
    assert name in evs[n + 1].cleared
    assert name not in evs[n + 1].active
    assert evs[n + 1].state.condition(name) == ConditionState()


def test_a_bad_round_while_clearing_restarts_the_good_count() -> None:
    evs = run([BAD["disk_full"]] * 2 + [{}, BAD["disk_full"], {}, {}])
    assert [("disk_full" in ev.active) for ev in evs] == [False, True, True, True, True, False]
    assert evs[5].cleared == ("disk_full",)


def test_a_slow_ssh_login_counts_as_down() -> None:
    evs = run([{"ssh_login_seconds": 6.5}] * 3)
    assert evs[2].fired == ("ssh_down",)
    assert "ssh login slow (6.5 s > 5 s)" in evs[2].detail["ssh_down"]


def test_a_good_round_resets_a_pending_count() -> None:
    evs = run([BAD["ssh_down"], BAD["ssh_down"], {}, BAD["ssh_down"], BAD["ssh_down"]])
    assert not any(ev.fired for ev in evs)
    assert evs[-1].state.condition("ssh_down").bad_rounds == 2


def test_a_transient_load_spike_shorter_than_the_for_duration_opens_nothing() -> None:
    # High for 270 s (10 rounds), below the 300 s the rule needs, then normal again.
    evs = run([BAD["load_high"]] * 10 + [{}] * 3 + [BAD["load_high"]])
    assert not any(ev.fired for ev in evs)
    assert not any(ev.active for ev in evs)
    # The spike left no trace: a new spike starts its clock from zero.
    assert evs[-1].state.condition("load_high").bad_since == T0 + 13 * INTERVAL


def test_memory_pressure_needs_both_low_memory_and_full_swap() -> None:
    low_mem_swap_free = {"mem_available_bytes": GiB // 10, "swap_used_bytes": 0}
    swap_full_mem_fine = {"swap_used_bytes": 2 * GiB}
    assert not any(ev.fired for ev in run([low_mem_swap_free] * 8))
    assert not any(ev.fired for ev in run([swap_full_mem_fine] * 8))


def test_a_vm_without_swap_counts_its_swap_as_full() -> None:
    evs = run([{"mem_available_bytes": GiB // 10, "swap_total_bytes": 0, "swap_used_bytes": 0}] * 5)
    assert evs[4].fired == ("memory_pressure",)
    assert "no swap" in evs[4].detail["memory_pressure"]


@pytest.mark.parametrize("name", ["memory_pressure", "disk_full", "load_high", "units_failed"])
def test_missing_readings_neither_clear_nor_fire_guest_side_conditions(name: str) -> None:
    n = ROUNDS_TO_FIRE[name]
    evs = run([BAD[name]] * n + [SSH_DOWN_FIELDS] * 6)
    for ev in evs[n:]:
        assert name in ev.active
        assert name not in ev.cleared
        assert "no fresh reading" in ev.detail[name]
    # And a pending condition does not fire on missing readings alone.
    evs = run([BAD[name]] * (n - 1) + [SSH_DOWN_FIELDS] * 20)
    assert not any(name in ev.active for ev in evs)


def test_missing_readings_hold_the_counts_on_both_sides() -> None:
    # disk_full needs 2 bad rounds: bad, missing, bad fires.
    evs = run([BAD["disk_full"], SSH_DOWN_FIELDS, BAD["disk_full"]])
    assert evs[2].fired == ("disk_full",)
    # clear_rounds is 2: good, missing, good clears.
    evs = run([{}, SSH_DOWN_FIELDS, {}], state=evs[2].state, start=T0 + 3 * INTERVAL)
    assert evs[2].cleared == ("disk_full",)


def test_a_for_duration_runs_on_across_missing_readings() -> None:
    # Pressure seen at 0 s, SSH down at 30-90 s, pressure again at 120 s: held 120 s.
    evs = run([BAD["memory_pressure"]] + [SSH_DOWN_FIELDS] * 3 + [BAD["memory_pressure"]])
    assert "memory_pressure" in evs[4].fired


def test_proxmox_side_conditions_hold_while_the_host_cannot_be_asked() -> None:
    n = ROUNDS_TO_FIRE["guest_agent_silent"]
    evs = run([BAD["guest_agent_silent"]] * n + [PVE_DOWN_FIELDS] * 4)
    assert all("guest_agent_silent" in ev.active for ev in evs[n - 1 :])
    assert "pve_unreachable" in evs[-1].active


def test_boot_grace_suppresses_firing_but_counters_keep_advancing() -> None:
    state = with_grace(TargetState(), T0 + 180.0)
    down = {**BAD["ssh_down"], "guest_agent_ok": False}
    evs = run([down] * 7, state=state)  # rounds at 0..180 s
    for ev in evs[:6]:  # 0..150 s: inside grace
        assert ev.in_grace
        assert ev.active == ()
        assert ev.fired == ()
    assert evs[5].state.condition("ssh_down").bad_rounds == 6
    # First round after grace: the VM never came back, so it fires at once.
    assert not evs[6].in_grace
    assert set(evs[6].fired) == {"ssh_down", "guest_agent_silent"}
    assert evs[6].state.grace_until is None


def test_a_recently_started_vm_is_in_grace_by_its_uptime() -> None:
    booting = {**BAD["ssh_down"], "uptime_seconds": 20.0}
    evs = run([booting] * 5)
    assert all(ev.in_grace for ev in evs)
    assert not any(ev.fired for ev in evs)
    grown_up = {**BAD["ssh_down"], "uptime_seconds": 400.0}
    ev = evaluate(evs[-1].state, green(T0 + 150, **grown_up), RULES, T0 + 150)
    assert ev.fired == ("ssh_down",)


@pytest.mark.parametrize("status", ["stopped", "paused"])
def test_a_stopped_or_paused_vm_fires_even_in_grace(status: str) -> None:
    state = with_grace(TargetState(), T0 + 1000.0)
    evs = run([{**SSH_DOWN_FIELDS, "vm_status": status, "uptime_seconds": 0.0}] * 2, state=state)
    assert evs[1].fired == ("vm_not_running",)
    assert evs[1].in_grace


def test_an_unknown_vm_status_waits_out_the_grace() -> None:
    state = with_grace(TargetState(), T0 + 1000.0)
    evs = run([{"vm_status": "unknown"}] * 4, state=state)
    assert not any(ev.fired for ev in evs)


def test_an_unreachable_proxmox_host_fires_even_in_grace() -> None:
    state = with_grace(TargetState(), T0 + 1000.0)
    evs = run([PVE_DOWN_FIELDS] * 3, state=state)
    assert evs[2].fired == ("pve_unreachable",)


def test_grace_does_not_hide_an_already_active_condition() -> None:
    evs = run([BAD["disk_full"]] * 2)
    state = with_grace(evs[1].state, T0 + 1000.0)
    evs = run([BAD["disk_full"], {}, {}], state=state, start=T0 + 60)
    assert "disk_full" in evs[0].active
    assert evs[2].cleared == ("disk_full",)


def test_with_grace_keeps_the_later_deadline() -> None:
    st = with_grace(TargetState(), T0 + 100)
    assert with_grace(st, T0 + 50).grace_until == T0 + 100
    assert with_grace(st, T0 + 200).grace_until == T0 + 200


def test_evaluate_is_pure() -> None:
    prev = run([BAD["units_failed"]] * 2)[-1].state
    r = green(T0 + 60, **BAD["units_failed"])
    a = evaluate(prev, r, RULES, T0 + 60)
    b = evaluate(prev, r, RULES, T0 + 60)
    assert a == b
    assert a.fired == ("units_failed",)
    assert not prev.condition("units_failed").active


def test_a_green_round_is_healthy() -> None:
    assert is_healthy(green(), RULES)
    assert health_problems(green(), RULES) == []


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (BAD["ssh_down"], "ssh login failed"),
        ({"ssh_login_seconds": 9.0}, "ssh login slow"),
        (BAD["guest_agent_silent"], "guest agent"),
        (BAD["vm_not_running"], "vm status paused"),
        (BAD["memory_pressure"], "memory"),
        (BAD["disk_full"], "root disk"),
        (BAD["load_high"], "load1"),
        (BAD["units_failed"], "nginx.service"),
        (PVE_DOWN_FIELDS, "proxmox host unreachable"),
        ({"disk_used_ratio": None}, "disk_full: reading missing"),
    ],
)
def test_a_round_with_any_problem_is_not_healthy(overrides: dict[str, Any], problem: str) -> None:
    r = green(**overrides)
    assert not is_healthy(r, RULES)
    assert any(problem in p for p in health_problems(r, RULES))


def test_a_single_high_load_round_is_not_healthy_even_before_the_rule_fires() -> None:
    assert not is_healthy(green(load1=80.0), RULES)
    assert is_healthy(green(load1=64.0), RULES)  # exactly 8 per cpu is not above 8



