"""The core loop: the schedule keeps ticking through failures and hung rounds; suppression rules."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

from harness import Running, override, start_core, wait_for
from readings_support import healthy_readings

from breakglass.core import Core, CoreThread
from breakglass.metrics import Metrics
from breakglass.sim.runner import SimHandle
from breakglass.store import Store
from breakglass.watchdog.probes import Readings
from breakglass.watchdog.scheduler import GridScheduler


class FlakyCore(Core):
    """A core whose rule step throws on its first two rounds."""

    failures = 0

    async def process(self, readings: Readings) -> Readings:
        if self.failures < 2:
            self.failures += 1
            raise RuntimeError("a rule blew up")
        return await super().process(readings)


def test_a_round_that_throws_is_counted_and_the_schedule_keeps_ticking(
    sim: SimHandle, tmp_path: Path
) -> None:
    store = Store(tmp_path / "c.db")
    metrics = Metrics()
    core = FlakyCore(sim.config, store=store, metrics=metrics)
    thread = CoreThread(core)
    thread.start()
    try:
        wait_for(lambda: core.feed.latest("devvm"), within=10, what="a round after two failures")
        assert core.failures == 2
        assert (
            metrics.registry.get_sample_value(
                "breakglass_probe_rounds_total", {"target": "devvm", "result": "error"}
            )
            == 2
        )
    finally:
        thread.stop()
        store.close()


class RoundEndsAsStopCancelsCore(Core):
    """A core whose first probe round finishes in the loop turn that cancels the schedule."""

    schedule: asyncio.Task[None] | None = None
    rounds = 0

    async def probe_round(self, name: str) -> Readings:
        self.rounds += 1
        if self.rounds > 1:  # the schedule went on after its cancel: wait here to be cancelled again
            await asyncio.Event().wait()
        assert self.schedule is not None
        asyncio.get_running_loop().call_soon(self.schedule.cancel)  # before the job sees the result
        return healthy_readings(name, at=0.0)


def test_a_stop_that_cancels_the_schedule_as_a_round_finishes_stops_it(
    sim: SimHandle, tmp_path: Path
) -> None:
    # On Python 3.11, asyncio.wait_for returns the result when a cancel and the result meet in
    # one loop turn: the schedule's loop then went on, and stopping the core hung (seen under load).
    store = Store(tmp_path / "c.db")
    core = RoundEndsAsStopCancelsCore(sim.config, store=store, metrics=Metrics())
    scheduler = GridScheduler(0.01, {"devvm": 0.0}, core.probe_job)

    async def main() -> None:
        core.schedule = asyncio.create_task(scheduler.run_target("devvm"))
        await asyncio.wait({core.schedule}, timeout=5.0)
        core.schedule.cancel()  # the second round's wait ends here, if there was one
        await asyncio.gather(core.schedule, return_exceptions=True)

    try:
        asyncio.run(main())
        assert core.rounds == 1, "the cancel was swallowed: the schedule ran another round"
    finally:
        store.close()


def _rounds_after(r: Running, at: float, n: int, within: float) -> list[Readings]:
    seen: list[Readings] = []

    def more() -> bool:
        latest = r.core.feed.latest(r.target)
        if latest is not None and latest.at > (seen[-1].at if seen else at):
            seen.append(latest)
        return len(seen) >= n

    wait_for(more, within=within, what=f"{n} rounds", every=0.02)
    return seen


def test_a_hung_vm_gives_failed_rounds_within_the_round_timeout_and_never_blocks(
    sim: SimHandle, tmp_path: Path
) -> None:
    # The rules are slowed so nothing acts: this is about the schedule alone.
    cfg = override(sim.config, rules={"ssh_rounds": 1000, "guest_agent_rounds": 1000})
    r = start_core(cfg, tmp_path / "c.db")
    try:
        first = _rounds_after(r, 0, 1, 10)[0]
        sim.inject("io_stall")
        rounds = _rounds_after(r, first.at, 3, 3 * (cfg.probe.round_timeout_seconds + 2))
        assert all(not x.ssh_ok for x in rounds[1:])
        assert all(x.duration_seconds <= cfg.probe.round_timeout_seconds + 0.5 for x in rounds)
        assert r.incidents() == []
    finally:
        r.stop()


def test_a_silence_stops_automatic_incidents_but_not_manual_ones(sim: SimHandle, tmp_path: Path) -> None:
    r = start_core(sim.config, tmp_path / "c.db")
    try:
        wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first round")
        r.store.add_silence(r.target, "maintenance window", "viktor", r.core.clock() + 3600)
        sim.inject("unit_failed")
        latest = r.core.feed.latest(r.target)
        assert latest is not None
        _rounds_after(r, latest.at, 4, 15)
        assert "units_failed" in r.core.targets[r.target].conditions
        assert r.incidents() == []
        res = r.handle.trigger(r.target, trigger="manual", reason="look anyway", who="viktor")
        assert res.created
        inc = r.wait_closed(res.incident_id)
        assert inc["state"] == "resolved"
        assert inc["who"] == "viktor"
    finally:
        r.stop()


def test_after_a_resolve_automatic_triggers_wait_the_cooldown(sim: SimHandle, tmp_path: Path) -> None:
    cfg = override(sim.config, incidents={"cooldown_seconds": 3600})
    r = start_core(cfg, tmp_path / "c.db")
    try:
        wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first round")
        sim.inject("unit_failed")
        first = r.wait_closed(r.wait_opened()["id"])
        assert first["state"] == "resolved"
        sim.inject("unit_failed")
        res: Any = r.handle.call(
            r.core.manager.trigger(r.target, trigger="rule", reason="again", evidence={})
        )
        assert res.suppressed == "cooldown"
        assert res.incident_id is None
        manual = r.handle.trigger(r.target, trigger="manual", reason="now please", who="viktor")
        assert manual.created
    finally:
        r.stop()


def test_every_power_verb_sent_and_every_close_writes_a_log_line(
    sim: SimHandle, tmp_path: Path, captured: io.StringIO
) -> None:
    r = start_core(sim.config, tmp_path / "c.db")
    try:
        wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first round")
        sim.inject("vm_stopped")
        inc = r.wait_closed(r.wait_opened()["id"])
        assert inc["state"] == "resolved"
    finally:
        r.stop()
    entries = [json.loads(line) for line in captured.getvalue().splitlines()]
    sent = [e for e in entries if e["event"] == "power_verb_sent"]
    assert [(e["verb"], e["result"], e["incident"], e["target"]) for e in sent] == [
        ("start", "ok", inc["id"], "devvm")
    ]
    closed = [e for e in entries if e["event"] == "incident_closed"]
    assert [(e["incident"], e["state"]) for e in closed] == [(inc["id"], "resolved")]


def test_an_incident_left_diagnosing_by_a_stop_is_diagnosed_afresh_on_start(
    sim: SimHandle, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    store = Store(db)
    evidence = {"conditions": ["units_failed"]}
    left, _ = store.open_incident("devvm", "rule", "units failed", "watchdog", evidence)
    assert store.transition(left, "diagnosing", "runbook diagnosing")
    store.close()
    sim.inject("unit_failed")
    r = start_core(sim.config, db)
    try:
        done = r.wait_closed(left)
        assert done["state"] == "resolved"
        assert [i["id"] for i in r.incidents()] == [left]  # no second incident on restart
        assert any("resumed after a restart" in s["data"].get("text", "") for s in done["steps"])
    finally:
        r.stop()
