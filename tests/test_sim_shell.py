"""The devvm's shell: what the tools print, and repairs that clear faults for real."""

from __future__ import annotations

import asyncio
import re

import pytest

from breakglass.sim.shell import ExecResult, Session
from breakglass.sim.vm import SimTiming, SimVM

FAST = SimTiming(boot_seconds=1.0, stop_seconds=0.0, command_latency_seconds=0.0,
                 slow_latency_seconds=0.0, qmp_timeout_seconds=0.01, hang_seconds=5.0,
                 load_spike_seconds=2.0)
GiB = 1024**3


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_795_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> SimVM:
    return SimVM(FAST, clock=clock)


def sh(sim: SimVM, command: str) -> ExecResult:
    return asyncio.run(sim.devvm_exec(command))


def out(sim: SimVM, command: str) -> str:
    result = sh(sim, command)
    assert result.exit_status == 0, result
    return result.stdout


def meminfo(sim: SimVM) -> dict[str, int]:
    return {k: int(v.split()[0]) for k, v in
            (line.split(":", 1) for line in out(sim, "cat /proc/meminfo").splitlines())}


def root_use(sim: SimVM) -> float:
    fields = out(sim, "df -P /").splitlines()[1].split()
    return int(fields[2]) / (int(fields[2]) + int(fields[3]))


def load1(sim: SimVM) -> float:
    return float(out(sim, "cat /proc/loadavg").split()[0])


# ---- the shell itself -------------------------------------------------------------------


def test_true_succeeds_silently(sim: SimVM) -> None:
    assert sh(sim, "true") == ExecResult("", "", 0)


def test_an_unknown_command_is_not_found_as_bash_says(sim: SimVM) -> None:
    assert sh(sim, "frobnicate --now") == ExecResult(
        "", "bash: line 1: frobnicate: command not found\n", 127)
    assert sh(sim, "sudo frobnicate") == ExecResult("", "sudo: frobnicate: command not found\n", 1)


def test_and_chains_stop_at_the_first_failure(sim: SimVM) -> None:
    assert sh(sim, "false && hostname") == ExecResult("", "", 1)
    assert sh(sim, "true && hostname") == ExecResult("devvm\n", "", 0)
    assert sh(sim, "nosuch && hostname").exit_status == 127


def test_semicolons_run_everything_and_report_the_last_status(sim: SimVM) -> None:
    assert sh(sim, "false; hostname") == ExecResult("devvm\n", "", 0)
    assert sh(sim, "hostname; false") == ExecResult("devvm\n", "", 1)
    assert sh(sim, "false || echo rescued; false && echo no; echo $?").stdout == "rescued\n1\n"


def test_pipes_into_tail_and_head_cut_lines(sim: SimVM) -> None:
    full = out(sim, "ps aux").splitlines()
    assert out(sim, "ps aux | head -n 3").splitlines() == full[:3]
    assert out(sim, "ps aux | head -4").splitlines() == full[:4]
    assert out(sim, "ps aux | tail -n 2").splitlines()[0] == full[-2]
    assert len(out(sim, "sudo dmesg | tail -5").splitlines()) == 5
    assert out(sim, "journalctl -u cron -n 50 --no-pager | tail -n 1").count("\n") == 1


def test_quoted_arguments_are_split_like_a_shell(sim: SimVM) -> None:
    assert out(sim, "echo 'a  b' \"c;d\" e\\ f") == "a  b c;d e f\n"
    assert sh(sim, "echo 'open").exit_status == 2


def test_redirections_merge_or_drop_streams(sim: SimVM) -> None:
    assert sh(sim, "dmesg 2>&1") == ExecResult(
        "dmesg: read kernel buffer failed: Operation not permitted\n", "", 1)
    assert sh(sim, "dmesg 2>/dev/null") == ExecResult("", "", 1)
    assert sh(sim, "hostname >/dev/null") == ExecResult("", "", 0)


