"""Two real ``breakglass serve`` processes on one store and one sick VM, the power budget at 1.

They share the SQLite file (and so the ledger, the incidents and the budget) and
watch the same simulated VM; each has its own web port. Whatever they race for,
the host gets one power verb, the ledger has one row that was sent, the target
one incident, and only one process works it: the one holding its lease. A
process started beside a live holder leaves the incident alone; when the holder
is killed, the other takes it over once the lease has lapsed.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import wait_for
from serve_support import db_rows, get_json, serve, stop, wait_serving
from servers import Servers

from breakglass.sim.runner import SimHandle
from breakglass.sim.statedir import free_port
from breakglass.sim.vm import SimTiming


def _config(sim: SimHandle, path: Path, **budget: Any) -> tuple[Path, str]:
    """The simulator's config with a web port of its own and ``budget`` settings; (file, base URL)."""
    doc = yaml.safe_load(sim.config_path.read_text(encoding="utf-8"))
    doc["web"]["port"] = free_port()
    doc["budget"].update(budget)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path, f"http://127.0.0.1:{doc['web']['port']}"


def test_two_serve_processes_on_one_store_with_the_budget_at_1_send_one_verb(
    sim: SimHandle, tmp_path: Path
) -> None:
    db = sim.config.store_path
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        for name in ("a", "b"):
            config, base = _config(sim, tmp_path / f"{name}.yaml", max_actions=1)
            procs.append(serve(config, tmp_path / f"{name}.log"))
            bases.append(base)
        for base in bases:
            wait_serving(base)
        sim.inject("sshd_dead")  # SSH refuses, the guest agent answers: the remedy is reset
        assert _wait_closed(db) == ["resolved"]
        for base in bases:  # both still serving once it is over
            wait_serving(base, within=5)
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0]
    assert [e["verb"] for e in sim.state()["power_log"]] == ["reset"]
    ledger = db_rows(db, "SELECT verb, result, json_extract(decision, '$.decision.reason') FROM ledger")
    assert [(verb, result) for verb, result, _ in ledger if result != "denied"] == [("reset", "ok")]
    assert all("budget" in reason for _, result, reason in ledger if result == "denied"), ledger
    [(incident,)] = db_rows(db, "SELECT id FROM incidents")
    # One process worked it: one diagnosis, never a second run of a remediator.
    moves = db_rows(db, "SELECT to_state FROM transitions WHERE incident_id = ?", (incident,))
    assert moves.count(("diagnosing",)) == 1, moves


@pytest.fixture
def slow_stop_sim(tmp_path: Path, servers: Servers) -> SimHandle:
    """A test-profile simulator whose Proxmox host takes 6 s to stop a VM: a cycle stays in flight."""
    timing = dataclasses.replace(SimTiming.profile("test"), stop_seconds=6.0)
    return servers.sim(tmp_path / "sim", "test", timing=timing)


def _wait_closed(db: Path) -> list[str]:
    """Wait until the target's incident closed; the states of the closed incidents."""
    done = wait_for(
        lambda: db_rows(db, "SELECT state FROM incidents WHERE closed_at IS NOT NULL"),
        within=60,
        what="the incident to close",
    )
    return [state for (state,) in done]


def _holder_pid(db: Path) -> int | None:
    rows = db_rows(db, "SELECT owner FROM incidents WHERE closed_at IS NULL AND owner IS NOT NULL")
    return int(rows[0][0].split(":")[1]) if rows else None


def _notes(db: Path) -> list[str]:
    return [t for (t,) in db_rows(db, "SELECT json_extract(data, '$.text') FROM steps WHERE kind = 'note'")]


