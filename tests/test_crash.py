"""kill -9 of a serving watchdog just after its cycle reached the host: the same incident resumes.

The ledger row becomes ``unknown`` (it counts against the budget and is never
re-sent), the incident goes on to verification from its last committed step,
and it ends ``resolved`` when the VM comes back: one cycle, one incident.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from serve_support import db_rows
from serve_support import get_json as _get
from serve_support import serve as _serve
from servers import Servers

from breakglass.sim.runner import SimHandle
from breakglass.sim.vm import SimTiming


@pytest.fixture
def slow_cycle_sim(tmp_path: Path, servers: Servers) -> SimHandle:
    """A test-profile simulator whose Proxmox host takes 3 s to stop a VM (a cycle stays in flight)."""
    timing = dataclasses.replace(SimTiming.profile("test"), stop_seconds=3.0)
    return servers.sim(tmp_path / "sim", "test", timing=timing)


def _ledger(db: Path) -> list[tuple[Any, ...]]:
    return db_rows(db, "SELECT verb, result FROM ledger ORDER BY id")


def _incidents(db: Path) -> list[int]:
    return [r[0] for r in db_rows(db, "SELECT id FROM incidents ORDER BY id")]


def test_kill_9_just_after_a_cycle_reached_the_host_resumes_the_same_incident_to_resolved(
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
        # The simulated host has accepted the cycle and is still stopping the VM (3 s); its
        # power log gets the entry when the host is done, after the watchdog is gone.
        wait_for(lambda: sim.state()["verb_counts"].get("cycle") == 1, within=30, what="the cycle sent")
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert _ledger(db) == [("cycle", None)]
    [before] = _incidents(db)
    wait_for(lambda: sim.state()["power_log"], within=10, what="the host to finish the cycle")

    second = _serve(sim.config_path, tmp_path / "serve.log")
    try:
        wait_for(lambda: _get(f"{base}/readyz"), within=30, what="serve to be ready again")
        # Once the killed process's lease lapses, the new one claims the incident, and the
        # row in flight becomes unknown: it counts, and it is never sent again.
        wait_for(
            lambda: _ledger(db) == [("cycle", "unknown")],
            within=cfg.incidents.lease_seconds + 10,
            what="the claim",
        )
        done = wait_for(
            lambda: next(
                (
                    i
                    for i in (_get(f"{base}/api/v1/incidents") or {}).get("incidents", [])
                    if i["id"] == before and i["state"] in ("resolved", "escalated", "failed")
                ),
                None,
            ),
            within=60,
            what="the incident to end",
        )
        assert done["state"] == "resolved"
        assert [i["id"] for i in _get(f"{base}/api/v1/incidents")["incidents"]] == [before]
        assert [e["verb"] for e in sim.state()["power_log"]] == ["cycle"]  # the one the killed process sent
        assert _ledger(db) == [("cycle", "unknown")]
        status = _get(f"{base}/api/v1/status")["targets"][0]
        assert status["budget"]["remaining"] == cfg.budget.max_actions - 1
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
