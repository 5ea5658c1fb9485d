"""The runbook remediator against the simulator over real SSH, with a real store and Governor.

The simulator's power_log is the ground truth for which verbs were sent; its
fault list says whether a repair in the guest was real.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import override, power_verbs, start_core, wait_for

from breakglass.agent import diagnose
from breakglass.agent.runbook import RunbookRemediator
from breakglass.config import Config, RuleSettings, SshEndpoint
from breakglass.incidents.context import Instruction, RemediationContext, RemediationResult
from breakglass.incidents.governor import Governor, PowerOutcome
from breakglass.incidents.policy import Evidence
from breakglass.remote import DevvmShell, PveClient, Verb
from breakglass.sim.runner import SimHandle
from breakglass.store import Store


@dataclass
class Ran:
    """One remediation: its result, the incident's recorded steps, and the simulator afterwards."""

    result: RemediationResult
    steps: list[dict[str, Any]]
    state: dict[str, Any]
    seconds: float

    def commands(self) -> list[str]:
        """Every guest command the runbook recorded, in order."""
        return [s["data"]["command"] for s in self.steps if s["kind"] == "command"]

    def decisions(self) -> list[str]:
        """Every decision the runbook (or the Governor) recorded, in order."""
        return [s["data"]["decision"] for s in self.steps if s["kind"] == "decision"]


