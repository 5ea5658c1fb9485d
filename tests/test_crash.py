"""kill -9 of a serving watchdog mid-incident: the same incident resumes from its last committed step.

Just after its cycle reached the host: the ledger row becomes ``unknown`` (it
counts against the budget and is never re-sent), the incident goes on to
verification, and it ends ``resolved`` when the VM comes back: one cycle, one
incident. In the middle of the model's conversation: the restarted watchdog
rebuilds it from the stored steps and asks the next turn with the earlier ones;
the command the model ran is not run again.
"""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import wait_for
from serve_support import db_rows, stop, wait_serving
from serve_support import get_json as _get
from serve_support import serve as _serve
from servers import Servers

from breakglass.sim.fake_messages import Script
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
        # The same service came back: the notes say it was restarted, not taken over.
        notes = [n["text"] for n in _steps(db, "note")]
        assert "resumed after a restart: cycle was unknown before it; verifying, nothing is re-sent" in notes
        assert not [n for n in notes if "taken over" in n]
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0


RESTART_POSTGRES = "sudo systemctl restart postgresql"
REPORT = "Found: postgresql failed.\nDid: restarted it.\nState now: healthy."
# Turn 2 is held at the fake API: the watchdog is killed while it waits for it.
MID_CONVERSATION = {
    "name": "restart_mid_conversation",
    "turns": [
        {
            "content": [
                {"type": "text", "text": "postgresql failed; restarting it."},
                {"type": "tool_use", "name": "devvm_shell", "input": {"command": RESTART_POSTGRES}},
            ]
        },
        {"hold": True, "content": [{"type": "text", "text": "(never delivered: the watchdog is killed)"}]},
        {"content": [{"type": "text", "text": REPORT}]},
    ],
}


def _postgres_starts(sim: SimHandle) -> int:
    """How many times the guest's journal says postgresql started (the ground truth of restarts)."""
    return int(
        sim.call(
            lambda: sum(e.message.startswith("Starting postgresql.service") for e in sim.vm.guest.journal)
        )
    )


def _steps(db: Path, kind: str) -> list[dict[str, Any]]:
    rows = db_rows(db, "SELECT data FROM steps WHERE kind = ? ORDER BY id", (kind,))
    return [json.loads(d) for (d,) in rows]


def test_kill_9_mid_conversation_the_model_goes_on_from_its_stored_turns_and_nothing_runs_twice(
    sim: SimHandle, servers: Servers, tmp_path: Path
) -> None:
    fake = servers.fake_messages(Script(MID_CONVERSATION))
    key = tmp_path / "api_key"
    key.write_text("sk-ant-test-key-not-real\n")
    doc = yaml.safe_load(sim.config_path.read_text(encoding="utf-8"))
    doc["agent"] = {"enabled": "always", "base_url": fake.base_url, "api_key_file": str(key)}
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    base, db = f"http://127.0.0.1:{sim.config.web.port}", sim.config.store_path

    first = _serve(config, tmp_path / "first.log")
    try:
        wait_serving(base)
        starts = _postgres_starts(sim)
        sim.inject("unit_failed")
        # The second request is out (held): the command ran and its result is stored before it.
        wait_for(lambda: len(fake.requests) == 2, within=30, what="the model's second turn to be asked")
        assert [r["status"] for r in _steps(db, "tool_result")] == ["ok"]
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        stop(first)
    fake.release()  # the killed process's request is answered into a closed socket
    [(before,)] = db_rows(db, "SELECT id FROM incidents")
    assert _postgres_starts(sim) == starts + 1

    second = _serve(config, tmp_path / "second.log")
    try:
        wait_serving(base)
        done = wait_for(
            lambda: db_rows(db, "SELECT id, state FROM incidents WHERE closed_at IS NOT NULL"),
            within=_resume_within(sim),
            what="the incident to close",
        )
    finally:
        assert stop(second) == 0
    assert done == [(before, "resolved")]  # the same incident, the only one
    assert len(fake.requests) == 3
    # The first request after the restart carries the earlier turns: the same history the killed
    # process sent, so the model goes on where it was.
    resumed = fake.requests[2]["messages"]
    assert resumed == fake.requests[1]["messages"]
    assert [m["role"] for m in resumed] == ["user", "assistant", "user"]
    [call] = [b for b in resumed[1]["content"] if b["type"] == "tool_use"]
    assert call["input"]["command"] == RESTART_POSTGRES
    assert [b["tool_use_id"] for b in resumed[2]["content"]] == [call["id"]]
    # The command ran once: one call, one result, one restart in the guest's journal.
    assert [c["input"]["command"] for c in _steps(db, "tool_call")] == [RESTART_POSTGRES]
    assert len(_steps(db, "tool_result")) == 1
    assert _postgres_starts(sim) == starts + 1
    # The turns and tokens spent before the kill count: the resumed turn is turn 2.
    usage = _steps(db, "usage")
    assert [u["turn"] for u in usage] == [1, 2]
    assert usage[1]["total_tokens"] > usage[0]["total_tokens"]
    notes = [n["text"] for n in _steps(db, "note")]
    goes_on = "resumed after a restart: the model's conversation goes on at turn 2"
    assert [n for n in notes if n.startswith(goes_on)]
    assert not [n for n in notes if "taken over" in n or "diagnos" in n]
    lines = (tmp_path / "second.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(e["incident"], e["turn"]) for e in events if e["event"] == "agent_conversation_resumed"] == [
        (before, 2)
    ]


def _resume_within(sim: SimHandle) -> float:
    """Long enough for the killed process's lease to lapse, the claim, one model turn and verification."""
    inc = sim.config.incidents
    return inc.lease_seconds + inc.verify_timeout_seconds + 30