def test_command_substitution_feeds_another_command(sim: SimVM) -> None:
    sim.inject("memory_hog")
    pid = out(sim, "pgrep -f leak.py").strip()
    assert pid.isdigit()
    assert sh(sim, "sudo kill -9 $(pgrep -f leak.py)").exit_status == 0
    assert "memory_hog" not in sim.state()["faults"]


def test_the_basic_facts_of_the_devvm(sim: SimVM) -> None:
    assert out(sim, "hostname") == "devvm\n"
    assert out(sim, "nproc") == "4\n"
    assert out(sim, "whoami") == "breakglass\n"
    assert out(sim, "sudo whoami") == "root\n"
    assert re.fullmatch(r" \d\d:\d\d:\d\d up 2 days, +\d+:\d\d,  1 user,  load average: "
                        r"0\.31, 0\.27, 0\.22\n", out(sim, "uptime"))


# ---- health, and numbers that agree --------------------------------------------------------


def test_a_healthy_devvm_looks_healthy(sim: SimVM) -> None:
    mem = meminfo(sim)
    assert 0.55 < mem["MemAvailable"] / mem["MemTotal"] < 0.65
    assert 0.03 < 1 - mem["SwapFree"] / mem["SwapTotal"] < 0.07
    assert 0.2 < load1(sim) < 0.5
    assert 0.40 < root_use(sim) < 0.42
    assert "41%" in out(sim, "df -h /")
    assert out(sim, "systemctl --failed --no-legend --plain") == ""
    assert "0 loaded units listed." in out(sim, "systemctl --failed")
    listed = out(sim, "systemctl list-units --no-legend --plain")
    for unit in ("ssh", "cron", "docker", "containerd", "postgresql", "nginx",
                 "qemu-guest-agent", "systemd-journald"):
        assert re.search(rf"^{unit}\.service +loaded +active +running ", listed, re.M), unit


