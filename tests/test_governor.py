"""The Governor against the simulator's Proxmox side: budget, gap, grants, dry run, ledger first."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import FakeClock
from harness import wait_for
from servers import Servers

from breakglass.config import BudgetSettings
from breakglass.incidents.governor import Governor
from breakglass.remote import CommandResult, PveClient, Verb
from breakglass.sim.runner import SimHandle
from breakglass.sim.vm import SimTiming
from breakglass.store import Store


def pve_for(sim: SimHandle) -> PveClient:
    t = sim.config.targets[0]
    return PveClient(t.pve, connect_timeout=2, status_timeout=5)


def budget(**kw: float | bool) -> BudgetSettings:
    base = {"max_actions": 3, "window_seconds": 3600, "min_gap_seconds": 60}
    return BudgetSettings(**{**base, **kw})


def verbs(sim: SimHandle) -> list[str]:
    return [e["verb"] for e in sim.state()["power_log"]]


def test_the_window_allows_max_actions_then_names_when_the_next_is_allowed(
    sim: SimHandle, store: Store, clock: FakeClock
) -> None:
    gov = Governor(store, budget(), clock=clock)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})
    pve = pve_for(sim)
    first_at = clock.now
    for _ in range(3):
        out = asyncio.run(gov.execute("devvm", inc, Verb.START, pve))
        assert out.result in ("ok", "failed")  # start on a running VM fails, but it was sent
        clock.now += 61
    denied = asyncio.run(gov.execute("devvm", inc, Verb.CYCLE, pve))
    assert denied.result == "denied"
    assert denied.decision.reason == "budget spent: 3 of 3 power actions in the last 1h"
    assert denied.decision.next_allowed_at == first_at + 3600
    assert verbs(sim) == ["start", "start", "start"]
    assert gov.remaining("devvm") == (0, first_at + 3600)
    clock.now = first_at + 3599.9
    assert not gov.check("devvm", Verb.CYCLE).allowed
    clock.now = first_at + 3600  # next_allowed_at is the first moment allowed, not a moment before
    assert gov.check("devvm", Verb.CYCLE).allowed


def test_the_minimum_gap_refuses_a_quick_second_action(
    sim: SimHandle, store: Store, clock: FakeClock
) -> None:
    gov = Governor(store, budget(), clock=clock)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})
    asyncio.run(gov.execute("devvm", inc, Verb.RESET, pve_for(sim)))
    clock.now += 10
    d = gov.check("devvm", Verb.CYCLE)
    assert not d.allowed
    assert d.reason.startswith("minimum gap: last power action 10s ago")
    assert d.next_allowed_at == clock.now + 50


def test_forensics_are_stored_before_the_verb_and_the_verb_reaches_the_host(
    sim: SimHandle, store: Store, clock: FakeClock
) -> None:
    sim.inject("io_stall")
    gov = Governor(store, budget(), clock=clock)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})
    out = asyncio.run(gov.execute("devvm", inc, Verb.CYCLE, pve_for(sim), trace={"qmp": "timeout"}))
    assert out.result == "ok"
    assert verbs(sim) == ["cycle"]
    kinds = [s["kind"] for s in store.get_incident(inc)["steps"]]
    assert kinds == ["forensics", "decision", "verb"]
    assert out.forensics is not None
    assert out.forensics["forensics"]["qmp"]["ok"] is False
    [row] = store.get_incident(inc)["power_actions"]
    assert (row["verb"], row["result"]) == ("cycle", "ok")
    assert row["decision"]["trace"] == {"qmp": "timeout"}


class CheckingPve(PveClient):
    """A real PveClient that, just before sending, looks for its ledger row from another connection."""

    seen: list[tuple[str, object]]

    async def run(self, verb: Verb) -> CommandResult:
        conn = sqlite3.connect(self.db)  # type: ignore[attr-defined]
        self.seen = conn.execute("SELECT verb, result FROM ledger").fetchall()
        conn.close()
        return await super().run(verb)


def test_the_ledger_row_is_committed_before_the_verb_is_sent(
    sim: SimHandle, store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    t = sim.config.targets[0]
    pve = CheckingPve(t.pve, connect_timeout=2, status_timeout=5)
    pve.db = tmp_path / "store.db"  # type: ignore[attr-defined]
    gov = Governor(store, budget(), clock=clock)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})
    asyncio.run(gov.execute("devvm", inc, Verb.RESET, pve))
    assert pve.seen == [("reset", None)]


def test_dry_run_records_the_decision_and_sends_nothing(
    sim: SimHandle, store: Store, clock: FakeClock
) -> None:
    gov = Governor(store, budget(dry_run=True), clock=clock)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})
    out = asyncio.run(gov.execute("devvm", inc, Verb.CYCLE, pve_for(sim), trace={"why": "qmp dead"}))
    assert out.result == "dry_run"
    assert verbs(sim) == []
    steps = store.get_incident(inc)["steps"]
    assert any(s["data"].get("decision") == "would send cycle (dry run; nothing sent)" for s in steps)
    assert gov.remaining("devvm")[0] == 3


def test_a_grant_allows_exactly_one_more_action(sim: SimHandle, store: Store, clock: FakeClock) -> None:
    gov = Governor(store, budget(max_actions=1, min_gap_seconds=0), clock=clock)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})
    pve = pve_for(sim)
    assert asyncio.run(gov.execute("devvm", inc, Verb.RESET, pve)).result == "ok"
    assert asyncio.run(gov.execute("devvm", inc, Verb.RESET, pve)).result == "denied"
    with pytest.raises(ValueError, match="needs who and why"):
        gov.grant("devvm", "viktor", " ")
    gov.grant("devvm", "viktor", "still wedged after the budget")
    assert gov.remaining("devvm")[0] == 1
    granted = asyncio.run(gov.execute("devvm", inc, Verb.CYCLE, pve))
    assert granted.result == "ok"
    assert granted.decision.used_grant is not None
    assert asyncio.run(gov.execute("devvm", inc, Verb.CYCLE, pve)).result == "denied"
    assert verbs(sim) == ["reset", "cycle"]


def test_a_grant_does_not_skip_the_minimum_gap(sim: SimHandle, store: Store, clock: FakeClock) -> None:
    gov = Governor(store, budget(max_actions=1, min_gap_seconds=600), clock=clock)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})
    assert asyncio.run(gov.execute("devvm", inc, Verb.RESET, pve_for(sim))).result == "ok"
    gov.grant("devvm", "viktor", "one more")
    clock.now += 30
    d = gov.check("devvm", Verb.CYCLE)
    assert (d.allowed, d.next_allowed_at) == (False, clock.now + 570)
    assert d.reason.startswith("minimum gap")
    clock.now += 570
    assert gov.check("devvm", Verb.CYCLE).used_grant is not None


@pytest.fixture
def slow_stop_sim(tmp_path: Path, servers: Servers) -> SimHandle:
    """A simulator whose Proxmox host takes 3 s to stop the VM, so a cycle stays in flight."""
    timing = dataclasses.replace(SimTiming.profile("test"), stop_seconds=3.0)
    return servers.sim(tmp_path / "sim", "test", timing=timing)


def test_a_verb_cancelled_in_flight_is_recorded_unknown_and_still_counts(
    slow_stop_sim: SimHandle, store: Store, clock: FakeClock
) -> None:
    sim = slow_stop_sim
    gov = Governor(store, budget(max_actions=1, min_gap_seconds=0), clock=clock)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})

    async def cancel_mid_send() -> None:
        task = asyncio.create_task(gov.execute("devvm", inc, Verb.CYCLE, pve_for(sim)))
        deadline = time.monotonic() + 10
        # Cancel only once the host has accepted the verb: its outcome is then truly unknown.
        while (await asyncio.to_thread(sim.state))["verb_counts"].get("cycle") != 1:
            assert time.monotonic() < deadline, "the cycle never reached the host"
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_mid_send())
    [row] = store.ledger_rows("devvm")
    assert (row["verb"], row["result"]) == ("cycle", "unknown")
    assert "interrupted while sending" in row["detail"]
    assert store.get_incident(inc)["steps"][-1]["data"]["result"] == "unknown"
    assert gov.recover() == 0  # already settled; nothing to re-mark, nothing re-sent
    assert not gov.check("devvm", Verb.CYCLE).allowed


@pytest.mark.parametrize("bad", ["status", Verb.STATUS, Verb.FORENSICS, "cycle", "cycle 103"])
def test_only_power_verbs_pass_the_governor(store: Store, bad: object, sim: SimHandle) -> None:
    gov = Governor(store, budget())
    with pytest.raises(ValueError, match="not a power verb"):
        asyncio.run(gov.execute("devvm", 1, bad, pve_for(sim)))  # type: ignore[arg-type]
    assert sim.state()["verb_counts"] == {}


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from breakglass.store import Store
    s = Store(sys.argv[1])
    s.ledger_insert("devvm", None, "cycle", "watchdog")
    os.kill(os.getpid(), signal.SIGKILL)  # dies between the ledger row and the verb
    """
)


