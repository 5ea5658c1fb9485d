"""Probe rounds: readings from guest output, their JSON form, the table, and rounds over real SSH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from breakglass.watchdog.probes import Readings, format_table, readings_from_output

FIXTURES = Path(__file__).parent / "fixtures"


def healthy_readings(**changes) -> Readings:
    fields = {
        "target": "devvm",
        "at": 1_790_000_000.0,
        "duration_seconds": 0.2,
        "ssh_ok": True,
        "ssh_error": None,
        "ssh_refused": False,
        "ssh_login_seconds": 0.05,
        "load1": 0.5,
        "load5": 0.4,
        "load15": 0.3,
        "ncpu": 4,
        "mem_total_bytes": 8 * 2**30,
        "mem_available_bytes": 6 * 2**30,
        "swap_total_bytes": 2 * 2**30,
        "swap_used_bytes": 0,
        "disk_used_ratio": 0.44,
        "failed_units": (),
        "pve_ok": True,
        "pve_error": None,
        "vm_status": "running",
        "qmp_ok": True,
        "qmp_status": "running",
        "guest_agent_ok": True,
        "uptime_seconds": 1234.5,
    }
    return Readings(**{**fields, **changes})


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