@pytest.fixture
def real_store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store on the real clock (the Governor's gap is measured in real seconds here)."""
    s = Store(tmp_path / "runbook.db")
    yield s
    s.close()


def remediate(
    sim: SimHandle,
    store: Store,
    cfg: Config | None = None,
    *,
    conditions: tuple[str, ...] = (),
    devvm: SshEndpoint | None = None,
    instructions: list[Instruction] | None = None,
    previous_verbs: tuple[tuple[str, str], ...] = (),
) -> Ran:
    """Build the context the incident manager would and run the runbook once."""
    cfg = cfg or sim.config
    target = cfg.targets[0]
    if devvm is not None:
        target = target.model_copy(update={"devvm": devvm})
    p = cfg.probe
    shell = DevvmShell(
        target.devvm, connect_timeout=p.connect_timeout_seconds, command_timeout=p.command_timeout_seconds
    )
    pve = PveClient(
        target.pve, connect_timeout=p.connect_timeout_seconds, status_timeout=p.status_timeout_seconds
    )
    governor = Governor(store, cfg.budget)
    incident, _ = store.open_incident(
        target.name, "rule", "test", "watchdog", {"conditions": list(conditions)}
    )

    async def power(verb: Verb, *, trace: Any, evidence: Evidence) -> PowerOutcome:
        return await governor.judged(
            target.name, incident, verb, pve, evidence=evidence, who="runbook", trace=dict(trace)
        )

    ctx = RemediationContext(
        incident_id=incident,
        target=target,
        config=cfg,
        shell=shell,
        pve=pve,
        power=power,
        record=lambda kind, data: store.add_step(incident, kind, data),
        latest=None,
        conditions=conditions,
        instructions=lambda: instructions or [],
        previous_verbs=previous_verbs,
    )
    started = time.monotonic()
    result = asyncio.run(RunbookRemediator().remediate(ctx))
    seconds = time.monotonic() - started
    inc = store.get_incident(incident)
    assert inc is not None
    return Ran(result, inc["steps"], sim.state(), seconds)


def allowing_the_hog(sim: SimHandle) -> Config:
    return override(sim.config, remediation={"hog_allowlist": ("leaky-batch",)})


POWER_FIXES = [
    ("io_stall", ["cycle"]),
    ("guest_hang", ["reset"]),
    ("vm_stopped", ["start"]),
    ("vm_paused", ["cycle"]),
    ("sshd_dead", ["reset"]),
]


@pytest.mark.parametrize(("fault", "verbs"), POWER_FIXES, ids=[f[0] for f in POWER_FIXES])
def test_a_fault_with_ssh_down_gets_its_least_force_power_verb_and_the_vm_comes_back(
    sim: SimHandle, real_store: Store, fault: str, verbs: list[str]
) -> None:
    sim.inject(fault)
    ran = remediate(sim, real_store)
    assert ran.result.outcome == "acted", ran.result
    assert power_verbs(ran.state) == verbs
    # It returns once the verb is sent: verifying is the manager's (green probe rounds).
    assert ran.result.did[-1] == f"sent {verbs[0]}"
    assert ran.result.follow_up
    assert f"power {verbs[0]}" in ran.decisions()
    assert ran.result.report is None
    wait_for(
        lambda: (st := sim.state())["faults"] == [] and st["vm"] == "running",
        within=15,
        what="the VM back",
    )


def test_an_io_stall_is_cycled_once_and_never_reset(sim: SimHandle, real_store: Store) -> None:
    sim.inject("io_stall")
    ran = remediate(sim, real_store)
    assert power_verbs(ran.state) == ["cycle"]
    chose = next(s["data"] for s in ran.steps if s["data"].get("decision") == "power cycle")
    assert "QMP unresponsive" in chose["because"]
    assert chose["evidence"]["blockstats"]["scsi0"]["io_status"] == "failed"
    assert any(s["kind"] == "forensics" for s in ran.steps)


GUEST_FIXES = ["unit_failed", "disk_full", "memory_hog"]


@pytest.mark.parametrize("fault", GUEST_FIXES)
def test_a_fault_inside_the_guest_is_fixed_over_ssh_without_a_power_verb(
    sim: SimHandle, real_store: Store, fault: str
) -> None:
    sim.inject(fault)
    ran = remediate(sim, real_store, allowing_the_hog(sim))
    assert ran.result.outcome == "acted", ran.result
    assert power_verbs(ran.state) == []
    assert fault not in ran.state["faults"], "the repair must clear the fault for real"
    assert ran.state["faults"] == []
    assert ran.result.did


def test_a_failed_unit_is_restarted_and_confirmed_active(sim: SimHandle, real_store: Store) -> None:
    sim.inject("unit_failed")
    ran = remediate(sim, real_store)
    assert "sudo systemctl restart postgresql.service" in ran.commands()
    assert "systemctl is-active postgresql.service" in ran.commands()
    assert ran.result.did == ("restarted postgresql.service (now active)",)


def test_a_full_disk_is_freed_only_in_the_configured_cleanup_paths(sim: SimHandle, real_store: Store) -> None:
    cfg = override(
        sim.config, remediation={"cleanup_paths": ("/var/tmp/breakglass-cleanup", "/", "tmp", "/var/../etc")}
    )
    sim.inject("disk_full")
    ran = remediate(sim, real_store, cfg)
    removals = [c for c in ran.commands() if c.startswith("sudo rm")]
    assert removals == ["sudo rm -rf -- /var/tmp/breakglass-cleanup/*"]
    assert "sudo journalctl --vacuum-size=200M" in ran.commands()
    skipped = [d for d in ran.decisions() if d.startswith("skip cleanup path")]
    assert len(skipped) == 3
    assert "disk_full" not in ran.state["faults"]


def test_an_allowlisted_memory_hog_is_stopped_through_its_unit(sim: SimHandle, real_store: Store) -> None:
    sim.inject("memory_hog")
    ran = remediate(sim, real_store, allowing_the_hog(sim))
    assert "sudo systemctl stop leaky-batch.service" in ran.commands()
    assert not any(c.startswith("sudo kill") for c in ran.commands())
    stop = next(s["data"] for s in ran.steps if s["data"].get("decision") == "stop leaky-batch.service")
    assert "leaky-batch" in stop["because"]
    assert any("/opt/batch/leak.py" in line for line in stop["evidence"]["top"])


def test_a_memory_hog_not_on_the_allowlist_escalates_on_policy_and_nothing_is_killed(
    sim: SimHandle, real_store: Store
) -> None:
    sim.inject("memory_hog")
    ran = remediate(sim, real_store)
    assert ran.result.outcome == "escalate"
    assert ran.result.escalation == "policy"
    assert "leaky-batch.service" in ran.result.detail
    assert "memory_hog" in ran.state["faults"]
    assert power_verbs(ran.state) == []
    assert not any(c.startswith(("sudo kill", "sudo systemctl stop")) for c in ran.commands())
    leave = next(s["data"] for s in ran.steps if s["data"].get("decision") == "leave it running")
    assert leave["evidence"]["unit"] == "leaky-batch.service"


def test_a_network_partition_is_observer_side_and_sends_no_verb(sim: SimHandle, real_store: Store) -> None:
    sim.inject("network_partition")
    ran = remediate(sim, real_store)
    assert ran.result.outcome == "escalate"
    assert ran.result.escalation == "observer_side"
    assert ran.result.found == "observer-side: devvm and Proxmox host both unreachable; no action"
    assert power_verbs(ran.state) == []
    assert ran.state["verb_counts"].get("forensics", 0) == 0


def test_an_unreachable_proxmox_host_with_a_healthy_vm_escalates_without_a_verb(
    sim: SimHandle, real_store: Store
) -> None:
    sim.inject("pve_unreachable")
    ran = remediate(sim, real_store, conditions=("pve_unreachable",))
    assert ran.result.outcome == "escalate"
    assert ran.result.escalation == "pve_unreachable"
    assert ran.result.found == "Proxmox host unreachable; the VM answers; no power action"
    assert power_verbs(ran.state) == []


def test_an_operator_instruction_is_recorded_by_the_runbook(sim: SimHandle, real_store: Store) -> None:
    ran = remediate(sim, real_store, instructions=[Instruction("viktor", "leave postgres running")])
    noted = [s["data"] for s in ran.steps if s["data"].get("decision") == "note the operator's instruction"]
    assert [n["evidence"] for n in noted] == [{"who": "viktor", "instruction": "leave postgres running"}]
    assert "noted viktor's instruction: leave postgres running" in ran.result.did


def test_a_healthy_vm_needs_nothing(sim: SimHandle, real_store: Store) -> None:
    ran = remediate(sim, real_store)
    assert ran.result.outcome == "nothing_to_do"
    assert power_verbs(ran.state) == []


def test_a_spent_budget_escalates_with_the_time_the_next_verb_is_allowed(
    sim: SimHandle, real_store: Store
) -> None:
    target = sim.config.targets[0].name
    spent_at = time.time()
    for _ in range(sim.config.budget.max_actions):
        real_store.ledger_insert(target, None, "cycle", "earlier", result="ok")
    sim.inject("io_stall")
    ran = remediate(sim, real_store)
    assert ran.result.outcome == "escalate"
    assert ran.result.escalation == "budget"
    assert ran.result.detail.startswith("budget spent")
    assert ran.result.next_allowed_at is not None
    assert ran.result.next_allowed_at >= spent_at + sim.config.budget.window_seconds - 1
    assert power_verbs(ran.state) == []
    assert "io_stall" in ran.state["faults"]


def test_dry_run_reports_the_verb_it_would_send_and_sends_nothing(sim: SimHandle, real_store: Store) -> None:
    sim.inject("io_stall")
    ran = remediate(sim, real_store, override(sim.config, budget={"dry_run": True}))
    assert ran.result.outcome == "acted"
    assert ran.result.did == ("would send cycle (dry run)",)
    assert power_verbs(ran.state) == []


def test_asked_again_after_a_reset_that_did_not_help_it_cycles_and_never_resends(
    sim: SimHandle, real_store: Store
) -> None:
    sim.inject("guest_hang")  # the reset did not help: the guest is still hung
    ran = remediate(sim, real_store, previous_verbs=(("reset", "ok"),))
    assert power_verbs(ran.state) == ["cycle"]
    assert "the guest did not come back after the reset" in ran.result.found
    assert ran.result.follow_up
    wait_for(lambda: sim.state()["vm"] == "running", within=15, what="the VM back from the cycle")
    sim.inject("guest_hang")  # and hung again
    again = remediate(sim, real_store, previous_verbs=(("reset", "ok"), ("cycle", "ok")))
    assert again.result.outcome == "escalate"
    assert again.result.escalation == "gave_up"
    assert power_verbs(again.state) == ["cycle"]  # nothing more was sent


def test_a_guest_still_hung_after_the_reset_is_cycled(sim: SimHandle, tmp_path: Path) -> None:
    """Through the manager: reset, not verified, diagnosed again, cycle, verified."""
    cfg = override(sim.config, incidents={"verify_timeout_seconds": 4.0})
    stop = threading.Event()

    def hang_again_after_the_reset() -> None:
        # The hang comes back as soon as the reset lands, as a wedged guest kernel would.
        while not stop.is_set():
            if power_verbs(sim.state()) == ["reset"]:
                sim.inject("guest_hang")
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=hang_again_after_the_reset, daemon=True)
    r = start_core(cfg, tmp_path / "c.db")
    try:
        wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first round")
        watcher.start()
        sim.inject("guest_hang")
        inc = r.wait_closed(r.wait_opened()["id"], within=60)
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(5)
        r.stop()
    assert inc["state"] == "resolved", inc["report"]
    assert power_verbs(sim.state()) == ["reset", "cycle"]
    assert sim.state()["faults"] == []
    assert "diagnose again for the next action" in [
        s["data"].get("decision") for s in inc["steps"] if s["kind"] == "decision"
    ]
    moves = [(t["from_state"], t["to_state"]) for t in inc["transitions"]]
    assert ("verifying", "diagnosing") in moves
    assert len(r.incidents()) == 1


