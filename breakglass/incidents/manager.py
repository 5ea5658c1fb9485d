"""Incident lifecycle: single-flight per target, remediation, verification, report.

States: open -> diagnosing -> remediating -> verifying -> resolved | failed
(verifying -> diagnosing when a power verb did not bring the VM back and the
remediator asked to follow up: it is called again for its next action), and
escalated, which stays open while the target is sick (tended each probe
round: verified and resolved when healthy, worked again when the budget or a
person allows). Every transition is claimed in the Store with a conditional
``UPDATE ... WHERE state = ?`` and stored with its time and reason; the Store
also enforces one active incident per target atomically.

Who works an active incident: the process that opened or claimed it holds a
lease on it in the store (``owner``, ``lease_until``), renewed every third of
``incidents.lease_seconds``. Only the holder works, tends or moves it (each
transition and each power claim is conditional on holding it), so several
processes may share one store and watch the same targets: the others attach
their triggers to it and leave it alone. An incident left active by a stop or
a crash resumes from its last committed step in whichever process claims it
first once its lease has lapsed, at start or on a later probe round
(:meth:`IncidentManager.resume_after_restart`); a clean stop lets go at once.
Its notes say which it was: resumed after a restart of this service, or taken
over from another process that stopped holding it while this one ran.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from breakglass.config import Config, Target
from breakglass.events import Observers, ReadingsFeed
from breakglass.incidents import policy
from breakglass.incidents.context import (
    Instruction,
    RemediationContext,
    RemediationResult,
    Remediator,
    Resume,
)
from breakglass.incidents.governor import Governor, PowerOutcome
from breakglass.remote import DevvmShell, PveClient, Verb
from breakglass.store import Store
from breakglass.watchdog.probes import Readings
from breakglass.watchdog.rules import is_healthy
from breakglass.watchdog.summary import describe_readings

log = structlog.get_logger("breakglass.incidents")

# Triggers a person starts skip silences and the cooldown; the rest are automatic.
MANUAL_TRIGGERS = frozenset({"manual", "cli"})
# Evidence key naming who explicitly authorized a power verb on a reachable guest (manual triggers only).
POWER_AUTHORIZED_BY = "power_authorized_by"
TRIGGERS = frozenset({"rule", "manual", "alertmanager", "cli"})
# A remediator is asked for a next power verb after an unverified one only while fewer were sent.
MAX_POWER_PASSES = 3


@dataclass(frozen=True)
class TriggerResult:
    """What became of a trigger: a new incident, an attachment, or suppression."""

    incident_id: int | None
    created: bool
    suppressed: str | None = None  # "silenced" or "cooldown" when nothing was opened
    duplicate: bool = False  # a copy of an alert already delivered to the active incident
    # A firing alert the cooldown held back: kept in the store, delivered at this time.
    deferred_until: float | None = None


def process_owner() -> str:
    """A name for this process's claims on incidents: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class IncidentManager:
    """Opens incidents, runs a remediator for each, verifies and closes them."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        governor: Governor,
        feed: ReadingsFeed,
        *,
        clients: Callable[[str], tuple[DevvmShell, PveClient]],
        remediator_for: Callable[[Target], Remediator],
        observers: Observers | None = None,
        on_power: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.cfg = cfg
        # The name this process holds incidents under (the Governor claims verbs under it too).
        self.owner = owner or governor.owner or process_owner()
        self._lease = cfg.incidents.lease_seconds
        # Incidents whose work was cancelled because another process took them over.
        self._lost: set[int] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self.store = store
        self.governor = governor
        self.feed = feed
        self._clients = clients
        self._remediator_for = remediator_for
        self.observers = observers or Observers()
        self._on_power = on_power
        self._clock = clock
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Operator instructions not yet handed to the incident's remediator, by incident.
        self._instructions: dict[int, list[Instruction]] = {}
        # An incident another process held after this one started was taken over, not restarted.
        self._started_at = clock()

    # -- opening ---------------------------------------------------------

    def suppression(self, target: str) -> str | None:
        """Why an automatic trigger for ``target`` would open nothing now, if it would not."""
        held = self._held_back(target)
        return held[0] if held is not None else None

    def _held_back(self, target: str) -> tuple[str, float] | None:
        """``(why, until)`` when an automatic trigger for ``target`` would open nothing now."""
        now = self._clock()
        silence = self.store.active_silence(target, now)
        if silence is not None:
            return "silenced", float(silence["expires_at"])
        closed = self.store.last_closed_at(target)
        if closed is not None and now < closed + self.cfg.incidents.cooldown_seconds:
            return "cooldown", closed + self.cfg.incidents.cooldown_seconds
        return None

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
        """Open an incident for ``target`` or attach this trigger to the active one.

        ``authorize_power`` (manual triggers only) lets the policy allow a power verb on a
        guest that still answers SSH; it is recorded as who authorized it.

        ``alert`` is a firing alert's fingerprint: it is recorded with the incident in
        the same transaction, and a copy while that incident is active is a duplicate.
        """
        self.cfg.target(target)  # KeyError for an unknown target
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}; expected one of {sorted(TRIGGERS)}")
        if authorize_power and trigger not in MANUAL_TRIGGERS:
            raise ValueError(f"only a person's trigger ({sorted(MANUAL_TRIGGERS)}) can authorize power")
        evidence = {k: v for k, v in (evidence or {}).items() if k != POWER_AUTHORIZED_BY}
        if authorize_power:
            evidence[POWER_AUTHORIZED_BY] = who
        if trigger not in MANUAL_TRIGGERS and self.store.active_incident(target) is None:
            held = self._held_back(target)
            if held is not None and held[0] == "cooldown" and alert is not None:
                # Alertmanager would send it again only at its repeat_interval (hours): it
                # waits in the store and is delivered when the cooldown ends.
                until = self.store.defer_alert(target, alert, trigger, reason, who, evidence, held[1])
                log.info(
                    "alert_deferred", target=target, fingerprint=alert, why="cooldown", until=_iso(until)
                )
                return TriggerResult(None, False, "cooldown", deferred_until=until)
            if held is not None:
                log.debug("trigger_suppressed", target=target, trigger=trigger, why=held[0])
                return TriggerResult(None, False, held[0])
        if alert is not None:
            incident_id, outcome = self.store.open_incident_for_alert(
                target, alert, trigger, reason, who, evidence, owner=self.owner, lease_seconds=self._lease
            )
            if outcome == "duplicate":
                return TriggerResult(incident_id, False, duplicate=True)
            created = outcome == "opened"
        else:
            incident_id, created = self.store.open_incident(
                target, trigger, reason, who, evidence, owner=self.owner, lease_seconds=self._lease
            )
        if created:
            self._opened(incident_id, target, trigger, who)
        elif trigger in MANUAL_TRIGGERS:
            # A person acting on an escalated incident: work it again, with what they said.
            self.resume(incident_id, f"{who} triggered it again: {reason}", by_person=True)
        else:
            self.observers.emit("attached", {"incident": incident_id, "target": target, "trigger": trigger})
        return TriggerResult(incident_id, created)

    def _opened(self, incident_id: int, target: str, trigger: str, who: str) -> None:
        log.info("incident_opened", incident=incident_id, target=target, trigger=trigger, who=who)
        self.observers.emit("opened", {"incident": incident_id, "target": target, "trigger": trigger})
        self._start(incident_id, self._work_unguarded(incident_id))

    def release_deferred(
        self, target: str, evidence: Callable[[], dict[str, Any]] | None = None
    ) -> list[TriggerResult]:
        """Deliver ``target``'s alerts whose cooldown has ended (each probe round asks); what became of them.

        Delivered as if they had just arrived: the first opens an incident, the rest
        attach to it (or all attach to an incident already active). While a person's
        silence holds, they are dropped; a newer close's cooldown keeps them waiting.
        ``evidence`` gives the round's conditions and readings, which fill what the alert lacks
        (built only when an alert is due: every round asks).
        """
        now = self._clock()
        if not self.store.deferred_due(target, now):
            return []
        if self.store.active_incident(target) is None:
            held = self._held_back(target)
            if held is not None and held[0] == "silenced":
                dropped = self.store.drop_deferred_alerts(target)
                log.info("deferred_alerts_dropped", target=target, fingerprints=dropped, why="silenced")
                return []
            if held is not None:
                return []  # another incident closed meanwhile: its cooldown holds them too
        results = []
        for incident_id, outcome, row in self.store.release_deferred_alerts(
            target,
            now,
            extra_evidence=evidence() if evidence is not None else None,
            owner=self.owner,
            lease_seconds=self._lease,
        ):
            log.info(
                "alert_released",
                target=target,
                fingerprint=row["fingerprint"],
                incident=incident_id,
                outcome=outcome,
                deferred_at=_iso(row["at"]),
            )
            if outcome == "opened":
                self._opened(incident_id, target, str(row["trigger"]), str(row["who"]))
            elif outcome == "attached":
                self.observers.emit(
                    "attached", {"incident": incident_id, "target": target, "trigger": row["trigger"]}
                )
            results.append(
                TriggerResult(incident_id, outcome == "opened", duplicate=outcome == "duplicate")
            )
        return results

    def instruct(self, incident_id: int, who: str, text: str) -> int:
        """Add a person's instruction to an active incident; its step id.

        The instruction is recorded as an ``operator_instruction`` step and handed to
        the remediator before its next turn (the agent sees it as the operator's).
        KeyError for an unknown incident, ValueError for a closed one, or for one that
        another live process is working (its remediator could never get it from here).
        An escalated incident nobody is working is taken, like any person's action.
        """
        inc = self.store.get_incident(incident_id)
        if inc is None:
            raise KeyError(f"no incident #{incident_id}")
        if inc["closed_at"] is not None:
            raise ValueError(f"incident #{incident_id} is {inc['state']}, no longer active")
        if not self.holds(inc) and not self._take_for_person(inc):
            raise ValueError(
                f"incident #{incident_id} is being worked by another watchdog process "
                f"({inc['owner']}); give the instruction through that process"
            )
        step = self.store.add_step(incident_id, "operator_instruction", {"who": who, "text": text})
        self._instructions.setdefault(incident_id, []).append(Instruction(who, text, step))
        log.info("operator_instruction", incident=incident_id, who=who, step=step)
        return step

    async def wait_idle(self, limit: float | None = None) -> None:
        """Wait until every running incident task has finished (tests and shutdown)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=limit)

    async def stop(self) -> None:
        """Cancel running incident work and let go of every incident held; the store keeps the rest."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
            self._lease_task = None
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        # A clean stop: the next start (or another process) resumes them without waiting.
        self.store.release_incidents(self.owner)

    # -- holding incidents -----------------------------------------------

    def start(self) -> None:
        """Renew this process's leases every third of ``incidents.lease_seconds`` until stopped."""
        if self._lease_task is None:
            self._lease_task = asyncio.create_task(self._keep_leases(), name="incident-leases")

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                self.renew_leases()
            except Exception:  # a failed renewal is retried; the lease covers two more tries
                log.exception("incident_lease_renewal_failed")

    def renew_leases(self) -> set[int]:
        """Renew every lease held; stop working any incident another process took over. Held ids."""
        held = self.store.renew_leases(self.owner, self._lease)
        for incident_id, task in list(self._tasks.items()):
            if incident_id in held or task.done():
                continue
            inc = self.store.get_incident(incident_id)
            if inc is None or inc["closed_at"] is not None:
                continue  # it closed: the task is finishing on its own
            log.warning("incident_lost", incident=incident_id, target=inc["target"], holder=inc["owner"])
            self._lost.add(incident_id)
            task.cancel()
        return held

    def holds(self, inc: Mapping[str, Any]) -> bool:
        """True when this process holds ``inc`` (as last read from the store)."""
        return inc.get("owner") == self.owner

    def _take_for_person(self, inc: Mapping[str, Any]) -> bool:
        """A person acts here on an incident this process does not hold: may it go on here?

        Escalated (nobody is working it): taken. Held by nobody, or by a process whose lease
        lapsed: yes, it resumes here or wherever claims it. Being worked by a live process: no.
        """
        if inc["state"] == "escalated":
            taken = self.store.claim_incident(
                int(inc["id"]), self.owner, self._lease, take_from_state="escalated"
            )
            if taken is not None:
                self.governor.settled(taken)
                return True
        lease_until = inc.get("lease_until")
        return inc.get("owner") is None or lease_until is None or lease_until < self._clock()

    # -- after a restart -------------------------------------------------

    def resume_after_restart(self, inc: Mapping[str, Any]) -> str | None:
        """Resume an incident left active by a stopped or killed watchdog, from its last committed step.

        Only once it is claimed (:meth:`Store.claim_incident`): nobody holds it, or its
        holder's lease has lapsed; an incident a live process holds is left alone (None).
        Its ledger rows still in flight become ``unknown`` in the claim. Then:

        1. escalated: nothing to do; the probe rounds tend it as before;
        2. a power verb was decided for it (its ledger row is ``ok``, ``failed`` or
           ``unknown``: the host may have acted): the verb is never sent again; the
           incident goes on to the one verification path, and resolves if the VM is back;
        3. otherwise no power verb reached the host: the remediator takes its pass up
           again from the stored steps (the model agent goes on with its conversation,
           see :mod:`breakglass.agent.resume`; the runbook diagnoses afresh) and notes where.

        The notes say whether it was resumed after a restart of this service or taken over
        from another process (:meth:`_taken_over`). Returns the step it resumed at, or None
        when it is not ours to resume.
        """
        incident_id, target = int(inc["id"]), str(inc["target"])
        if incident_id in self._tasks:
            return None
        holder, lease_until = inc.get("owner"), inc.get("lease_until")
        if holder not in (None, self.owner) and lease_until is not None and lease_until >= self._clock():
            return None  # a live process holds it (looked at without taking the write lock)
        settled = self.store.claim_incident(incident_id, self.owner, self._lease)
        if settled is None:
            return None
        self.governor.settled(settled)
        full = self.store.get_incident(incident_id) or {}
        takeover = self._taken_over(full, holder, lease_until)
        if takeover:
            log.warning("incident_taken_over", incident=incident_id, target=target, holder=holder)
            headline = (
                f"taken over from {holder}, whose lease had lapsed"
                if holder is not None
                else "taken over after the watchdog process working it stopped"
            )
        else:
            headline = "resumed after a restart"
        how = "takeover" if takeover else "restart"
        if full.get("state") in (None, "escalated") or full.get("closed_at") is not None:
            if takeover and full.get("closed_at") is None:
                self.store.add_step(incident_id, "note", {"text": f"{headline}; it stays escalated"})
            return "escalated"
        acted = [
            p
            for p in full.get("power_actions", ())
            if not p["dry_run"] and p["result"] in ("ok", "failed", "unknown")
        ]
        if acted or inc["state"] == "verifying":
            last = acted[-1] if acted else None
            found = (
                f"{headline}: {last['verb']} was {last['result']} before it"
                if last
                else f"{headline} while verifying"
            )
            self.store.add_step(incident_id, "note", {"text": f"{found}; verifying, nothing is re-sent"})
            log.info("incident_resumed", incident=incident_id, target=target, at="verifying", how=how)
            if last is not None and self._on_power is not None:
                self._on_power(target, float(last["at"]))  # the boot grace runs from the verb
            did = (f"{last['verb']} ({last['result']})",) if last else ()
            result = RemediationResult(outcome="acted", found=found, did=did)
            self._start(incident_id, self._verify_after_restart(incident_id, target, result, headline))
            return "verifying"
        # Nothing mutating was decided by the host: the remediator takes its pass up again from
        # the stored steps (the model agent's conversation) and notes where. Instructions given
        # here while nobody held it are in the steps too: those are the ones it goes by.
        self._instructions.pop(incident_id, None)
        log.info("incident_resumed", incident=incident_id, target=target, at="diagnosing", how=how)
        resume = Resume(headline, tuple(full.get("steps", ())))
        self._start(incident_id, self._work_unguarded(incident_id, resume=resume))
        return "diagnosing"

    def _taken_over(self, inc: Mapping[str, Any], holder: str | None, lease_until: float | None) -> bool:
        """Was ``inc`` held by a process alive after this one started (a takeover), not a restart?

        Its holder's last sign of life is its last lease renewal (``lease_until`` minus the
        lease) or the incident's last step (a clean stop writes one as it lets go). Later
        than this process's start: another process ran beside this one and stopped holding
        it. Earlier: this service was restarted (stopped or killed, then started again).
        """
        if holder == self.owner:
            return False
        steps = inc.get("steps") or ()
        alive = max([float(inc.get("opened_at") or 0.0), *(float(x["at"]) for x in steps[-1:])])
        if holder is not None and lease_until is not None:
            alive = max(alive, float(lease_until) - self._lease)
        return alive > self._started_at

    async def _verify_after_restart(
        self, incident_id: int, target: str, result: RemediationResult, headline: str
    ) -> None:
        inc = self.store.get_incident(incident_id)
        if inc is None or inc["closed_at"] is not None:
            return
        if inc["state"] != "verifying" and not self._move(
            incident_id, "verifying", headline, from_state=inc["state"]
        ):
            return
        await self._verify_and_close(incident_id, target, result)

    # -- working an incident ---------------------------------------------

    def _start(self, incident_id: int, work: Coroutine[Any, Any, None]) -> None:
        self._tasks[incident_id] = asyncio.create_task(
            self._work(incident_id, work), name=f"incident-{incident_id}"
        )

    async def _work(self, incident_id: int, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            # Stopping is not failing: the store holds every committed step, and the next
            # start resumes the incident from there (see resume_after_restart).
            note = "the watchdog stopped during this incident; it resumes on the next start"
            if incident_id in self._lost:
                note = "another watchdog process took this incident over; this one stopped working it"
            self.store.add_step(incident_id, "note", {"text": note})
            raise
        except Exception as exc:  # one bad incident must not crash the core
            log.exception("incident_crashed", incident=incident_id)
            self.store.add_step(incident_id, "note", {"text": f"internal error: {exc!r}"})
            self.close(incident_id, "failed", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(incident_id, None)
            self._instructions.pop(incident_id, None)
            self._lost.discard(incident_id)

    async def _work_unguarded(
        self,
        incident_id: int,
        previous: tuple[tuple[str, str], ...] = (),
        *,
        resume: Resume | None = None,
    ) -> None:
        """One pass: diagnose and act, then the one verification path.

        ``previous`` are the verbs this incident sent that did not bring the VM back, for
        a follow-up pass; a fresh pass (opened, resumed, a person acted) gets none, so a
        grant may send the same verb again. ``resume``: the pass was interrupted (stop,
        crash, lapsed lease) and the remediator takes it up again from the stored steps.
        """
        inc = self.store.get_incident(incident_id)
        assert inc is not None
        target = self.cfg.target(inc["target"])
        remediator = self._remediator_for(target)
        if not self._move(incident_id, "diagnosing", f"{remediator.name} diagnosing"):
            log.warning("transition_refused", incident=incident_id, frm=inc["state"], to="diagnosing")
            return
        shell, pve = self._clients(target.name)
        latest = self.feed.latest(target.name)
        power_results: list[PowerOutcome] = []

        authorized_by = (inc.get("evidence") or {}).get(POWER_AUTHORIZED_BY)

        async def power(verb: Verb, *, trace: Mapping[str, Any], evidence: policy.Evidence) -> PowerOutcome:
            # Authorization comes from the incident as a person opened it, never from the caller.
            because = f"power action {verb.value} allowed by the evidence policy; the budget decides"
            outcome = await self.governor.judged(
                target.name,
                incident_id,
                verb,
                pve,
                evidence=replace(evidence, authorized_by=authorized_by),
                who=remediator.name,
                trace=dict(trace),
                on_allowed=lambda: self._advance(incident_id, "remediating", because),
            )
            power_results.append(outcome)
            if outcome.result in ("ok", "unknown", "failed") and self._on_power is not None:
                self._on_power(target.name, self._clock())
            return outcome

        ctx = RemediationContext(
            incident_id=incident_id,
            target=target,
            config=self.cfg,
            shell=shell,
            pve=pve,
            power=power,
            record=lambda kind, data: self._record(incident_id, kind, data, target.name),
            latest=latest,
            conditions=tuple(inc.get("evidence", {}).get("conditions", ())),
            trigger=inc["trigger"],
            reason=inc.get("reason") or "",
            evidence=inc.get("evidence") or {},
            instructions=lambda: self._instructions.pop(incident_id, []),
            previous_verbs=previous,
            resume=resume,
        )
        budget = self.cfg.agent.wall_clock_seconds + 2 * self.cfg.incidents.verify_timeout_seconds
        try:
            async with asyncio.timeout(budget):  # not wait_for: it can swallow a cancel on 3.11
                result = await remediator.remediate(ctx)
        except TimeoutError:
            result = RemediationResult(
                outcome="escalate",
                found="remediation did not finish in time",
                escalation="gave_up",
                detail=f"{remediator.name} ran longer than {budget:.0f} s",
            )
        self._record(
            incident_id,
            "decision",
            {
                "decision": f"remediation {result.outcome}",
                "found": result.found,
                "did": list(result.did),
                "escalation": result.escalation,
                "detail": result.detail,
            },
        )
        # A resumed pass's dry runs before the restart are in the ledger, not in power_results.
        before = [p["result"] for p in inc.get("power_actions", ())] if resume is not None else []
        dry = "dry_run" in before or any(p.result == "dry_run" for p in power_results)
        if dry and result.outcome != "escalate":
            result = RemediationResult(
                outcome="escalate",
                found=result.found,
                did=result.did,
                escalation="dry_run",
                detail="dry run: the power action was recorded, not sent",
                report=result.report,
            )
        if result.outcome == "escalate":
            self._escalate(incident_id, target.name, result)
            return
        self._advance(incident_id, "remediating", "; ".join(result.did) or "no action needed")
        if not self._move(incident_id, "verifying", "waiting for green probe rounds"):
            return
        await self._verify_and_close(incident_id, target.name, result)

    async def _verify_and_close(self, incident_id: int, target: str, result: RemediationResult) -> None:
        """The one verification path: green rounds resolve the incident, else it is escalated.

        Unless the remediator sent a power verb and asked to follow up: then it is asked
        for its next action (a new diagnosis, with the verbs sent so far), a bounded
        number of times; it escalates itself when it has nothing left to send.
        """
        ok, detail = await self._verify(target)
        self._record(incident_id, "evidence", {"verification": detail})
        sent = _sent_verbs(self.store.get_incident(incident_id) or {})
        if ok:
            self._finish(incident_id, target, result, "resolved", detail)
        elif result.follow_up and 0 < len(sent) < MAX_POWER_PASSES:
            self._record(
                incident_id,
                "decision",
                {
                    "decision": "diagnose again for the next action",
                    "because": f"not verified after {', '.join(v for v, _ in sent)}: {detail}",
                },
            )
            await self._work_unguarded(incident_id, previous=sent)
        else:
            self._escalate(
                incident_id,
                target,
                RemediationResult(
                    outcome="escalate",
                    found=result.found,
                    did=result.did,
                    escalation="unverified",
                    detail=detail,
                    report=result.report,
                ),
            )

    async def _verify(self, target: str) -> tuple[bool, str]:
        """Wait for ``verify_rounds`` consecutive green rounds within the verify window."""
        need = self.cfg.incidents.verify_rounds
        deadline = self._clock() + self.cfg.incidents.verify_timeout_seconds
        after = self._clock()
        green = 0
        last: Readings | None = None
        while green < need:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            r = await self.feed.next_after(target, after, remaining)
            if r is None:
                break
            after, last = r.at, r
            green = green + 1 if is_healthy(r, self.cfg.rules) else 0
        if green >= need:
            return True, f"{need} consecutive green probe rounds"
        state = describe_readings(last) if last else "no probe round arrived"
        return False, (
            f"not healthy within {self.cfg.incidents.verify_timeout_seconds:.0f} s "
            f"({green}/{need} green rounds); last: {state}"
        )

    # -- closing ---------------------------------------------------------

    def _escalate(self, incident_id: int, target: str, result: RemediationResult) -> None:
        """Hand the incident to a person: it stays open, ``escalated``, for the rest of the episode."""
        reason = result.escalation or "gave_up"
        text = f"escalated ({reason}): {result.detail or result.found}"
        if result.next_allowed_at is not None:
            text += f"; next power action allowed at {_iso(result.next_allowed_at)}"
        inc = self.store.get_incident(incident_id)
        if inc is None or inc["closed_at"] is not None:
            return
        # The report first: whoever sees the state sees the report with it.
        report = f"{self._report_text(target, result)}\nEscalated: {text}"
        self.store.set_report(incident_id, report)
        if not self._move(incident_id, "escalated", text):
            log.error("transition_refused", incident=incident_id, to="escalated")
            return
        log.warning(
            "incident_escalated",
            incident=incident_id,
            target=target,
            reason=reason,
            detail=result.detail,
            next_allowed_at=result.next_allowed_at,
        )
        if inc["state"] == "verifying" and self.store.last_step(incident_id, "notice") is not None:
            # Verifying an escalated incident again and still sick: the same episode, no news.
            return
        self.store.add_step(incident_id, "notice", {"event": "escalated", "reason": reason})
        self.observers.emit(
            "escalated", {"incident": incident_id, "target": target, "reason": reason, "report": report}
        )

    def _report_text(self, target: str, result: RemediationResult) -> str:
        now_text = describe_readings(self.feed.latest(target))
        report = result.report or _report(result, now_text)
        if result.report:
            report = f"{report}\n\nWatchdog sees now: {now_text}"
        return report

    def _finish(self, incident_id: int, target: str, result: RemediationResult, state: str, why: str) -> None:
        report = self._report_text(target, result)
        if state == "resolved":
            report = f"{report}\nConfirmed: {why}"
        self.store.set_report(incident_id, report)
        self.close(incident_id, state, why)
        self.observers.emit(
            state, {"incident": incident_id, "target": target, "reason": None, "report": report}
        )

    # -- an escalated incident, round by round ---------------------------

    def tend_escalated(self, inc: Mapping[str, Any], *, healthy: bool) -> str | None:
        """One step for an escalated incident after a probe round; what it did, if anything.

        1. healthy again: verify (the one verification path) and resolve;
        2. escalated for the budget, and the budget now allows an action: work it again;
        3. otherwise, remind at ``incidents.repeat_interval_seconds``, never more often.
        """
        incident_id, target = int(inc["id"]), str(inc["target"])
        if inc["state"] != "escalated" or incident_id in self._tasks or not self.holds(inc):
            return None
        if healthy:
            self._start(incident_id, self._verify_escalated(incident_id, target))
            return "verifying"
        notice = self.store.last_step(incident_id, "notice")
        why = (notice or {}).get("data", {}).get("reason")
        if why == "budget" and self.governor.check(target, Verb.CYCLE).allowed:
            self.resume(incident_id, "the power budget allows an action again")
            return "resumed"
        now = self._clock()
        if notice is not None and now < notice["at"] + self.cfg.incidents.repeat_interval_seconds:
            return None
        self.store.add_step(incident_id, "notice", {"event": "reminder", "reason": why})
        log.info("incident_reminder", incident=incident_id, target=target, reason=why)
        self.observers.emit(
            "reminder",
            {
                "incident": incident_id,
                "target": target,
                "reason": f"still escalated ({why}) and the target is still sick",
                "report": inc.get("report") or "",
            },
        )
        return "reminded"

    def resume(self, incident_id: int, why: str, *, by_person: bool = False) -> bool:
        """Work an escalated incident again (a person acted, or the budget allows); False if busy.

        A person's action takes the incident even from another live process: escalated,
        nobody is working it, and the claim is conditional on it still being escalated.
        """
        inc = self.store.get_incident(incident_id)
        if inc is None or inc["state"] != "escalated" or incident_id in self._tasks:
            return False
        taken = self.store.claim_incident(
            incident_id, self.owner, self._lease, take_from_state="escalated" if by_person else None
        )
        if taken is None:
            return False
        self.governor.settled(taken)
        self.store.add_step(incident_id, "note", {"text": f"resumed: {why}"})
        log.info("incident_resumed", incident=incident_id, target=inc["target"], why=why)
        self._start(incident_id, self._work_unguarded(incident_id))
        return True

    async def _verify_escalated(self, incident_id: int, target: str) -> None:
        if not self._move(
            incident_id, "verifying", "the target looks healthy again", from_state="escalated"
        ):
            return
        result = RemediationResult(outcome="nothing_to_do", found="the target recovered after the escalation")
        await self._verify_and_close(incident_id, target, result)

    def close(self, incident_id: int, state: str, why: str) -> None:
        """Close an active incident in ``state``, logging and announcing it; no-op if closed."""
        inc = self.store.get_incident(incident_id)
        if inc is None or inc["closed_at"] is not None:
            return
        if not self._move(incident_id, state, why):
            log.error("transition_refused", incident=incident_id, frm=inc["state"], to=state)
            return
        opened = inc["opened_at"]
        (log.info if state == "resolved" else log.warning)(
            "incident_closed",
            incident=incident_id,
            target=inc["target"],
            state=state,
            reason=why,
            duration=round(self._clock() - opened, 3),
        )
        self.observers.emit(
            "closed",
            {
                "incident": incident_id,
                "target": inc["target"],
                "state": state,
                "duration": self._clock() - opened,
            },
        )

    def _advance(self, incident_id: int, state: str, why: str) -> None:
        inc = self.store.get_incident(incident_id)
        if inc is not None and inc["state"] == "diagnosing":
            self._move(incident_id, state, why)

    def _move(self, incident_id: int, state: str, why: str, *, from_state: str | None = None) -> bool:
        """A transition, claimed only while this process holds the incident."""
        return self.store.transition(incident_id, state, why, from_state=from_state, owner=self.owner)

    def _record(self, incident_id: int, kind: str, data: dict[str, Any], target: str | None = None) -> None:
        self.store.add_step(incident_id, kind, data)
        if kind == "usage":
            self.store.add_tokens(incident_id, data["input_tokens"], data["output_tokens"])
        if kind in ("usage", "fallback") and target is not None:
            self.observers.emit(kind, {**data, "incident": incident_id, "target": target})


def _sent_verbs(inc: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(verb, result) of the power verbs an incident sent (ok, failed or unknown), oldest first."""
    return tuple(
        (str(p["verb"]), str(p["result"]))
        for p in inc.get("power_actions", ())
        if not p["dry_run"] and p["result"] in ("ok", "failed", "unknown")
    )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _report(result: RemediationResult, now_text: str) -> str:
    did = "; ".join(result.did) if result.did else "nothing"
    return f"Found: {result.found}\nDid: {did}\nState now: {now_text}"
