"""The core: scheduler, probe rounds, rules and incidents on one asyncio loop.

The loop runs in its own thread (:class:`CoreThread`); the web server in the
main thread reaches it only through :class:`CoreHandle`, which submits
coroutines with ``run_coroutine_threadsafe`` and waits with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from breakglass.activity import explain
from breakglass.agent.select import remediator_for
from breakglass.config import Config, Target
from breakglass.events import Observers, ReadingsFeed
from breakglass.incidents.governor import Governor
from breakglass.incidents.manager import IncidentManager, TriggerResult, process_owner
from breakglass.metrics import Metrics
from breakglass.remote import DevvmShell, PveClient
from breakglass.store import Store
from breakglass.watchdog.links import ProbeLinks
from breakglass.watchdog.probes import Readings, probe_target
from breakglass.watchdog.rules import TargetState, evaluate, is_healthy, with_grace
from breakglass.watchdog.scheduler import GridScheduler, LagMonitor, spread

log = structlog.get_logger("breakglass.core")
READINGS_FLUSH_SECONDS = 1.0  # how often gathered readings are written, in one transaction
LOOP_LAG_INTERVAL = 0.1
# A round that timed out while the core loop ran this late is the observer's failure, not the VM's.
OVERLOAD_LAG_SECONDS = 0.5
T = TypeVar("T")


@dataclass
class TargetRuntime:
    """Per-target live state owned by the core loop."""

    target: Target
    shell: DevvmShell
    pve: PveClient
    links: ProbeLinks
    rules: TargetState
    conditions: tuple[str, ...] = ()
    detail: dict[str, str] | None = None
    # The newest readings ``attention`` judged, and whether they were green: judged once each.
    judged: tuple[Readings | None, bool] = (None, True)


class Core:
    """Probe, evaluate, open incidents; one instance per process."""

    def __init__(
        self,
        cfg: Config,
        *,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        observers: Observers | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.feed = ReadingsFeed()
        self.observers = observers or Observers(
            on_error=lambda ev, exc: log.error("observer_failed", event_name=ev, error=repr(exc))
        )
        self.observers.add(self._observe)
        p = cfg.probe
        # One cap on concurrent SSH handshakes for every target's probe rounds.
        self.handshakes = asyncio.Semaphore(p.max_concurrent_handshakes)
        self.targets: dict[str, TargetRuntime] = {
            t.name: TargetRuntime(
                target=t,
                shell=DevvmShell(
                    t.devvm,
                    connect_timeout=p.connect_timeout_seconds,
                    command_timeout=p.command_timeout_seconds,
                    output_cap=p.output_cap_bytes,
                ),
                pve=PveClient(
                    t.pve,
                    connect_timeout=p.connect_timeout_seconds,
                    status_timeout=p.status_timeout_seconds,
                    power_timeout=cfg.budget.verb_timeout_seconds,
                    output_cap=p.output_cap_bytes,
                ),
                links=ProbeLinks(t, p, gate=self.handshakes),
                rules=TargetState(),
            )
            for t in cfg.targets
        }
        self.governor = Governor(
            store, cfg.budget, clock=clock, on_event=self.observers.emit, owner=process_owner()
        )
        self.manager = IncidentManager(
            cfg,
            store,
            self.governor,
            self.feed,
            clients=lambda name: (self.targets[name].shell, self.targets[name].pve),
            remediator_for=lambda target: remediator_for(cfg, target),
            observers=self.observers,
            on_power=self._grace_after_power,
            clock=clock,
        )
        self.scheduler: GridScheduler | None = None
        # Readings wait here and are written together (one transaction, one sync) off the loop.
        self._pending: list[Readings] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self.lag = LagMonitor()
        self._overload_logged_at = float("-inf")
        for name in self.targets:
            metrics.init_target(name)
            self._export_budget(name)

    # -- lifecycle -------------------------------------------------------

    async def start(self, *, schedule: bool = True) -> None:
        """Recover the ledger, then start one probe job per target."""
        self._lag_task = asyncio.create_task(watch_loop_lag(self.metrics, self.lag), name="loop-lag")
        unknown = self.governor.recover()
        if unknown:
            log.warning("ledger_recovered", unknown_outcomes=unknown)
        self._resume_incidents()
        self.manager.start()
        self._flusher = asyncio.create_task(self._flush_loop(), name="readings-writer")
        if not schedule:
            return
        p = self.cfg.probe
        self.scheduler = GridScheduler(
            p.interval_seconds,
            spread(self.targets, p.interval_seconds),
            self.probe_job,
            jitter=p.jitter_seconds,
            on_round=self.metrics.round_started,
        )
        self.scheduler.start()
        self._pruner = asyncio.create_task(self._prune_forever(), name="prune-readings")
        log.info(
            "core_started",
            targets=len(self.targets),
            interval=p.interval_seconds,
            max_concurrent_handshakes=p.max_concurrent_handshakes,
        )

    async def stop(self) -> None:
        """Stop probing and cancel incident work (its history stays in the store)."""
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        if self._lag_task is not None:
            self._lag_task.cancel()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        await self.manager.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush_readings()
        await asyncio.gather(*(rt.links.close() for rt in self.targets.values()))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(READINGS_FLUSH_SECONDS)
            await self.flush_readings()

    async def flush_readings(self) -> int:
        """Write the readings gathered since the last flush in one transaction; return how many."""
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            await asyncio.to_thread(self.store.add_readings_many, batch)
        except Exception:  # a failed write loses history, never the schedule
            log.exception("readings_write_failed", rounds=len(batch))
        return len(batch)

    def _resume_incidents(self) -> None:
        """Incidents left active by a stop or a crash go on from their last committed step.

        Only those nobody holds, or whose holder's lease lapsed: an incident another live
        process holds is its business (probe rounds take it over if that process dies).
        """
        for name in self.targets:
            inc = self.store.active_incident(name)
            if inc is not None:
                self.manager.resume_after_restart(inc)

    # -- retention -------------------------------------------------------

    async def prune(self) -> int:
        """Delete readings older than ``retention.readings_seconds``; how many.

        The deleting runs in a worker thread in small transactions (see
        Store.prune_readings), so a probe round is never held up behind it.
        """
        older_than = self.clock() - self.cfg.retention.readings_seconds
        n = await asyncio.to_thread(self.store.prune_readings, older_than)
        if n:
            log.info("readings_pruned", rows=n, older_than=older_than)
        return n

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # a failed prune is retried next time; probing goes on
                log.exception("readings_prune_failed")
            await asyncio.sleep(self.cfg.retention.prune_interval_seconds)

    # -- one probe round -------------------------------------------------

    async def probe_job(self, name: str) -> None:
        """A scheduled round: bounded, and never raising into the scheduler."""
        limit = self.cfg.probe.round_timeout_seconds + 5
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that arrives
            # as the round finishes, and the scheduler's loop then never stops (core stop hangs).
            async with asyncio.timeout(limit):
                await self.probe_round(name)
        except TimeoutError:
            log.error("probe_round_timeout", target=name, limit=limit)
            self.metrics.round_failed(name, "timeout")
        except Exception:  # one bad round must not stop the schedule
            log.exception("probe_round_failed", target=name)
            self.metrics.round_failed(name, "error")

    async def probe_round(self, name: str) -> Readings:
        """Probe one target, store and export the readings, evaluate rules, maybe trigger."""
        rt = self.targets[name]
        readings = await probe_target(rt.target, self.cfg.probe, now=self.clock, links=rt.links)
        return await self.process(readings)

    async def process(self, readings: Readings) -> Readings:
        """Everything after the probe itself: store, metrics, rules, triggers, feed."""
        rt = self.targets[readings.target]
        self._pending.append(readings)
        self.metrics.observe_readings(readings)
        # Alerts the cooldown held back are delivered on the first round after it ends.
        self.manager.release_deferred(
            readings.target, lambda: {"conditions": list(rt.conditions), "readings": readings.to_dict()}
        )
        if self._inconclusive(readings):
            # Stored and shown, but the rules neither count it nor reset on it.
            await self.feed.publish(readings)
            return readings
        ev = evaluate(rt.rules, readings, self.cfg.rules, self.clock())
        rt.rules, rt.conditions, rt.detail = ev.state, ev.active, dict(ev.detail)
        self.metrics.set_conditions(readings.target, ev.active)
        self._export_budget(readings.target)
        await self.feed.publish(readings)
        active = self.store.active_incident(readings.target)
        # Held by another process sharing the store: left alone unless its lease lapsed.
        if (
            active is not None
            and not self.manager.holds(active)
            and self.manager.resume_after_restart(active) is not None
        ):
            active = self.store.active_incident(readings.target)
        if active is not None and active["state"] == "escalated":
            # One record per episode: the escalated incident is tended, never replaced.
            healthy = not ev.active and is_healthy(readings, self.cfg.rules)
            self.manager.tend_escalated(active, healthy=healthy)
        if ev.fired or (ev.active and active is None):
            conditions = ev.fired or ev.active
            reason = "; ".join(ev.detail.get(c, c) for c in conditions)
            # When the first bad round was seen: the page's "time to detect" starts there.
            since = [s for c in conditions if (s := ev.state.condition(c).bad_since) is not None]
            await self.trigger(
                readings.target,
                trigger="rule",
                reason=reason,
                evidence={
                    "conditions": list(ev.active),
                    "readings": readings.to_dict(),
                    "bad_since": min(since) if since else None,
                },
            )
        return readings

    def _inconclusive(self, r: Readings) -> bool:
        """A round that timed out while this process's own loop ran late proves nothing about the VM.

        Refusals, host-key and login errors still count: only timeouts can be the observer's own.
        """
        timed_out = (r.ssh_error or "").startswith("timeout") or (r.pve_error or "").startswith("timeout")
        if not timed_out:
            return False
        lag = self.lag.worst_since(time.monotonic() - r.duration_seconds - 1.0)
        if lag < OVERLOAD_LAG_SECONDS:
            return False
        self.metrics.round_inconclusive()
        now = time.monotonic()
        if now - self._overload_logged_at > 60:
            self._overload_logged_at = now
            log.warning("probe_rounds_inconclusive", loop_lag_seconds=round(lag, 2), target=r.target)
        return True

    # -- triggers and facade calls ---------------------------------------

    async def trigger(
        self,
        target: str,
        *,
        trigger: str,
        reason: str,
        who: str = "watchdog",
        evidence: dict[str, Any] | None = None,
        authorize_power: bool = False,
        alert: str | None = None,
    ) -> TriggerResult:
        """Open or attach an incident (any source); see IncidentManager.trigger for the options."""
        evidence = dict(evidence or {})
        rt = self.targets[target]
        evidence.setdefault("conditions", list(rt.conditions))
        latest = self.feed.latest(target)
        if latest is not None:
            evidence.setdefault("readings", latest.to_dict())
        return await self.manager.trigger(
            target,
            trigger=trigger,
            reason=reason,
            who=who,
            evidence=evidence,
            authorize_power=authorize_power,
            alert=alert,
        )

    def grant(self, target: str, who: str, why: str) -> int:
        """Grant one extra power action; an incident escalated and waiting is worked again."""
        grant_id = self.governor.grant(target, who, why)
        inc = self.store.active_incident(target)
        if inc is not None and inc["state"] == "escalated":
            self.manager.resume(inc["id"], f"{who} granted one more power action: {why}", by_person=True)
        return grant_id

    def attention(self) -> list[str]:
        """The targets a person should look at, most urgent first.

        First those with an active incident, then those with a firing condition,
        then those whose newest round was not green; configuration order within
        each group. One store query and what the core holds in memory, so it
        stays cheap for a thousand targets.
        """
        active = self.store.active_targets()

        def rank(name: str) -> int:
            if name in active:
                return 0
            rt = self.targets[name]
            if rt.conditions:
                return 1
            latest = self.feed.latest(name)
            if latest is None:
                return 3
            if rt.judged[0] is not latest:  # a page reloaded every few seconds sees each round once
                rt.judged = (latest, is_healthy(latest, self.cfg.rules))
            return 3 if rt.judged[1] else 2

        ranks = {name: rank(name) for name in self.targets}
        ranked = sorted(self.targets, key=ranks.__getitem__)  # stable: configuration order within a rank
        return [name for name in ranked if ranks[name] < 3]

    def status(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Each target's (or only ``names``') latest readings, conditions, incident, budget, silence."""
        now = self.clock()
        out = []
        wanted = self.targets if names is None else [n for n in names if n in self.targets]
        for name in wanted:
            rt = self.targets[name]
            latest = self.feed.latest(name)
            inc = self.store.active_incident(name)
            remaining, next_at = self.governor.remaining(name)
            newest = self.store.list_incidents(target=name, limit=1)
            silence = self.store.active_silence(name, now)
            activity = explain(
                self.cfg,
                state=rt.rules,
                readings=latest,
                active=inc,
                latest=newest[0] if newest else None,
                silence=silence,
                remaining=remaining,
                next_allowed_at=next_at,
                now=now,
            )
            out.append(
                {
                    "name": name,
                    "vmid": rt.target.vmid,
                    "readings": latest.to_dict() if latest else None,
                    "conditions": list(rt.conditions),
                    "condition_detail": dict(rt.detail or {}),
                    "incident": (
                        {"id": inc["id"], "state": inc["state"], "trigger": inc["trigger"]} if inc else None
                    ),
                    "budget": {
                        "remaining": remaining,
                        "max_actions": self.cfg.budget.max_actions,
                        "window_seconds": self.cfg.budget.window_seconds,
                        "min_gap_seconds": self.cfg.budget.min_gap_seconds,
                        "next_allowed_at": next_at,
                        "dry_run": self.cfg.budget.dry_run,
                    },
                    "silence": silence,
                    "activity": activity,
                }
            )
        return {"targets": out, "generated_at": now}

    # -- observers -------------------------------------------------------

    def _grace_after_power(self, target: str, at: float) -> None:
        rt = self.targets[target]
        rt.rules = with_grace(rt.rules, at + self.cfg.rules.boot_grace_seconds)
        self._export_budget(target)

    def _export_budget(self, target: str) -> None:
        remaining, next_at = self.governor.remaining(target)
        self.metrics.set_budget(target, remaining, next_at)

    def _observe(self, event: str, data: dict[str, Any]) -> None:
        m, target = self.metrics, data.get("target")
        if target is None:
            return
        if event == "opened":
            m.incident_opened(target, data["trigger"])
        elif event == "closed":
            m.incident_closed(target, data["state"], data["duration"])
        elif event == "escalated":
            m.escalation(target, data.get("reason"))
        elif event == "power_action":
            m.power_action(target, data["verb"], data["result"])
            self._export_budget(target)
        elif event == "usage":
            m.agent_usage(
                target,
                data["input_tokens"],
                data["output_tokens"],
                data.get("cache_write_tokens", 0),
                data.get("cache_read_tokens", 0),
            )
        elif event == "fallback":
            m.agent_fallback(target, data["kind"])