def test_a_vm_still_booting_is_left_to_boot_instead_of_reset(sim: SimHandle, real_store: Store) -> None:
    sim.inject("vm_stopped")
    sim.call(sim.vm.power_start)  # started a moment ago by someone else: sshd not up yet
    ran = remediate(sim, real_store)
    assert "wait for the boot" in ran.decisions()
    assert ran.result.outcome == "nothing_to_do", ran.result
    assert power_verbs(ran.state) == []
    assert ran.state["vm"] == "running"


def test_ssh_timing_out_while_the_host_sees_a_healthy_vm_is_not_corroborated(
    sim: SimHandle, real_store: Store
) -> None:
    # A port that completes the TCP handshake (the kernel's backlog) and never speaks SSH:
    # the guest "times out" while the Proxmox side stays healthy.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        devvm = sim.config.targets[0].devvm.model_copy(update={"port": silent.getsockname()[1]})
        ran = remediate(sim, real_store, devvm=devvm)
    assert ran.result.outcome == "escalate"
    assert ran.result.escalation == "policy"
    assert "not corroborated" in ran.result.detail
    assert power_verbs(ran.state) == []


# -- the pure helpers ---------------------------------------------------------


TREE = """\
● devvm
    State: running
   CGroup: /
           ├─init.scope
           │ └─1 /sbin/init
           └─system.slice
             ├─leaky-batch.service
             │ └─2001 python3 /opt/batch/leak.py
             └─ssh.service
               └─512 "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"
"""