def _events(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    return [json.loads(line).get("event", "") for line in lines if line.startswith("{")]


def _round_at(base: str) -> float | None:
    """When the serve at ``base`` published its latest probe round."""
    status = get_json(f"{base}/api/v1/status") or {}
    return ((status.get("targets") or [{}])[0].get("readings") or {}).get("at")


def test_a_process_started_beside_a_live_holder_leaves_its_incident_alone(
    sim: SimHandle, tmp_path: Path
) -> None:
    db = sim.config.store_path
    first_cfg, first_base = _config(sim, tmp_path / "a.yaml")
    second_cfg, second_base = _config(sim, tmp_path / "b.yaml")
    # The host holds the cycle mid-stop until the second process has started and looked, however
    # long a loaded machine takes to start it: the incident is in flight the whole time.
    sim.call(sim.vm.hold_stops)
    first = serve(first_cfg, tmp_path / "a.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_serving(first_base)
        sim.inject("io_stall")
        wait_for(lambda: sim.state()["verb_counts"].get("cycle") == 1, within=30, what="the cycle sent")
        second = serve(second_cfg, tmp_path / "b.log")
        wait_serving(second_base)  # its start looked at the incident
        seen = _round_at(second_base)
        wait_for(lambda: _round_at(second_base) != seen, within=10, what="a later round at the second")
        # A whole probe round of the second one looked too. It neither recorded the cycle's
        # outcome as unknown nor resumed the incident: the first one still holds it.
        assert db_rows(db, "SELECT verb, result FROM ledger") == [("cycle", None)]
        assert _holder_pid(db) == first.pid
        sim.call(sim.vm.release_stops)
        assert _wait_closed(db) == ["resolved"]
    finally:
        sim.call(sim.vm.release_stops)
        codes = [stop(p) for p in (first, second) if p is not None]
    assert codes == [0, 0]
    assert db_rows(db, "SELECT verb, result FROM ledger") == [("cycle", "ok")]
    assert [e["verb"] for e in sim.state()["power_log"]] == ["cycle"]
    assert len(db_rows(db, "SELECT id FROM incidents")) == 1
    assert not [n for n in _notes(db) if "resumed" in n or "taken over" in n]
    second_events = _events(tmp_path / "b.log")
    assert "incident_resumed" not in second_events
    assert "incident_taken_over" not in second_events


def test_kill_9_of_the_holder_the_other_process_takes_the_incident_over_once_its_lease_lapsed(
    slow_stop_sim: SimHandle, tmp_path: Path
) -> None:
    sim, db = slow_stop_sim, slow_stop_sim.config.store_path
    procs: dict[str, subprocess.Popen[bytes]] = {}
    bases: dict[str, str] = {}
    try:
        for name in ("a", "b"):
            config, bases[name] = _config(sim, tmp_path / f"{name}.yaml")
            procs[name] = serve(config, tmp_path / f"{name}.log")
        for base in bases.values():
            wait_serving(base)
        sim.inject("io_stall")
        wait_for(lambda: sim.state()["verb_counts"].get("cycle") == 1, within=30, what="the cycle sent")
        # The process that sent it holds the incident.
        [holder] = [n for n in procs if "power_verb_sending" in _events(tmp_path / f"{n}.log")]
        [other] = [n for n in procs if n != holder]
        procs[holder].send_signal(signal.SIGKILL)
        assert procs[holder].wait(10) == -signal.SIGKILL
        assert db_rows(db, "SELECT verb, result FROM ledger") == [("cycle", None)]
        # The survivor claims it after the lease (3 s at the test profile) and settles the row.
        wait_for(
            lambda: db_rows(db, "SELECT verb, result FROM ledger") == [("cycle", "unknown")],
            within=15,
            what="the survivor to claim the incident",
        )
        assert _holder_pid(db) in (procs[other].pid, None)
        assert _wait_closed(db) == ["resolved"]
    finally:
        for p in procs.values():
            stop(p)
    assert [e["verb"] for e in sim.state()["power_log"]] == ["cycle"]  # the one the killed holder sent
    assert db_rows(db, "SELECT verb, result FROM ledger") == [("cycle", "unknown")]
    assert len(db_rows(db, "SELECT id FROM incidents")) == 1
    # A takeover by a process that ran beside the holder, and the notes say so: not a restart.
    [taken] = [n for n in _notes(db) if "taken over" in n]
    assert taken.startswith("taken over from ")
    assert f":{procs[holder].pid}:" in taken.split(", whose lease had lapsed: ")[0]
    assert taken.endswith("cycle was unknown before it; verifying, nothing is re-sent")
    assert not [n for n in _notes(db) if "restart" in n]
    assert "incident_taken_over" in _events(tmp_path / f"{other}.log")


def test_a_holder_stalled_past_its_lease_is_taken_over_and_stops_when_it_wakes(
    slow_stop_sim: SimHandle, tmp_path: Path
) -> None:
    sim, db = slow_stop_sim, slow_stop_sim.config.store_path
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("a", "b"):
            config, base = _config(sim, tmp_path / f"{name}.yaml")
            procs[name] = serve(config, tmp_path / f"{name}.log")
            wait_serving(base)
        sim.inject("io_stall")
        wait_for(lambda: sim.state()["verb_counts"].get("cycle") == 1, within=30, what="the cycle sent")
        [holder] = [n for n in procs if "power_verb_sending" in _events(tmp_path / f"{n}.log")]
        [other] = [n for n in procs if n != holder]
        procs[holder].send_signal(signal.SIGSTOP)  # stalled mid-send, past its lease
        try:
            wait_for(
                lambda: db_rows(db, "SELECT verb, result FROM ledger") == [("cycle", "unknown")],
                within=15,
                what="the other process to take the incident over",
            )
        finally:
            procs[holder].send_signal(signal.SIGCONT)
        # Awake again, it learns at its next renewal that it lost the incident and stops.
        wait_for(
            lambda: "incident_lost" in _events(tmp_path / f"{holder}.log"),
            within=10,
            what="the woken holder to notice",
        )
        assert _wait_closed(db) == ["resolved"]
    finally:
        codes = [stop(p) for p in procs.values()]
    assert codes == [0, 0]
    assert [e["verb"] for e in sim.state()["power_log"]] == ["cycle"]
    assert db_rows(db, "SELECT verb, result FROM ledger") == [("cycle", "unknown")]
    assert len(db_rows(db, "SELECT id FROM incidents")) == 1
    assert [n for n in _notes(db) if "took this incident over" in n]
    assert "incident_taken_over" in _events(tmp_path / f"{other}.log")


def test_an_instruction_given_where_the_incident_is_not_held_is_refused_or_takes_an_escalation(
    slow_stop_sim: SimHandle, servers: Servers, tmp_path: Path
) -> None:
    """Two cores on one store (each as a serve would run it): an instruction reaches a remediator."""
    sim = slow_stop_sim
    cores = [servers.core(sim.config, tmp_path / "shared.db") for _ in range(2)]
    for r in cores:
        wait_for(lambda r=r: r.core.feed.latest(r.target), within=10, what="a first round")
    sim.inject("io_stall")
    wait_for(lambda: sim.state()["verb_counts"].get("cycle") == 1, within=30, what="the cycle sent")
    inc = cores[0].store.active_incident(cores[0].target)
    [holder] = [r for r in cores if r.core.manager.owner == inc["owner"]]
    [other] = [r for r in cores if r is not holder]
    # Being worked by the other core: its remediator could never get the instruction from here.
    with pytest.raises(ValueError, match="being worked by another watchdog process"):
        other.handle.instruct(inc["id"], "viktor", "check the NFS mount first")
    assert holder.handle.instruct(inc["id"], "viktor", "check the NFS mount first") > 0
    assert cores[0].wait_closed(inc["id"])["state"] == "resolved"

    # Escalated (the budget is spent and the VM stays sick): nobody works it, so a person's
    # instruction through either core takes it there, and that core tends it from then on.
    for r in cores:
        r.core.governor.budget = r.core.governor.budget.model_copy(update={"max_actions": 0})
    sim.inject("sshd_dead")
    escalated = wait_for(
        lambda: (i := cores[0].store.active_incident(cores[0].target)) and i["state"] == "escalated" and i,
        within=30,
        what="an escalated incident",
    )
    [other] = [r for r in cores if r.core.manager.owner != escalated["owner"]]
    assert other.handle.instruct(escalated["id"], "viktor", "leave it, I am on it") > 0
    assert other.store.active_incident(other.target)["owner"] == other.core.manager.owner