@pytest.mark.parametrize("fault", [None, "memory_hog", "load_spike"])
def test_meminfo_free_swapon_and_ps_agree(sim: SimVM, fault: str | None) -> None:
    if fault:
        sim.inject(fault)
    mem = meminfo(sim)
    free = out(sim, "free").splitlines()
    total, used, free_kb, shared, cache, avail = map(int, free[1].split()[1:])
    assert (total, free_kb, shared, avail) == (mem["MemTotal"], mem["MemFree"], mem["Shmem"],
                                               mem["MemAvailable"])
    assert used == mem["MemTotal"] - mem["MemAvailable"]
    assert cache == mem["Buffers"] + mem["Cached"] + mem["SReclaimable"]
    swap_total, swap_used, swap_free = map(int, free[2].split()[1:])
    assert (swap_total, swap_free) == (mem["SwapTotal"], mem["SwapFree"])
    assert int(out(sim, "free -b").splitlines()[1].split()[1]) == total * 1024
    assert out(sim, "free -m").splitlines()[1].split()[1] == str(total // 1024)
    swapon = out(sim, "swapon --show").splitlines()
    assert swapon[0].split() == ["NAME", "TYPE", "SIZE", "USED", "PRIO"]
    shown_used = swapon[1].split()[3]
    assert abs(float(shown_used[:-1]) * 1024 ** "KMG".index(shown_used[-1]) - swap_used) \
        < 0.06 * swap_total
    # The session's own sshd halves and ps come and go with each exec; the rest is resident.
    rss = sum(int(line.split()[5]) for line in out(sim, "ps aux").splitlines()[1:]
              if not line.split(None, 10)[10].startswith(("sshd: breakglass", "ps ")))
    assert rss == mem["AnonPages"]


def test_df_and_du_agree_on_the_root(sim: SimVM) -> None:
    sim.inject("disk_full")
    used_kb = int(out(sim, "df -P /").splitlines()[1].split()[2])
    du_kb = int(out(sim, "sudo du -s /").split()[0])
    assert abs(used_kb - du_kb) <= 1
    result = sh(sim, "du -s /")
    assert "du: cannot read directory '/root': Permission denied" in result.stderr
    assert int(result.stdout.split()[0]) < du_kb


# ---- unit_failed ------------------------------------------------------------------------


def test_a_failed_unit_shows_and_a_sudo_restart_fixes_it(sim: SimVM) -> None:
    sim.inject("unit_failed")
    failed = out(sim, "systemctl --failed --no-legend --plain")
    assert failed.startswith("postgresql.service loaded failed failed ")
    assert out(sim, "systemctl --failed --no-legend").startswith("● postgresql.service")
    status = sh(sim, "systemctl status postgresql")
    assert status.exit_status == 3
    assert "Active: failed (Result: exit-code)" in status.stdout
    assert "could not map anonymous shared memory" in status.stdout
    journal = out(sim, "journalctl -u postgresql.service -n 3 --no-pager")
    assert len(journal.splitlines()) == 3
    assert "Failed with result 'exit-code'" in journal
    assert sh(sim, "systemctl is-active postgresql") == ExecResult("failed\n", "", 3)

    denied = sh(sim, "systemctl restart postgresql")
    assert denied.exit_status == 1
    assert denied.stderr.startswith("Failed to restart postgresql.service: Access denied\n")
    assert "unit_failed" in sim.state()["faults"]

    assert sh(sim, "sudo systemctl restart postgresql") == ExecResult("", "", 0)
    assert sim.state()["faults"] == []
    assert sh(sim, "systemctl is-active postgresql.service") == ExecResult("active\n", "", 0)
    assert out(sim, "systemctl --failed --no-legend --plain") == ""


def test_unknown_units_are_reported_like_systemctl(sim: SimVM) -> None:
    assert sh(sim, "systemctl status nosuch") == ExecResult(
        "", "Unit nosuch.service could not be found.\n", 4)
    assert sh(sim, "sudo systemctl restart nosuch").exit_status == 5


# ---- disk_full ------------------------------------------------------------------------


def test_a_full_disk_shows_everywhere(sim: SimVM) -> None:
    sim.inject("disk_full")
    assert root_use(sim) >= 0.985
    assert out(sim, "df -h /").splitlines()[1].split()[4] in ("99%", "100%")
    assert "No space left on device" in out(sim, "sudo dmesg -T")
    assert "No space left on device" in out(sim, "journalctl -n 100 --no-pager")
    usage = out(sim, "journalctl --disk-usage")
    assert re.fullmatch(r"Archived and active journals take up 6\.\dG in the file system\.\n",
                        usage)


def test_a_journal_vacuum_needs_root_and_then_frees_the_disk(sim: SimVM) -> None:
    sim.inject("disk_full")
    before = root_use(sim)
    attempt = sh(sim, "journalctl --vacuum-size=200M")
    assert "Permission denied" in attempt.stderr
    assert root_use(sim) == before

    done = sh(sim, "sudo journalctl --vacuum-size=200M")
    assert done.exit_status == 0
    assert re.search(r"Vacuuming done, freed 6\.\dG of archived journals from "
                     r"/var/log/journal/[0-9a-f]{32}\.", done.stderr)
    assert root_use(sim) < 0.90
    assert sim.state()["faults"] == []
    assert out(sim, "journalctl --disk-usage").split()[6] == "176.0M"


def test_removing_the_cleanup_folder_frees_its_two_gigabytes(sim: SimVM) -> None:
    sim.inject("disk_full")
    du = out(sim, "du -sh /var/tmp/breakglass-cleanup")
    assert du == "2.1G\t/var/tmp/breakglass-cleanup\n"
    before = root_use(sim)
    assert sh(sim, "rm -rf /var/tmp/breakglass-cleanup/*") == ExecResult("", "", 0)
    assert before - root_use(sim) > 2 * GiB / (64 * GiB)
    assert out(sim, "du -sh /var/tmp/breakglass-cleanup") == "4.0K\t/var/tmp/breakglass-cleanup\n"
    assert "disk_full" in sim.state()["faults"]


def test_rm_outside_the_cleanup_folder_needs_root_and_never_takes_the_root(sim: SimVM) -> None:
    sim.inject("disk_full")
    before = root_use(sim)
    assert sh(sim, "rm -rf /var/log/journal") == ExecResult(
        "", "rm: cannot remove '/var/log/journal': Permission denied\n", 1)
    refused = sh(sim, "sudo rm -rf /")
    assert refused.exit_status == 1
    assert "dangerous to operate recursively on '/'" in refused.stderr
    assert sh(sim, "rm /var/tmp/breakglass-cleanup").stderr.endswith("Is a directory\n")
    assert root_use(sim) == before


# ---- memory_hog ---------------------------------------------------------------------------


def test_a_memory_hog_starves_the_vm(sim: SimVM) -> None:
    sim.inject("memory_hog")
    mem = meminfo(sim)
    assert mem["MemAvailable"] / mem["MemTotal"] < 0.02
    assert 1 - mem["SwapFree"] / mem["SwapTotal"] > 0.96
    assert 10 < load1(sim) < 15
    top = out(sim, "ps aux --sort=-rss").splitlines()[1].split()
    assert (top[0], top[10:]) == ("viktor", ["python3", "/opt/batch/leak.py"])
    assert float(top[3]) > 50
    assert out(sim, "ps aux --sort=-%cpu").splitlines()[1].split()[1] == top[1]
    assert "Out of memory: Killed process" in out(sim, "sudo dmesg")
    assert "active (running)" in out(sim, "systemctl status leaky-batch")


def test_killing_the_hog_needs_root_and_frees_memory(sim: SimVM) -> None:
    sim.inject("memory_hog")
    pid = out(sim, "ps aux --sort=-rss").splitlines()[1].split()[1]
    assert sh(sim, f"kill -9 {pid}") == ExecResult(
        "", f"bash: line 1: kill: ({pid}) - Operation not permitted\n", 1)
    assert "memory_hog" in sim.state()["faults"]
    assert sh(sim, f"sudo kill -9 {pid}") == ExecResult("", "", 0)
    assert sim.state()["faults"] == []
    mem = meminfo(sim)
    assert mem["MemAvailable"] / mem["MemTotal"] > 0.5
    assert 1 - mem["SwapFree"] / mem["SwapTotal"] < 0.1
    assert load1(sim) < 1
    assert "inactive (dead)" in sh(sim, "systemctl status leaky-batch.service").stdout
    assert out(sim, "systemctl --failed --no-legend --plain") == ""
    assert sh(sim, f"sudo kill -9 {pid}") == ExecResult(
        "", f"kill: ({pid}): No such process\n", 1)


def test_stopping_the_hogs_unit_frees_memory_too(sim: SimVM) -> None:
    sim.inject("memory_hog")
    assert sh(sim, "systemctl stop leaky-batch").exit_status == 1
    assert sh(sim, "sudo systemctl stop leaky-batch") == ExecResult("", "", 0)
    assert sim.state()["faults"] == []
    assert "python3 /opt/batch/leak.py" not in out(sim, "ps aux")


# ---- load_spike, io_stall, sshd -------------------------------------------------------------


def test_a_load_spike_passes_by_itself(sim: SimVM, clock: FakeClock) -> None:
    sim.inject("load_spike")
    assert load1(sim) > 35
    clock.now += FAST.load_spike_seconds + 0.1
    assert load1(sim) < 1
    assert sim.state()["faults"] == []


def test_an_io_stall_leaves_hung_task_reports_in_the_kernel_log(sim: SimVM,
                                                              clock: FakeClock) -> None:
    sim.inject("io_stall")
    # No exec gets through a stall; read the guest's kernel log the way dmesg would.
    dmesg = Session(sim.guest, clock()).run("sudo dmesg").stdout
    assert re.search(r"INFO: task jbd2/sda1-8:\d+ blocked for more than 120 seconds\.", dmesg)


def test_stopping_sshd_makes_the_port_refuse(sim: SimVM) -> None:
    assert sh(sim, "sudo systemctl stop ssh") == ExecResult("", "", 0)
    assert sim.devvm_login() == "refuse"
    assert "sshd_dead" in sim.state()["faults"]


# ---- privileges --------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "error"), [
    ("dmesg", "dmesg: read kernel buffer failed: Operation not permitted\n"),
    ("systemctl restart nginx", "Failed to restart nginx.service: Access denied\n"),
    ("systemctl stop docker.service", "Failed to stop docker.service: Access denied\n"),
    ("kill 1", "bash: line 1: kill: (1) - Operation not permitted\n"),
])
def test_privileged_actions_fail_without_sudo(sim: SimVM, command: str, error: str) -> None:
    result = sh(sim, command)
    assert result.exit_status == 1
    assert result.stderr.startswith(error)
    assert sh(sim, f"sudo {command}").exit_status == 0


