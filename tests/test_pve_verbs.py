"""The Proxmox forced command, run for real against a fake `qm` on PATH."""

from __future__ import annotations

import asyncio
import fcntl
import importlib.machinery
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "pve" / "breakglass-verbs"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pve"
REJECTION = (
    "breakglass-verbs: rejected: only status, forensics, reset, stop, start, cycle are accepted"
)
# Short timeouts so a wedged fake qm costs the test about a second, yet long enough
# for a fake qm (a Python start-up) that answers on a busy machine.
FAST = {
    "BREAKGLASS_VERBS_QMP_TIMEOUT": "1.0",
    "BREAKGLASS_VERBS_AGENT_TIMEOUT": "1.0",
    "BREAKGLASS_VERBS_QM_TIMEOUT": "5",
    "BREAKGLASS_VERBS_LIST_TIMEOUT": "3",
    "BREAKGLASS_VERBS_STOP_TIMEOUT": "5",
    "BREAKGLASS_VERBS_START_TIMEOUT": "5",
    "BREAKGLASS_VERBS_EXIT_TIMEOUT": "0.5",
}


class Host:
    """A Proxmox host in a temp folder: a fake qm on PATH, a log dir, a call record."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        qm = self.bin / "qm"
        qm.write_text(
            f"#!{sys.executable}\n" + (FIXTURES / "fake_qm.py").read_text(encoding="utf-8"),
            encoding="utf-8",
        )
        qm.chmod(qm.stat().st_mode | stat.S_IXUSR)
        # The same fake answers as ha-manager when called by that name.
        (self.bin / "ha-manager").symlink_to(qm)
        self.log_dir = root / "log"
        self.record = root / "qm-calls.jsonl"
        self.proc = root / "proc"
        self.ha_resources = root / "ha-resources.cfg"

    def env(self, command: str | None, scenario: str = "running") -> dict[str, str]:
        """The environment sshd would give the forced command, plus the fake's settings."""
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "BREAKGLASS_VERBS_LOG_DIR": str(self.log_dir),
            "FAKE_QM_RECORD": str(self.record),
            "FAKE_QM_SCENARIO": scenario,
            "SSH_CONNECTION": "10.1.2.3 50000 10.0.0.5 22",
            "BREAKGLASS_VERBS_PROC": str(self.proc),
            "BREAKGLASS_VERBS_HA_RESOURCES": str(self.ha_resources),
            **FAST,
        }
        if command is not None:
            env["SSH_ORIGINAL_COMMAND"] = command
        return env

    def run(
        self,
        command: str | None,
        *,
        scenario: str = "running",
        args: tuple[str, ...] = ("102",),
    ) -> subprocess.CompletedProcess[str]:
        """Run the forced command as sshd would, with SSH_ORIGINAL_COMMAND set to command."""
        return subprocess.run(
            [sys.executable, "-I", str(SCRIPT), *args],
            env=self.env(command, scenario),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def calls(self) -> list[dict[str, Any]]:
        """Every qm call so far, in order."""
        if not self.record.exists():
            return []
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return sorted((json.loads(line) for line in lines), key=lambda c: c["at"])

    def argvs(self) -> list[list[str]]:
        """The argv of every qm call so far."""
        return [c["argv"] for c in self.calls()]

    def transitions(self) -> list[str]:
        """Every power state change the fake VM went through."""
        path = Path(str(self.record) + ".transitions")
        return path.read_text(encoding="utf-8").split() if path.exists() else []

    def log(self) -> list[dict[str, Any]]:
        """The forced command's own verbs.log lines."""
        path = self.log_dir / "verbs.log"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """A fresh fake Proxmox host."""
    return Host(tmp_path)


def load_script() -> ModuleType:
    """Import the extensionless script as a module, for its pure parsers."""
    loader = importlib.machinery.SourceFileLoader("breakglass_verbs", str(SCRIPT))
    spec = importlib.util.spec_from_loader("breakglass_verbs", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def fixture(name: str) -> dict[str, Any]:
    """One of the shared JSON fixtures."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def assert_same_shape(got: Any, want: Any, where: str = "") -> None:
    """Same keys at the top and in qmp/guest_agent; same JSON type per value, or null."""
    if isinstance(want, dict) and where in ("", "qmp", "guest_agent"):
        assert isinstance(got, dict), f"{where or 'top'}: expected an object, got {got!r}"
        assert set(got) == set(want), f"{where or 'top'}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_same_shape(got[key], want[key], f"{where}.{key}" if where else key)
        return
    if got is None or want is None:
        return
    kinds = (bool, int | float, str, dict, list)
    got_kind = next(k for k in kinds if isinstance(got, k))
    want_kind = next(k for k in kinds if isinstance(want, k))
    assert got_kind == want_kind, f"{where}: {got!r} is not the same JSON type as {want!r}"


# --- status and forensics print the watchdog's JSON ---------------------------------------


@pytest.mark.parametrize(
    ("scenario", "fixture_name"),
    [
        ("running", "status_running.json"),
        ("stopped", "status_stopped.json"),
        ("paused", "status_paused.json"),
        ("qmp_timeout", "status_io_stall.json"),
    ],
)
def test_status_prints_the_shared_fixtures_shape_and_the_watchdog_parses_both_alike(
    host: Host, scenario: str, fixture_name: str
) -> None:
    # Imported here so a missing parser fails this test loudly rather than skipping it.
    from breakglass.remote import parse_status

    proc = host.run("status", scenario=scenario)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = fixture(fixture_name)
    assert_same_shape(got, want)
    ours, theirs = parse_status(proc.stdout), parse_status(json.dumps(want))
    for field in ("vm_status", "qmp_ok", "qmp_status", "guest_agent_ok"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert (ours.uptime_seconds is None) == (theirs.uptime_seconds is None)


@pytest.mark.parametrize(
    ("fault", "fixture_name"),
    [
        (None, "status_running.json"),
        ("vm_stopped", "status_stopped.json"),
        ("vm_paused", "status_paused.json"),
        ("io_stall", "status_io_stall.json"),
    ],
)
def test_the_simulated_host_prints_the_same_shape_as_the_real_script(
    fault: str | None, fixture_name: str
) -> None:
    # The simulator stands in for this script in every other test; it must speak alike.
    from breakglass.remote import parse_status
    from breakglass.sim.vm import SimTiming, SimVM

    vm = SimVM(SimTiming.profile("test"))
    if fault:
        vm.inject(fault)
    result = asyncio.run(vm.pve_exec("status"))
    assert result.exit_status == 0, result.stderr
    want = fixture(fixture_name)
    assert_same_shape(json.loads(result.stdout), want)
    ours, theirs = parse_status(result.stdout), parse_status(json.dumps(want))
    for field in ("vm_status", "qmp_ok", "qmp_status", "guest_agent_ok"):
        assert getattr(ours, field) == getattr(theirs, field), field


def test_the_simulated_forensics_and_power_verbs_match_the_fixtures() -> None:
    from breakglass.sim.vm import SimTiming, SimVM

    vm = SimVM(SimTiming.profile("test"))
    forensics = asyncio.run(vm.pve_exec("forensics"))
    assert_same_shape(json.loads(forensics.stdout), fixture("forensics_running.json"))
    cycled = asyncio.run(vm.pve_exec("cycle"))
    assert_same_shape(json.loads(cycled.stdout), fixture("verb_cycle.json"))


def test_status_of_a_running_vm_reads_qm_status_verbose(host: Host) -> None:
    proc = host.run("status")
    got = json.loads(proc.stdout)
    assert got["vmid"] == 102
    assert got["status"] == "running"
    assert got["pid"] == 4242
    assert got["uptime_seconds"] == 1234.0
    assert got["qmp"] == {"ok": True, "status": "running", "error": None}
    assert got["guest_agent"] == {"ok": True, "error": None}
    assert got["captured_at"].endswith("Z")
    assert sorted(map(tuple, host.argvs())) == [
        ("guest", "cmd", "102", "ping"),
        ("status", "102", "--verbose"),
    ]


def test_a_qmp_timeout_is_reported_as_qmp_unresponsive_within_the_timeout(host: Host) -> None:
    started = time.monotonic()
    proc = host.run("status", scenario="qmp_timeout")
    elapsed = time.monotonic() - started
    got = json.loads(proc.stdout)
    assert proc.returncode == 0
    # QMP and the guest agent are asked side by side, so one timeout bounds both.
    assert elapsed < 4.0
    assert got["status"] == "running"
    assert got["pid"] == 4242
    assert got["qmp"] == {
        "ok": False,
        "status": None,
        "error": "QMP query-status timed out after 1s",
    }
    assert got["guest_agent"] == {"ok": False, "error": "guest agent not responding"}
    assert ["list"] in host.argvs()


def test_a_status_answers_within_the_qmp_and_list_timeouts_when_qm_list_hangs_too(host: Host) -> None:
    env = {**host.env("status", "qmp_timeout"), "FAKE_QM_LIST_SECONDS": "60",
           "BREAKGLASS_VERBS_LIST_TIMEOUT": "1.0"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-I", str(SCRIPT), "102"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    elapsed = time.monotonic() - started
    got = json.loads(proc.stdout)
    assert proc.returncode == 0
    # QMP_TIMEOUT (1 s here) then LIST_TIMEOUT (1 s here), not the 5 s of the other qm calls.
    assert elapsed < 4.0
    assert (got["status"], got["pid"], got["uptime_seconds"]) == ("unknown", None, None)
    assert got["qmp"]["ok"] is False
    assert got["qmp"]["error"] == "QMP query-status timed out after 1s"


def test_the_longest_status_fits_the_watchdogs_status_timeout_and_the_simulators_figure() -> None:
    from breakglass.config import ProbeSettings
    from breakglass.sim.vm import REAL_HOST_WEDGED_STATUS_SECONDS

    script = load_script()
    # QMP and the guest agent side by side, then `qm list` when QMP timed out.
    longest = max(script.QMP_TIMEOUT, script.AGENT_TIMEOUT) + script.LIST_TIMEOUT
    assert longest == REAL_HOST_WEDGED_STATUS_SECONDS
    # A second for sshd, the interpreter's start-up and the answer's way back.
    settings = ProbeSettings()
    assert longest + 1.0 <= settings.status_timeout_seconds <= settings.round_timeout_seconds


def test_a_dead_guest_agent_is_reported_in_qms_own_words(host: Host) -> None:
    got = json.loads(host.run("status", scenario="agent_dead").stdout)
    assert got["status"] == "running"
    assert got["qmp"]["ok"] is True
    assert got["guest_agent"] == {"ok": False, "error": "QEMU guest agent is not running"}


def test_a_vm_paused_on_an_io_error_shows_as_paused(host: Host) -> None:
    got = json.loads(host.run("status", scenario="paused").stdout)
    assert got["status"] == "paused"
    assert got["qmp"] == {"ok": True, "status": "io-error", "error": None}
    assert got["guest_agent"]["ok"] is False


def test_forensics_adds_config_pending_blockstats_and_the_raw_qmp_answer(host: Host) -> None:
    proc = host.run("forensics")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert_same_shape(got, fixture("forensics_running.json"))
    assert got["config"]["cores"] == 4
    assert got["config"]["scsi0"] == "local-lvm:vm-102-disk-0,iothread=1,size=32G"
    assert got["pending"] == {}
    assert got["blockstats"]["scsi0"]["rd_operations"] == 5321
    assert got["qmp_raw"]["ballooninfo"] == {"actual": 8589934592, "max_mem": 8589934592}
    assert not any(c[0] in ("reset", "stop", "start") for c in host.argvs())
    assert not list(host.log_dir.glob("forensics-*.json")), "read-only verbs write no capture"


def test_an_unknown_vm_makes_status_fail_with_qms_message(host: Host) -> None:
    proc = host.run("status", args=("999",))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "999.conf' does not exist" in proc.stderr


# --- mutating verbs: forensics first, then a fixed qm argv ----------------------------------


@pytest.mark.parametrize(
    ("verb", "scenario", "power_calls"),
    [
        ("reset", "running", [["reset", "102"]]),
        ("stop", "running", [["stop", "102", "--timeout", "60"]]),
        ("start", "stopped", [["start", "102"]]),
        ("cycle", "qmp_timeout", [["stop", "102", "--timeout", "60"], ["start", "102"]]),
    ],
)
def test_each_power_verb_captures_forensics_before_its_fixed_qm_call(
    host: Host, verb: str, scenario: str, power_calls: list[list[str]]
) -> None:
    proc = host.run(verb, scenario=scenario)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert_same_shape(result, fixture("verb_cycle.json"))
    assert result["verb"] == verb
    assert result["ok"] is True
    assert result["forensics"] == "captured"
    calls = host.calls()
    power = [c for c in calls if c["argv"][0] in ("reset", "stop", "start")]
    assert [c["argv"] for c in power] == power_calls
    # Every look came before the capture was on disk; every power call after it.
    assert all(c["forensics_files"] == 0 for c in calls if c not in power)
    assert all(c["forensics_files"] == 1 for c in power)
    (capture,) = host.log_dir.glob("forensics-102-*.json")
    saved = json.loads(capture.read_text(encoding="utf-8"))
    assert saved["verb"] == verb
    assert {"status", "qmp", "guest_agent", "config", "pending", "blockstats"} <= set(saved)
    assert str(capture) in result["message"]
    assert host.log()[-1]["verb"] == verb


def test_cycle_does_not_start_when_the_stop_failed(host: Host, tmp_path: Path) -> None:
    qm = host.bin / "qm"
    text = qm.read_text(encoding="utf-8").replace(
        '    if cmd == "stop":\n', '    if cmd == "stop":\n        return 255\n'
    )
    qm.write_text(text, encoding="utf-8")
    proc = host.run("cycle")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert result["ok"] is False
    assert "not started again" in result["message"]
    assert [a for a in host.argvs() if a[0] in ("stop", "start")] == [
        ["stop", "102", "--timeout", "60"]
    ]


def test_a_client_that_hangs_up_mid_cycle_still_gets_the_vm_started(host: Host) -> None:
    env = {**host.env("cycle"), "FAKE_QM_STOP_SECONDS": "0.5"}
    proc = subprocess.Popen(
        [sys.executable, "-I", str(SCRIPT), "102"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while not any(a[0] == "stop" for a in host.argvs()):
        assert time.monotonic() < deadline, "qm stop was never called"
        time.sleep(0.02)
    # What sshd does when the client goes away: hang up, and the pipe's reader is gone.
    proc.send_signal(signal.SIGHUP)
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read().decode()
    proc.stderr.close()
    assert [a[0] for a in host.argvs() if a[0] in ("stop", "start")] == ["stop", "start"]
    assert host.log()[-1]["ok"] is True


def test_start_on_a_running_vm_reports_qms_refusal(host: Host) -> None:
    proc = host.run("start")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert result["ok"] is False
    assert "VM 102 already running" in result["message"]
    assert result["forensics"] == "captured"


def test_no_power_call_is_made_when_forensics_cannot_be_written(host: Host) -> None:
    host.log_dir.write_text("a file where the log folder should be", encoding="utf-8")
    proc = host.run("reset")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert result["ok"] is False
    assert result["forensics"] == "failed"
    assert not any(a[0] == "reset" for a in host.argvs())


def test_a_second_power_verb_is_refused_while_one_is_running(host: Host) -> None:
    host.log_dir.mkdir()
    with open(host.log_dir / ".lock-102", "w", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = host.run("cycle")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert "another power verb" in result["message"]
    assert host.argvs() == []


# --- three behaviours of a real Proxmox host ------------------------------------------------


def test_a_qmpstatus_that_qm_copied_from_the_pid_is_not_a_healthy_qmp(host: Host) -> None:
    # qemu-server's vmstatus sets qmpstatus = status when QMP gave no answer in 2 s.
    from breakglass.remote import parse_status

    proc = host.run("status", scenario="qmp_fallback")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["status"] == "running"
    assert got["qmp"]["ok"] is False
    assert got["qmp"]["status"] is None
    assert "from the QEMU pid alone" in got["qmp"]["error"]
    assert parse_status(proc.stdout).qmp_ok is False
    forensics = json.loads(host.run("forensics", scenario="qmp_fallback").stdout)
    assert forensics["qmp"]["ok"] is False
    assert forensics["blockstats"] == {}


def test_a_qemu_stuck_in_io_that_survives_qm_stop_is_reported_and_not_started(host: Host) -> None:
    proc = host.run("cycle", scenario="stuck_d")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert result["ok"] is False
    assert "QEMU pid 4242 is still there" in result["message"]
    assert "state D (uninterruptible I/O wait)" in result["message"]
    assert "not starting it again" in result["message"]
    assert [a[0] for a in host.argvs() if a[0] in ("stop", "start")] == ["stop"]


def test_a_plain_stop_also_fails_while_the_qemu_process_remains(host: Host) -> None:
    result = json.loads(host.run("stop", scenario="stuck_d").stdout)
    assert result["ok"] is False
    assert "pid 4242" in result["message"]


def test_cycle_waits_for_the_qemu_process_to_go_before_starting(host: Host) -> None:
    proc = host.run("cycle")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (host.proc / "4242").exists()
    assert host.transitions() == ["stopped", "running"]


def test_an_ha_managed_vm_is_cycled_through_ha_manager_waiting_for_each_state(host: Host) -> None:
    host.ha_resources.write_text("vm: 102\n\tstate started\n\tmax_restart 1\n", encoding="utf-8")
    proc = host.run("cycle", scenario="ha")
    result = json.loads(proc.stdout)
    assert proc.returncode == 0, result
    assert result["ok"] is True
    assert "through HA" in result["message"]
    argvs = host.argvs()
    assert [a for a in argvs if a[0] == "ha-manager"] == [
        ["ha-manager", "set", "vm:102", "--state", "stopped"],
        ["ha-manager", "set", "vm:102", "--state", "started"],
    ]
    assert not any(a[0] in ("stop", "start") for a in argvs), "qm stop/start only queue under HA"
    # The VM really went down and came back, in that order.
    assert host.transitions() == ["stopped", "running"]


def test_an_ha_stack_that_does_not_act_in_time_fails_the_verb_and_says_so(host: Host) -> None:
    host.ha_resources.write_text("vm: 102\n", encoding="utf-8")
    env = {**host.env("cycle", "ha"), "FAKE_HA_SECONDS": "60", "BREAKGLASS_VERBS_STOP_TIMEOUT": "0.5"}
    proc = subprocess.run([sys.executable, "-I", str(SCRIPT), "102"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    result = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert "HA did not make VM 102 stopped within 0.5s" in result["message"]
    assert "VM not started again" in result["message"]
    assert [a for a in host.argvs() if a[0] == "ha-manager"] == [
        ["ha-manager", "set", "vm:102", "--state", "stopped"]
    ]


def test_another_vm_in_the_ha_resources_does_not_make_this_one_ha_managed(host: Host) -> None:
    host.ha_resources.write_text("vm: 1020\n\tstate started\nvm: 103\n", encoding="utf-8")
    assert json.loads(host.run("cycle").stdout)["ok"] is True
    assert not any(a[0] == "ha-manager" for a in host.argvs())


# --- rejections: nothing but the six bare verbs ---------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "status; reboot",
        "$(id)",
        "`id`",
        "status\nreboot",
        "status ",
        " status",
        "STATUS",
        "cycle 103",
        "--skiplock",
        "reset --skiplock",
        "qm stop 102",
        "",
        "a" * 10240,
        "status" * 2000,
        "stätus",
        "сycle",  # a Cyrillic "с" in front
    ],
    ids=lambda c: repr(c)[:24],
)
def test_anything_but_a_bare_verb_is_rejected_without_calling_qm(host: Host, command: str) -> None:
    proc = host.run(command)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip() == REJECTION
    assert host.argvs() == []
    (entry,) = host.log()
    assert "rejected" in entry
    assert len(entry["rejected"]) <= 210
    assert entry["client"] == "10.1.2.3"


def test_a_missing_ssh_original_command_is_rejected(host: Host) -> None:
    proc = host.run(None)
    assert proc.returncode == 1
    assert proc.stderr.strip() == REJECTION
    assert host.argvs() == []
    assert host.log()[0]["rejected"] == "(none)"


@pytest.mark.parametrize(
    "args",
    [(), ("abc",), ("102", "103"), ("102 103",), ("0102",), ("99",), ("-1",), ("1e3",), ("",)],
)
def test_a_wrong_or_missing_vm_id_argument_is_a_usage_error(
    host: Host, args: tuple[str, ...]
) -> None:
    proc = host.run("status", args=args)
    assert proc.returncode == 2
    assert "usage: breakglass-verbs VMID" in proc.stderr
    assert host.argvs() == []


# --- the script itself ----------------------------------------------------------------------


def test_the_script_is_executable_and_runs_under_the_system_python(host: Host) -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text(encoding="utf-8").startswith("#!/usr/bin/python3 -I\n")
    system_python = shutil.which("python3", path="/usr/bin")
    if system_python is None:
        pytest.fail("/usr/bin/python3 is missing; the Proxmox host has one, so should CI")
    env = {"SSH_ORIGINAL_COMMAND": "status", "PATH": f"{host.bin}:/usr/bin:/bin",
           "BREAKGLASS_VERBS_LOG_DIR": str(host.log_dir), "FAKE_QM_RECORD": str(host.record)}
    proc = subprocess.run([str(SCRIPT), "102"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "running"


def test_it_imports_nothing_outside_the_standard_library() -> None:
    module = load_script()
    source = SCRIPT.read_text(encoding="utf-8")
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from ")) and "__future__" not in line
    }
    assert imported, "the import scan found nothing"
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert module.VERBS == ("status", "forensics", "reset", "stop", "start", "cycle")


def test_qm_pending_is_parsed_into_the_changes_waiting_for_the_next_start() -> None:
    module = load_script()
    text = "cur cores: 4\ncur memory: 8192\nnew memory: 16384\ndel balloon: 2048\n"
    assert module.parse_pending(text) == {
        "memory": {"current": "8192", "new": "16384"},
        "balloon": {"current": "2048", "delete": True},
    }
    assert module.parse_pending("cur cores: 4\n") == {}


def test_qm_list_finds_the_vm_by_id_and_not_by_a_name_that_looks_like_one() -> None:
    module = load_script()
    text = (
        "      VMID NAME                 STATUS     MEM(MB)    BOOTDISK(GB) PID\n"
        "       101 102                  stopped    2048              16.00 0\n"
        "       102 devvm                running    8192              32.00 4242\n"
        "       104 VM 104               running    1024               8.00 777\n"
    )
    assert module.parse_list(text, "102") == ("running", 4242)
    assert module.parse_list(text, "101") == ("stopped", None)
    assert module.parse_list(text, "104") == ("running", 777)
    assert module.parse_list(text, "103") == (None, None)


def test_qm_status_verbose_nesting_by_tabs_or_spaces_becomes_nested_dicts() -> None:
    module = load_script()
    tabs = "blockstat:\n\tscsi0:\n\t\trd_operations: 5\nstatus: running\nuptime: 7\n"
    spaces = "blockstat:\n  scsi0:\n    rd_operations: 5\nstatus: running\nuptime: 7\n"
    want = {"blockstat": {"scsi0": {"rd_operations": 5}}, "status": "running", "uptime": 7}
    assert module.parse_tree(tabs) == want
    assert module.parse_tree(spaces) == want