BY_PID = """\
● leaky-batch.service - Nightly batch import (viktor)
     Loaded: loaded (/etc/systemd/system/leaky-batch.service; enabled; preset: enabled)
     Active: active (running) since Sat 2026-11-28 14:01:02 UTC; 15min ago
   Main PID: 2001 (python3)
     CGroup: /system.slice/leaky-batch.service
             └─2001 python3 /opt/batch/leak.py
"""


def test_a_pid_is_found_in_its_unit_in_both_shapes_of_systemctl_status() -> None:
    assert diagnose.unit_of_pid(TREE, 2001) == "leaky-batch.service"
    assert diagnose.unit_of_pid(TREE, 512) == "ssh.service"
    assert diagnose.unit_of_pid(BY_PID, 2001) == "leaky-batch.service"
    assert diagnose.unit_of_pid(TREE, 1) is None  # init.scope is no service
    assert diagnose.unit_of_pid(TREE, 9999) is None


def test_the_allowlist_matches_a_unit_name_or_a_substring_of_the_command_line() -> None:
    hog = diagnose.Process("viktor", 2001, 41.7, 93.0, "python3 /opt/batch/leak.py")
    assert diagnose.hog_allowed(["leaky-batch"], hog, "leaky-batch.service") == "leaky-batch"
    assert diagnose.hog_allowed(["leaky-batch.service"], hog, "leaky-batch.service") == "leaky-batch.service"
    assert diagnose.hog_allowed(["/opt/batch/leak.py"], hog, None) == "/opt/batch/leak.py"
    assert diagnose.hog_allowed(["leaky"], hog, "leaky-batch.service") is None  # units match exactly
    assert diagnose.hog_allowed(["", "  "], hog, None) is None
    assert diagnose.hog_allowed(["postgres"], hog, "leaky-batch.service") is None


@pytest.mark.parametrize(
    ("path", "allowed"),
    [("/var/tmp/breakglass-cleanup", True), ("/srv/cache/", True), ("/", False), ("//", False),
     ("tmp", False), ("/var/../etc", False), ("/tmp/*", False), ("/tmp/a\nb", False)],
)  # fmt: skip
def test_only_absolute_plain_paths_other_than_root_may_be_emptied(path: str, allowed: bool) -> None:
    assert (diagnose.cleanup_refusal(path) is None) is allowed


def test_memory_pressure_needs_both_low_available_memory_and_full_swap() -> None:
    rules = RuleSettings()
    gib = 2**30
    low = {"mem_total_bytes": 16 * gib, "mem_available_bytes": gib // 100}
    assert diagnose.memory_pressure({**low, "swap_total_bytes": 4 * gib, "swap_used_bytes": 4 * gib}, rules)
    assert (
        diagnose.memory_pressure({**low, "swap_total_bytes": 4 * gib, "swap_used_bytes": gib}, rules) is None
    )
    assert diagnose.memory_pressure({**low, "swap_total_bytes": 0, "swap_used_bytes": 0}, rules)
    assert diagnose.memory_pressure({"mem_total_bytes": None}, rules) is None


def test_meminfo_text_is_judged_with_the_probe_parser() -> None:
    rules = RuleSettings()
    full = "MemTotal: 16000000 kB\nMemAvailable: 100000 kB\nSwapTotal: 4000000 kB\nSwapFree: 10000 kB\n"
    calm = "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\nSwapTotal: 4000000 kB\nSwapFree: 4000000 kB\n"
    assert diagnose.pressure_in_meminfo(full, rules)[0] is not None
    assert diagnose.pressure_in_meminfo(calm, rules) == (None, 0.5)
    assert diagnose.pressure_in_meminfo("", rules)[0] == "meminfo unreadable"