# ---- robustness --------------------------------------------------------------------------

_WORDS = ["ls", "df", "-h", "du", "-sh", "/", "/var/tmp/breakglass-cleanup/*", "systemctl",
          "status", "--failed", "journalctl", "-u", "-n", "5", "--vacuum-size=1K", "sudo", "kill",
          "-9", "1", "ps", "aux", "--sort=-rss", "free", "-m", "|", "&&", "||", ";", "tail", "-3",
          "'", '"', "$(", ")", "2>&1", ">", "grep", "-v", "cat", "/proc/meminfo", "rm", "-rf",
          "top", "-bn1", "pgrep", "-f", "bash", "-c", "dmesg", "-T", "--since", "today", "-p",
          "err", "-b", "-1", "restart", "stop", "leaky-batch", "postgresql", "list-units", "\n"]


def test_no_command_line_makes_the_shell_raise() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from breakglass.sim.guest import Guest

    guest = Guest.healthy(1_795_000_000.0)

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.sampled_from(_WORDS), max_size=8), st.text(max_size=12))
    def check(words: list[str], junk: str) -> None:
        for line in (" ".join(words), junk, " ".join(words) + junk):
            result = Session(guest, 1_795_000_100.0).run(line)
            assert isinstance(result.stdout, str)
            assert isinstance(result.exit_status, int)

    check()