async def watch_loop_lag(
    metrics: Metrics, monitor: LagMonitor | None = None, every: float = LOOP_LAG_INTERVAL
) -> None:
    """Measure, forever, how late the running loop wakes for a timer: work blocking it shows up here."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(every)
        lag = loop.time() - asked - every
        metrics.loop_lag_observed(lag)
        if monitor is not None:
            monitor.record(lag)


class CoreThread:
    """Run a :class:`Core` on its own asyncio loop in a daemon thread."""

    def __init__(self, core: Core, *, schedule: bool = True) -> None:
        self.core = core
        self._schedule = schedule
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="breakglass-core", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.core.start(schedule=self._schedule))
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._shutdown())
        self.loop.close()

    async def _shutdown(self) -> None:
        await self.core.stop()
        # Probe rounds and SSH connections still in flight end here, not in the GC.
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
        await self.loop.shutdown_default_executor()

    def start(self, timeout: float = 30.0) -> CoreHandle:
        """Start the loop thread; return the facade once the core has started."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the core did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the core failed to start: {self._error}") from self._error
        return CoreHandle(self.loop, self.core)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop (cancelling incident work) and join the thread."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


class CoreHandle:
    """Thread-safe facade the web server uses to reach the core."""

    def __init__(self, loop: asyncio.AbstractEventLoop, core: Core) -> None:
        self._loop = loop
        self._core = core

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the core loop and wait for its result."""
        if not self._loop.is_running():
            coro.close()
            raise CoreUnavailable("the core loop is not running")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise CoreUnavailable(f"the core did not answer within {timeout:.0f} s") from None

    def alive(self) -> bool:
        """True when the core loop answers within a second."""
        try:
            self.call(asyncio.sleep(0), timeout=1.0)
        except CoreUnavailable:
            return False
        return True

    def attention(self) -> list[str]:
        """The targets a person should look at, most urgent first (see Core.attention)."""
        return self.call(_as_coro(self._core.attention))

    def status(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Each target's state, or only that of ``names`` (see Core.status)."""
        wanted = None if names is None else list(names)
        return self.call(_as_coro(lambda: self._core.status(wanted)))

    def trigger(
        self,
        target: str,
        *,
        trigger: str,
        reason: str,
        who: str,
        evidence: dict[str, Any] | None = None,
        authorize_power: bool = False,
        alert: str | None = None,
    ) -> TriggerResult:
        """Open or attach an incident from another thread."""
        return self.call(
            self._core.trigger(
                target,
                trigger=trigger,
                reason=reason,
                who=who,
                evidence=evidence,
                authorize_power=authorize_power,
                alert=alert,
            )
        )

    def grant(self, target: str, who: str, why: str) -> int:
        """Grant exactly one extra power action for ``target``."""
        return self.call(_as_coro(lambda: self._core.grant(target, who, why)))

    def instruct(self, incident_id: int, who: str, text: str) -> int:
        """Add an operator instruction to an active incident (see IncidentManager.instruct)."""
        return self.call(_as_coro(lambda: self._core.manager.instruct(incident_id, who, text)))

    @property
    def core(self) -> Core:
        """The core itself, for code already running on its loop."""
        return self._core


class CoreUnavailable(RuntimeError):
    """The core loop is down or did not answer in time."""


async def _as_coro(fn: Callable[[], T]) -> T:
    return fn()