def test_a_kill_9_after_the_ledger_row_never_refunds_budget(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(db)], check=False, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = Store(db)
    gov = Governor(store, BudgetSettings(max_actions=1, window_seconds=3600, min_gap_seconds=0))
    assert not gov.check("devvm", Verb.CYCLE).allowed
    assert gov.recover() == 1
    [row] = store.ledger_rows("devvm")
    assert row["result"] == "unknown"
    assert gov.recover() == 0  # never re-sent, never re-marked
    assert not gov.check("devvm", Verb.CYCLE).allowed
    store.close()
    assert os.path.exists(db)


CLAIMER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from breakglass.config import BudgetSettings, load_config
    from breakglass.incidents.governor import Governor
    from breakglass.remote import PveClient, Verb
    from breakglass.store import Store
    config, db, incident, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    t = load_config(config).targets[0]
    pve = PveClient(t.pve, connect_timeout=5, status_timeout=10)
    store = Store(db)
    gov = Governor(store, BudgetSettings(max_actions=1, window_seconds=3600, min_gap_seconds=0))
    open(f"{go}.{os.getpid()}", "w").close()  # ready
    while not os.path.exists(go):
        time.sleep(0.001)
    out = asyncio.run(gov.execute("devvm", incident, Verb.RESET, pve))
    print(json.dumps(out.result))
    """
)


def test_processes_sharing_one_store_never_exceed_the_budget(sim: SimHandle, tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    store = Store(db)
    inc, _ = store.open_incident("devvm", "rule", "r", "w", {})
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(sim.config_path), str(db), str(inc), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        # All three have imported and opened the store before the go file releases them together.
        wait_for(lambda: all(Path(f"{go}.{p.pid}").exists() for p in procs), within=30, what="ready")
        go.touch()
        results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert results == ['"denied"', '"denied"', '"ok"']
    assert verbs(sim) == ["reset"]
    counted = [r for r in store.ledger_rows("devvm") if r["result"] not in ("denied", "dry_run")]
    assert len(counted) == 1
    store.close()


def test_a_budget_of_zero_after_a_granted_action_names_no_next_time(store: Store, clock: FakeClock) -> None:
    gov = Governor(store, budget(max_actions=0, min_gap_seconds=0), clock=clock)
    store.ledger_insert("devvm", None, "start", "granted", result="ok")
    d = gov.check("devvm", Verb.CYCLE)
    assert (d.allowed, d.next_allowed_at) == (False, None)
    assert gov.remaining("devvm") == (0, None)


def test_the_budget_a_round_exports_reads_the_ledger_once(store: Store, clock: FakeClock) -> None:
    # Every probe round exports the budget: it read the window twice and the grants twice.
    gov = Governor(store, budget(max_actions=2), clock=clock)
    store.add_grant("devvm", "alice", "testing the grant count")
    statements: list[str] = []
    store._conn().set_trace_callback(statements.append)
    try:
        assert gov.remaining("devvm") == (3, None)
    finally:
        store._conn().set_trace_callback(None)
    assert len(statements) == 3, statements
