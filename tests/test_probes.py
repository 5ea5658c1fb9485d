"""Probe rounds: readings from guest output, their JSON form, the table, and rounds over real SSH."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from readings_support import GiB
from readings_support import healthy_readings as make_readings

from breakglass.config import LogSettings
from breakglass.log import configure_logging
from breakglass.watchdog.probes import Readings, format_table, probe_target, readings_from_output

FIXTURES = Path(__file__).parent / "fixtures"


def healthy_readings(**changes: Any) -> Readings:
    fields: dict[str, Any] = {
        "at": 1_790_000_000.0, "duration_seconds": 0.2, "ssh_login_seconds": 0.05,
        "mem_available_bytes": 6 * GiB, "swap_total_bytes": 2 * GiB, "disk_used_ratio": 0.44,
        "uptime_seconds": 1234.5,
    }
    return make_readings(**{**fields, **changes})


def test_it_turns_sick_guest_output_into_readings():
    out = readings_from_output((FIXTURES / "probe_sick.txt").read_text(), complete=True)
    assert (out["load1"], out["load5"], out["load15"], out["ncpu"]) == (14.02, 11.87, 9.40, 2)
    assert out["mem_available_bytes"] == 82044 * 1024
    assert out["swap_used_bytes"] == (1048572 - 10240) * 1024
    assert out["disk_used_ratio"] == 1.0
    assert out["failed_units"] == ("postgresql.service", "nginx.service")


def test_it_reports_no_failed_units_for_a_healthy_guest():
    out = readings_from_output((FIXTURES / "probe_healthy.txt").read_text(), complete=True)
    assert out["failed_units"] == ()
    assert out["disk_used_ratio"] == pytest.approx(0.4341, abs=1e-4)


def test_it_does_not_claim_no_failed_units_when_the_chain_stopped_early():
    out = readings_from_output("0.1 0.2 0.3 1/100 42\n4\n", complete=False)
    assert out["load1"] == 0.1
    assert out["ncpu"] == 4
    assert out["failed_units"] is None
    assert out["disk_used_ratio"] is None
    assert out["mem_total_bytes"] is None


def test_readings_survive_a_json_round_trip():
    r = healthy_readings(failed_units=("postgresql.service",))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["failed_units"] == ["postgresql.service"]
    assert Readings.from_dict(d) == r


def test_readings_from_dict_keeps_unknown_failed_units_unknown():
    r = healthy_readings(ssh_ok=False, ssh_error="timeout", failed_units=None)
    assert Readings.from_dict(r.to_dict()) == r


def test_the_table_shows_one_aligned_row_per_target():
    sick = healthy_readings(
        target="db1",
        ssh_ok=False,
        ssh_error="refused",
        ssh_refused=True,
        ssh_login_seconds=None,
        load1=None,
        failed_units=None,
        vm_status="stopped",
        qmp_ok=False,
        qmp_status=None,
        guest_agent_ok=False,
    )
    table = format_table([healthy_readings(), sick]).splitlines()
    assert table[0].split()[:3] == ["TARGET", "SSH", "LOAD"]
    assert table[1].startswith("devvm")
    assert "ok 0.05s" in table[1]
    assert "0.50 0.40 0.30" in table[1]
    assert "6.0G/8.0G" in table[1]
    assert "44%" in table[1]
    assert "FAIL (refused)" in table[2]
    assert "stopped" in table[2]
    # Columns line up: every row puts the VM column at the same offset.
    vm_col = table[0].index("VM ")
    assert table[1][vm_col:].startswith("running")
    assert table[2][vm_col:].startswith("stopped")


# ---- over real SSH, against the simulator -------------------------------------------------

MARGIN = 0.5  # scheduling slack on a loaded 2-core machine
READING_KEYS = {f.name for f in dataclasses.fields(Readings)}


def probe(sim) -> tuple[Readings, float]:
    started = time.monotonic()
    r = asyncio.run(probe_target(sim.config.targets[0], sim.config.probe))
    return r, time.monotonic() - started


def breakglass_probe(sim, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "breakglass.cli", "probe", "-c", str(sim.config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_healthy_vm_gives_complete_readings(sim):
    r, _ = probe(sim)
    assert r.target == sim.config.targets[0].name
    assert r.ssh_ok, r.ssh_error
    assert r.ssh_error is None
    assert 0 < r.ssh_login_seconds < sim.config.probe.connect_timeout_seconds
    assert r.ncpu >= 1
    assert r.load1 is not None
    assert r.load15 is not None
    assert 0 < r.mem_available_bytes < r.mem_total_bytes
    assert r.swap_total_bytes is not None
    assert r.swap_used_bytes is not None
    assert 0 < r.disk_used_ratio < 0.98
    assert r.failed_units == ()
    assert (r.pve_ok, r.vm_status, r.qmp_ok, r.qmp_status, r.guest_agent_ok) == (
        True,
        "running",
        True,
        "running",
        True,
    )
    assert r.uptime_seconds is not None
    d = r.to_dict()
    assert set(d) == READING_KEYS
    assert Readings.from_dict(json.loads(json.dumps(d))) == r


def test_an_io_stall_reports_the_ssh_failure_within_the_connect_timeout(sim):
    sim.inject("io_stall")
    r, elapsed = probe(sim)
    settings = sim.config.probe
    assert not r.ssh_ok
    assert r.ssh_error == "timeout"
    assert not r.ssh_refused
    assert r.ssh_login_seconds is None
    assert r.load1 is None
    assert r.failed_units is None
    # The host side still answers: QEMU is wedged, the guest agent silent.
    assert (r.pve_ok, r.vm_status, r.qmp_ok, r.guest_agent_ok) == (True, "running", False, False)
    assert elapsed < settings.connect_timeout_seconds + MARGIN
    assert elapsed < settings.round_timeout_seconds
    assert r.duration_seconds <= elapsed


def test_a_stopped_vm_is_refused_and_reported_stopped(sim):
    sim.inject("vm_stopped")
    r, elapsed = probe(sim)
    assert (r.ssh_ok, r.ssh_refused, r.ssh_error) == (False, True, "refused")
    assert (r.pve_ok, r.vm_status, r.qmp_ok, r.guest_agent_ok) == (True, "stopped", False, False)
    assert elapsed < sim.config.probe.connect_timeout_seconds


def test_a_network_partition_fails_both_sides_within_the_round(sim):
    sim.inject("network_partition")
    r, elapsed = probe(sim)
    assert (r.ssh_ok, r.pve_ok) == (False, False)
    assert r.ssh_error == "timeout"
    assert r.pve_error == "timeout"
    assert r.vm_status is None
    assert elapsed < sim.config.probe.connect_timeout_seconds + MARGIN


def test_an_unreachable_proxmox_host_leaves_the_guest_readings_intact(sim):
    sim.inject("pve_unreachable")
    r, _ = probe(sim)
    assert r.ssh_ok
    assert r.ncpu is not None
    assert (r.pve_ok, r.pve_error, r.vm_status, r.qmp_ok) == (False, "refused", None, None)


def test_a_changed_guest_host_key_is_a_failed_reading_not_an_exception(sim, tmp_path):
    target = sim.config.targets[0]
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known = tmp_path / "known_hosts.changed"
    known.write_text(f"[{target.devvm.host}]:{target.devvm.port} {other}\n")
    target = target.model_copy(
        update={"devvm": target.devvm.model_copy(update={"known_hosts": known})}
    )
    r = asyncio.run(probe_target(target, sim.config.probe))
    assert not r.ssh_ok
    assert r.ssh_error.startswith("host key mismatch")
    assert r.pve_ok


def test_a_failed_unit_shows_in_the_readings(sim):
    sim.inject("unit_failed")
    r, _ = probe(sim)
    assert r.ssh_ok
    assert r.failed_units
    assert all(u.endswith(".service") for u in r.failed_units)


def test_a_full_disk_shows_in_the_readings(sim):
    sim.inject("disk_full")
    r, _ = probe(sim)
    # df shows 99%+ (it rounds up); the exact ratio must still cross the rule's threshold.
    assert r.disk_used_ratio >= sim.config.rules.disk_used_ratio
    assert math.ceil(r.disk_used_ratio * 100) >= 99


def test_a_memory_hog_shows_as_little_memory_and_full_swap(sim):
    sim.inject("memory_hog")
    r, _ = probe(sim)
    assert r.ssh_ok
    assert r.mem_available_bytes / r.mem_total_bytes < 0.03
    assert r.swap_used_bytes / r.swap_total_bytes > 0.9


def test_the_probe_cli_prints_json_readings(sim):
    done = breakglass_probe(sim, "--json")
    assert done.returncode == 0, done.stderr
    (entry,) = json.loads(done.stdout)
    assert set(entry) == READING_KEYS
    assert entry["ssh_ok"] is True
    assert entry["vm_status"] == "running"
    assert entry["failed_units"] == []


def test_the_probe_cli_prints_a_table_by_default(sim):
    done = breakglass_probe(sim)
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split()[:2] == ["TARGET", "SSH"]
    assert row.startswith(sim.config.targets[0].name)
    assert "running" in row


def test_the_probe_cli_exits_1_when_the_proxmox_host_is_unreachable(sim):
    sim.inject("pve_unreachable")
    done = breakglass_probe(sim)
    assert done.returncode == 1, done.stderr
    assert "FAIL" in done.stdout


def test_the_probe_cli_reports_a_stalled_vm_in_time(sim):
    sim.inject("io_stall")
    started = time.monotonic()
    done = breakglass_probe(sim, "--json")
    elapsed = time.monotonic() - started
    # The readings still print in full; the exit code says a target failed.
    assert done.returncode == 1, done.stderr
    assert "unreachable: " + sim.config.targets[0].name in done.stderr
    (entry,) = json.loads(done.stdout)
    assert (entry["ssh_ok"], entry["ssh_error"]) == (False, "timeout")
    # Interpreter start-up is the rest of the budget.
    assert elapsed < sim.config.probe.round_timeout_seconds + 3


@pytest.mark.parametrize("level", ["info", "debug"])
def test_the_rounds_debug_line_is_gathered_only_when_debug_is_on(sim, level, monkeypatch):
    # Every target logs a round every interval: at the shipped level its fields are not even built.
    gathered: list[str] = []
    to_dict = Readings.to_dict

    def noting(self: Readings) -> dict[str, Any]:
        gathered.append(self.target)
        return to_dict(self)

    monkeypatch.setattr(Readings, "to_dict", noting)
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    buf = io.StringIO()
    try:
        configure_logging(LogSettings(format="json", level=level), stream=buf)
        r, _ = probe(sim)
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    assert r.ssh_ok
    events = [json.loads(line)["event"] for line in buf.getvalue().splitlines()]
    if level == "debug":
        assert gathered == [r.target]
        assert "probe_round" in events
    else:
        assert gathered == []
        assert "probe_round" not in events
