"""The simulated VM: faults, login behaviour, power verbs, the forced command's allowlist."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from breakglass.sim.vm import FAULTS, ExecResult, SimTiming, SimVM

FAST = SimTiming(boot_seconds=1.0, stop_seconds=0.0, command_latency_seconds=0.0,
                 slow_latency_seconds=0.05, qmp_timeout_seconds=0.05, hang_seconds=5.0,
                 load_spike_seconds=2.0)
REJECTION = ("breakglass-verbs: rejected: only status, forensics, reset, stop, start, cycle "
             "are accepted\n")


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = 1_795_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> SimVM:
    return SimVM(FAST, clock=clock)


def pve(sim: SimVM, verb: str) -> tuple[dict, int]:
    result = asyncio.run(sim.pve_exec(verb))
    return json.loads(result.stdout), result.exit_status


def verbs(sim: SimVM) -> list[str]:
    return [e["verb"] for e in sim.state()["power_log"]]


def test_a_fresh_vm_is_running_healthy_and_reachable(sim: SimVM) -> None:
    state = sim.state()
    assert state["vm"] == "running"
    assert state["faults"] == []
    assert state["vmid"] == 102
    assert state["power_log"] == []
    assert state["uptime_seconds"] > 3600
    assert sim.devvm_login() == "ok"
    assert sim.pve_login() == "ok"


def test_inject_refuses_an_unknown_fault_and_names_the_known_ones(sim: SimVM) -> None:
    with pytest.raises(ValueError, match=r"unknown fault 'disk_fool'; known: io_stall, "):
        sim.inject("disk_fool")
    assert sim.state()["faults"] == []


@pytest.mark.parametrize("fault", FAULTS)
def test_each_injected_fault_is_reported_until_clear(sim: SimVM, fault: str) -> None:
    sim.inject(fault)
    assert fault in sim.state()["faults"]
    sim.clear()
    assert sim.state()["faults"] == []
    assert sim.state()["vm"] == "running"
    assert sim.devvm_login() == "ok"


@pytest.mark.parametrize(("fault", "devvm", "host"), [
    ("io_stall", "hang", "ok"),
    ("guest_hang", "hang", "ok"),
    ("vm_stopped", "refuse", "ok"),
    ("unit_failed", "ok", "ok"),
    ("disk_full", "ok", "ok"),
    ("memory_hog", "slow", "ok"),
    ("sshd_dead", "refuse", "ok"),
    ("load_spike", "ok", "ok"),
    ("vm_paused", "hang", "ok"),
    ("pve_unreachable", "ok", "refuse"),
    ("network_partition", "hang", "hang"),
])
def test_logins_behave_as_the_fault_dictates(sim: SimVM, fault: str, devvm: str,
                                             host: str) -> None:
    sim.inject(fault)
    assert sim.devvm_login() == devvm
    assert sim.pve_login() == host


@pytest.mark.parametrize(("fault", "status", "qmp_ok", "qmp_status", "agent_ok"), [
    (None, "running", True, "running", True),
    ("io_stall", "running", False, None, False),
    ("guest_hang", "running", True, "running", False),
    ("vm_paused", "paused", True, "io-error", False),
    ("vm_stopped", "stopped", False, None, False),
    ("sshd_dead", "running", True, "running", True),
    ("unit_failed", "running", True, "running", True),
    ("disk_full", "running", True, "running", True),
    ("memory_hog", "running", True, "running", True),
    ("load_spike", "running", True, "running", True),
])
def test_status_shows_what_the_host_can_see(sim: SimVM, fault: str | None, status: str,
                                            qmp_ok: bool, qmp_status: str | None,
                                            agent_ok: bool) -> None:
    if fault:
        sim.inject(fault)
    out, code = pve(sim, "status")
    assert code == 0
    assert set(out) == {"vmid", "status", "uptime_seconds", "pid", "qmp", "guest_agent",
                        "captured_at"}
    assert out["vmid"] == 102
    assert out["status"] == status
    assert out["qmp"]["ok"] is qmp_ok
    assert out["qmp"]["status"] == qmp_status
    assert out["guest_agent"]["ok"] is agent_ok
    assert (out["pid"] is None) == (status == "stopped")
    assert out["captured_at"].endswith("Z")


def test_status_under_io_stall_waits_for_qmp_then_reports_the_timeout(sim: SimVM) -> None:
    sim.inject("io_stall")
    started = time.monotonic()
    out, _ = pve(sim, "status")
    assert time.monotonic() - started >= FAST.qmp_timeout_seconds
    assert out["qmp"]["error"] == "QMP query-status timed out after 0.05s"
    assert out["guest_agent"]["error"] == "guest agent not responding"


def test_forensics_adds_config_pending_blockstats_and_raw_qmp(sim: SimVM) -> None:
    sim.inject("vm_paused")
    out, code = pve(sim, "forensics")
    assert code == 0
    assert out["status"] == "paused"
    assert out["config"]["cores"] == 4
    assert out["config"]["memory"] == 16384
    assert "scsi0" in out["config"]
    assert "net0" in out["config"]
    assert "agent" in out["config"]
    assert out["pending"] == {}
    assert out["blockstats"]["scsi0"]["io_status"] == "failed"
    assert out["qmp_raw"]["query-status"]["status"] == "io-error"
    assert sim.state()["power_log"] == []


@pytest.mark.parametrize("command", [
    "status; reboot", "$(id)", "status\n", "cycle 103", "", "stätus", "status ", " status",
    "STATUS", "reboot", "qm stop 102", "cycle\x00", "status && cycle",
])
def test_the_forced_command_rejects_anything_but_a_bare_verb(sim: SimVM, command: str) -> None:
    sim.inject("io_stall")
    before = sim.state()
    result = asyncio.run(sim.pve_exec(command))
    assert (result.stdout, result.stderr, result.exit_status) == ("", REJECTION, 1)
    after = sim.state()
    assert after["verb_counts"] == {"rejected": 1}
    assert {k: v for k, v in after.items() if k != "verb_counts"} == {
        k: v for k, v in before.items() if k != "verb_counts"}
    assert list(sim.forensics_log) == []


def test_status_and_forensics_are_counted_but_not_logged_as_power(sim: SimVM) -> None:
    pve(sim, "status")
    pve(sim, "status")
    pve(sim, "forensics")
    assert sim.state()["verb_counts"] == {"status": 2, "forensics": 1}
    assert sim.state()["power_log"] == []


def test_reset_leaves_an_io_stall_in_place_and_cycle_clears_it(sim: SimVM,
                                                              clock: FakeClock) -> None:
    sim.inject("io_stall")
    out, code = pve(sim, "reset")
    assert (out["verb"], out["ok"], out["forensics"], code) == ("reset", True, "captured", 0)
    clock.advance(FAST.boot_seconds + 0.1)
    assert "io_stall" in sim.state()["faults"]
    assert sim.devvm_login() == "hang"
    out, code = pve(sim, "cycle")
    assert (out["ok"], code) == (True, 0)
    assert sim.state()["vm"] == "booting"
    assert sim.devvm_login() == "refuse"
    clock.advance(FAST.boot_seconds + 0.1)
    assert sim.state()["faults"] == []
    assert sim.state()["vm"] == "running"
    assert sim.devvm_login() == "ok"
    assert verbs(sim) == ["reset", "cycle"]
    assert all(e["ok"] for e in sim.state()["power_log"])


def test_a_cycle_starts_a_fresh_qemu_process_and_a_reset_reuses_it(sim: SimVM,
                                                                  clock: FakeClock) -> None:
    first = pve(sim, "status")[0]["pid"]
    pve(sim, "reset")
    assert pve(sim, "status")[0]["pid"] == first
    clock.advance(5)
    pve(sim, "cycle")
    assert pve(sim, "status")[0]["pid"] not in (None, first)


@pytest.mark.parametrize("fault", ["guest_hang", "sshd_dead", "memory_hog", "unit_failed"])
def test_a_reset_clears_what_a_reboot_clears(sim: SimVM, clock: FakeClock, fault: str) -> None:
    sim.inject(fault)
    pve(sim, "reset")
    clock.advance(FAST.boot_seconds)
    assert sim.state()["faults"] == []
    assert sim.devvm_login() == "ok"


def test_a_reset_neither_unpauses_nor_restarts_a_stopped_vm(sim: SimVM) -> None:
    sim.inject("vm_paused")
    out, code = pve(sim, "reset")
    assert code == 0
    assert sim.state()["vm"] == "paused"
    sim.inject("vm_stopped")
    out, code = pve(sim, "reset")
    assert (out["ok"], code, out["message"]) == (False, 1, "VM 102 not running")


def test_cycle_clears_a_paused_vm_but_the_full_disk_stays(sim: SimVM, clock: FakeClock) -> None:
    sim.inject("vm_paused")
    sim.inject("disk_full")
    pve(sim, "cycle")
    clock.advance(FAST.boot_seconds)
    assert sim.state()["faults"] == ["disk_full"]


def test_stop_then_start_boots_through_booting_on_the_injected_clock(sim: SimVM,
                                                                     clock: FakeClock) -> None:
    sim.inject("io_stall")
    out, code = pve(sim, "stop")
    assert (out["ok"], code) == (True, 0)
    assert sim.state()["vm"] == "stopped"
    assert sim.state()["faults"] == ["vm_stopped"]
    assert sim.devvm_login() == "refuse"
    out, code = pve(sim, "start")
    assert (out["ok"], code) == (True, 0)
    assert sim.state()["vm"] == "booting"
    status = pve(sim, "status")[0]
    assert status["status"] == "running"
    assert status["guest_agent"]["ok"] is False
    assert status["uptime_seconds"] < FAST.boot_seconds
    assert sim.devvm_login() == "refuse"
    clock.advance(FAST.boot_seconds - 0.01)
    assert sim.state()["vm"] == "booting"
    clock.advance(0.02)
    assert sim.state()["vm"] == "running"
    assert sim.devvm_login() == "ok"
    assert pve(sim, "status")[0]["guest_agent"]["ok"] is True
    assert verbs(sim) == ["stop", "start"]


def test_start_on_a_running_vm_fails_like_qm_and_is_logged_as_failed(sim: SimVM) -> None:
    out, code = pve(sim, "start")
    assert (out["ok"], code, out["message"]) == (False, 1, "VM 102 already running")
    assert sim.state()["power_log"][0]["verb"] == "start"
    assert sim.state()["power_log"][0]["ok"] is False
    assert sim.state()["vm"] == "running"


def test_an_injected_stop_is_fixed_by_start(sim: SimVM, clock: FakeClock) -> None:
    sim.inject("vm_stopped")
    assert pve(sim, "status")[0]["qmp"]["error"] == "VM 102 not running"
    pve(sim, "start")
    clock.advance(FAST.boot_seconds)
    assert sim.state()["faults"] == []


def test_power_log_holds_each_power_verb_with_its_time(sim: SimVM, clock: FakeClock) -> None:
    t0 = clock.now
    pve(sim, "reset")
    clock.advance(10)
    pve(sim, "status")
    pve(sim, "cycle")
    log = sim.state()["power_log"]
    assert [(e["verb"], e["at"]) for e in log] == [("reset", t0), ("cycle", t0 + 10)]
    assert sim.state()["verb_counts"] == {"reset": 1, "status": 1, "cycle": 1}


def test_mutating_verbs_capture_forensics_before_they_act(sim: SimVM) -> None:
    sim.inject("io_stall")
    pve(sim, "cycle")
    assert len(sim.forensics_log) == 1
    captured = sim.forensics_log[-1]
    assert captured["qmp"]["ok"] is False
    assert captured["blockstats"]["scsi0"]["io_status"] == "failed"
    assert "io_stall" not in sim.state()["faults"]


def test_load_spike_removes_itself_after_its_time(sim: SimVM, clock: FakeClock) -> None:
    sim.inject("load_spike")
    clock.advance(FAST.load_spike_seconds - 0.1)
    assert sim.state()["faults"] == ["load_spike"]
    clock.advance(0.2)
    assert sim.state()["faults"] == []


def test_clear_restores_health_and_keeps_the_history(sim: SimVM) -> None:
    sim.inject("vm_stopped")
    sim.inject("pve_unreachable")
    pve(sim, "start")
    sim.clear()
    state = sim.state()
    assert (state["vm"], state["faults"]) == ("running", [])
    assert verbs(sim) == ["start"]
    assert sim.devvm_login() == "ok"
    assert sim.pve_login() == "ok"


async def stalled(sim: SimVM, task: asyncio.Task[ExecResult], within: float = 2.0) -> None:
    """Wait until ``task`` is waiting out a hang in the VM; fail if it finishes or never stalls."""
    deadline = time.monotonic() + within
    while sim.hanging_execs == 0:
        assert not task.done(), f"the exec finished instead of stalling: {task.result()!r}"
        assert time.monotonic() < deadline, f"the exec did not stall within {within} s"
        await asyncio.sleep(0.01)


def test_an_exec_under_io_stall_hangs_until_a_cycle_cuts_it_off(sim: SimVM) -> None:
    async def scenario() -> int:
        sim.inject("io_stall")
        task = asyncio.create_task(sim.devvm_exec("uptime"))
        await stalled(sim, task)
        await sim.pve_exec("cycle")
        result = await asyncio.wait_for(task, 2)  # hang_seconds is 5: only the cycle ends it sooner
        return result.exit_status

    assert asyncio.run(scenario()) == 255
    assert sim.hanging_execs == 0


def test_an_exec_hang_gives_up_after_hang_seconds(clock: FakeClock) -> None:
    timing = SimTiming(1.0, 0.0, 0.0, 0.0, 0.01, hang_seconds=0.1, load_spike_seconds=1.0)
    sim = SimVM(timing, clock=clock)
    sim.inject("guest_hang")
    result = asyncio.run(asyncio.wait_for(sim.devvm_exec("true"), 2))
    assert result.exit_status == 255
    assert "closed by remote host" in result.stderr


def test_a_stalled_exec_carries_on_when_the_stall_is_cleared(sim: SimVM) -> None:
    async def scenario() -> str:
        sim.inject("network_partition")
        task = asyncio.create_task(sim.devvm_exec("hostname"))
        await stalled(sim, task)  # the partition holds the command
        sim.clear()
        return (await asyncio.wait_for(task, 2)).stdout

    assert asyncio.run(scenario()) == "devvm\n"
    assert sim.hanging_execs == 0


def test_memory_hog_slows_every_command(sim: SimVM) -> None:
    sim.inject("memory_hog")
    started = time.monotonic()
    result = asyncio.run(sim.devvm_exec("true"))
    assert result.exit_status == 0
    assert time.monotonic() - started >= FAST.slow_latency_seconds


def test_exec_on_a_stopped_vm_finds_the_connection_gone(sim: SimVM) -> None:
    sim.inject("vm_stopped")
    assert asyncio.run(sim.devvm_exec("true")).exit_status == 255


def test_the_timing_profiles_are_test_and_demo() -> None:
    test, demo = SimTiming.profile("test"), SimTiming.profile("demo")
    assert (test.boot_seconds, test.stop_seconds, test.qmp_timeout_seconds) == (1.0, 0.1, 0.2)
    assert (demo.boot_seconds, demo.slow_latency_seconds, demo.load_spike_seconds) == (20, 3, 60)
    assert test.hang_seconds == demo.hang_seconds == 3600
    with pytest.raises(ValueError, match="unknown timing profile 'fast'"):
        SimTiming.profile("fast")  # type: ignore[arg-type]


def test_guest_faults_cannot_be_injected_into_a_stopped_vm(sim: SimVM) -> None:
    sim.inject("vm_stopped")
    sim.inject("memory_hog")
    sim.inject("unit_failed")
    assert sim.state()["faults"] == ["vm_stopped"]