@pytest.mark.parametrize(("command", "error"), [
    ("journalctl -n abc", "Failed to parse lines 'abc'\n"),
    ("journalctl -p loud", "Unknown log level loud\n"),
    ("journalctl --vacuum-size=lots", "Failed to parse size value: lots\n"),
    ("du --max-depth=x /", "du: invalid maximum depth ‘x’\n"),
    ("ps aux --sort=-vibes", "error: unknown sort specifier\n"),
])
def test_bad_arguments_get_the_tools_own_complaint(sim: SimVM, command: str, error: str) -> None:
    result = sh(sim, command)
    assert result.exit_status != 0
    assert result.stderr.startswith(error)


def test_sizes_are_printed_the_way_each_tool_rounds_them() -> None:
    from breakglass.sim import fmt

    assert [fmt.human_ceil(n) for n in (0, 4096, 9.95 * GiB, 1023.5 * 1024**2, 62.7 * GiB)] == [
        "0", "4.0K", "10G", "1.0G", "63G"]
    assert [fmt.human_free(n) for n in (15.6 * GiB, 6.04 * GiB, 182 * 1024**2)] == [
        "15Gi", "6.0Gi", "182Mi"]
    assert [fmt.human_util(n) for n in (4 * GiB, 204.8 * 1024**2)] == ["4G", "204.8M"]
    assert fmt.parse_size("200M") == 200 * 1024**2
    assert fmt.parse_size("nope") is None
    assert fmt.ago(2 * 86_400 + 5) == "2 days ago"
    assert fmt.ago(4740) == "1h 19min ago"


def test_a_disk_filled_again_after_a_repair_is_full_again_not_overfull(sim: SimVM) -> None:
    sim.inject("disk_full")
    first = root_use(sim)
    sh(sim, "sudo journalctl --vacuum-size=200M")
    sim.inject("disk_full")
    assert "disk_full" in sim.state()["faults"]
    assert abs(root_use(sim) - first) < 0.005
