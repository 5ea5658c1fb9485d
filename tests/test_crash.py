"""kill -9 of a serving watchdog while a power verb is in flight: the budget keeps it, nothing is re-sent."""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from servers import Servers

from breakglass.sim.runner import SimHandle
from breakglass.sim.vm import SimTiming


@pytest.fixture
def slow_cycle_sim(tmp_path: Path, servers: Servers) -> SimHandle:
    """A test-profile simulator whose Proxmox host takes 3 s to stop a VM (a cycle stays in flight)."""
    timing = dataclasses.replace(SimTiming.profile("test"), stop_seconds=3.0)
    return servers.sim(tmp_path / "sim", "test", timing=timing)


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "breakglass.cli", "serve", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def _ledger(db: Path) -> list[tuple[str, str | None]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT verb, result FROM ledger ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_kill_9_between_ledger_row_and_outcome_keeps_the_budget_and_sends_nothing_again(
    slow_cycle_sim: SimHandle, tmp_path: Path
) -> None:
    sim = slow_cycle_sim
    cfg = sim.config
    base = f"http://127.0.0.1:{cfg.web.port}"
    db = cfg.store_path
    first = _serve(sim.config_path, tmp_path / "serve.log")
    try:
        wait_for(lambda: _get(f"{base}/readyz"), within=30, what="serve to be ready")
        wait_for(
            lambda: (_get(f"{base}/api/v1/status") or {}).get("targets", [{}])[0].get("readings"),
            within=10,
            what="a first round",
        )
        sim.inject("io_stall")
        wait_for(lambda: ("cycle", None) in _ledger(db), within=30, what="a cycle in flight")
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert _ledger(db) == [("cycle", None)]

    second = _serve(sim.config_path, tmp_path / "serve.log")
    try:
        wait_for(lambda: _get(f"{base}/readyz"), within=30, what="serve to be ready again")
        assert _ledger(db)[0] == ("cycle", "unknown")
        incidents = _get(f"{base}/api/v1/incidents")["incidents"]
        assert incidents[-1]["state"] == "failed"
        status = _get(f"{base}/api/v1/status")["targets"][0]
        assert status["budget"]["remaining"] == cfg.budget.max_actions - 1
        # Whether or not the killed process's cycle reached the host, the VM ends healthy, and
        # the host never received a verb the ledger does not hold: the unknown row is never
        # re-sent; a later cycle, if the VM was still stalled, is a new decision with its own row.
        wait_for(
            lambda: sim.state()["vm"] == "running" and not sim.state()["faults"],
            within=40,
            what="the VM to be healthy again",
        )
        rows = _ledger(db)
        assert rows[0] == ("cycle", "unknown")
        assert len(sim.state()["power_log"]) <= len(rows)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
