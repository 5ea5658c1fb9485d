"""The Governor: the only path by which reset, stop, start and cycle are sent.

For each power verb it:

1. captures ``forensics`` from the Proxmox host before anything mutates
   (when a look at the budget says the verb will be allowed);
2. claims the action: counting the sliding window (at most ``max_actions``
   in any ``window_seconds``), the minimum gap (``min_gap_seconds`` since the
   last one), spending an unused grant (exactly one action beyond the window)
   and inserting the ledger row happen in ONE store transaction, so two
   processes sharing the store can never both spend the last action; the
   row is committed BEFORE the verb is sent, so a crash or ``kill -9`` never
   refunds budget;
3. in dry-run mode the claim records "would send VERB" with the decision
   trace, and nothing is sent;
4. otherwise sends the verb (only on the row it claimed) and records the
   outcome, with a ``power_verb_sent`` log line.

Outcomes: ``ok`` (exit 0), ``failed`` (non-zero exit, or a connection that
was refused or failed authentication/host-key checks, so nothing was sent),
``unknown`` (a timeout, a dropped connection, bad output, or cancellation
after the row was written: the host may have acted), ``denied`` and
``dry_run``. ``ok``, ``failed``, ``unknown`` and rows still in flight count
against the budget; ``denied`` and ``dry_run`` do not.

A grant lifts the window budget by exactly one action; the minimum gap
still applies, so a grant never allows two verbs in quick succession.

On start, :meth:`Governor.recover` marks rows that never got an outcome as
``unknown``: they still count, and they are never re-sent. A row of an active
incident is settled that way by whichever process claims the incident (its
holder may be alive in another process, still sending); and with an ``owner``
a verb is claimed only for an incident this process holds, in the same
transaction as the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from breakglass.config import BudgetSettings
from breakglass.incidents import policy
from breakglass.incidents.policy import Evidence, Verdict
from breakglass.remote import POWER_VERBS, PveClient, RemoteError, Verb
from breakglass.store import Store

log = structlog.get_logger("breakglass.governor")

# Failures that prove the verb never reached the host: nothing was sent.
_NOT_SENT = frozenset({"refused", "host_key", "auth", "unreachable"})
# The ledger keeps the start of a verb's output; the incident step keeps all of it.
_DETAIL_CAP = 2000


@dataclass(frozen=True)
class Decision:
    """Whether a power verb may be sent now, and why."""

    allowed: bool
    verb: Verb
    reason: str
    next_allowed_at: float | None
    remaining: int
    used_grant: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The decision as stored data."""
        return {
            "allowed": self.allowed,
            "verb": self.verb.value,
            "reason": self.reason,
            "next_allowed_at": self.next_allowed_at,
            "remaining": self.remaining,
            "used_grant": self.used_grant,
        }


@dataclass(frozen=True)
class PowerOutcome:
    """What became of one requested power verb."""

    verb: Verb
    result: str  # ok | failed | denied | dry_run | unknown | refused (by the policy)
    decision: Decision
    ledger_id: int | None
    output: str
    forensics: dict[str, Any] | None


def policy_refusal(verdict: Verdict) -> PowerOutcome:
    """The outcome of a verb the evidence policy refused: nothing sent, no budget used."""
    decision = Decision(False, verdict.verb, f"refused by the policy: {verdict.reason}", None, 0)
    return PowerOutcome(verdict.verb, "refused", decision, None, "", None)


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


class Governor:
    """Budget, forensics-first, ledger-before-verb, dry run, grants."""

    def __init__(
        self,
        store: Store,
        budget: BudgetSettings,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        # This process's name for the incidents it holds: a verb is claimed only for one of them.
        self.owner = owner
        self.budget = budget
        self.clock = clock
        self._on_event = on_event or (lambda event, data: None)

    # -- the budget ------------------------------------------------------

    def check(self, target: str, verb: Verb) -> Decision:
        """Decide (without side effects) whether ``verb`` may be sent for ``target`` now."""
        now = self.clock()
        return self._decide(verb, now, *self._rows(target, now))

    def _rows(
        self, target: str, now: float
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
        """The rows the budget rule reads: actions in the window, the last action, an unused grant."""
        return (
            self.store.ledger_actions(target, now - self.budget.window_seconds),
            self.store.ledger_last_action(target),
            self.store.unused_grant(target),
        )

    def _decide(
        self,
        verb: Verb,
        now: float,
        used: list[dict[str, Any]],
        last: dict[str, Any] | None,
        grant: dict[str, Any] | None,
    ) -> Decision:
        """The budget rule on the rows that count: pure, so a claim can run it in its transaction."""
        b = self.budget
        remaining = max(0, b.max_actions - len(used))
        gap_until = last["at"] + b.min_gap_seconds if last else None
        in_gap = gap_until is not None and now < gap_until
        if remaining == 0 and grant is None:
            until: float | None = None  # max_actions 0: only a grant ever allows one
            if b.max_actions > 0:
                # The oldest action still counted must age out of the window first.
                window_until = used[len(used) - b.max_actions]["at"] + b.window_seconds if used else None
                until = max(t for t in (window_until, gap_until if in_gap else None, now) if t is not None)
            return Decision(
                False,
                verb,
                f"budget spent: {len(used)} of {b.max_actions} power actions in the last "
                f"{_span(b.window_seconds)}",
                until,
                0,
            )
        if in_gap and last is not None:
            return Decision(
                False,
                verb,
                f"minimum gap: last power action {_span(now - last['at'])} ago, "
                f"gap is {_span(b.min_gap_seconds)}",
                gap_until,
                remaining,
            )
        if remaining > 0:
            return Decision(
                True, verb, f"within budget: {remaining} of {b.max_actions} left", None, remaining - 1
            )
        assert grant is not None
        return Decision(
            True,
            verb,
            f"budget spent; using grant #{grant['id']} by {grant['who']}: {grant['why']}",
            None,
            0,
            used_grant=int(grant["id"]),
        )

    def claim(
        self, target: str, incident_id: int | None, verb: Verb, who: str, trace: dict[str, Any]
    ) -> tuple[Decision, int | None]:
        """Decide and write the ledger row in one store transaction: ``(decision, row id)``.

        The row is in flight (counting) when allowed and real, ``dry_run`` in a dry run,
        ``denied`` otherwise. Safe across processes sharing the store. With an ``owner``,
        the incident must still be held by this process, or nothing is written (row None).
        """
        now = self.clock()
        made: list[Decision] = []

        def decide(
            used: list[dict[str, Any]], last: dict[str, Any] | None, grant: dict[str, Any] | None
        ) -> tuple[bool, int | None, dict[str, Any]]:
            d = self._decide(verb, now, used, last, grant)
            made.append(d)
            return d.allowed, d.used_grant, {"decision": d.as_dict(), "trace": trace}

        _, row = self.store.ledger_claim(
            target,
            incident_id,
            verb.value,
            who,
            window_since=now - self.budget.window_seconds,
            decide=decide,
            dry_run=self.budget.dry_run,
            holder=self.owner,
        )
        if not made:
            reason = f"incident #{incident_id} is held by another watchdog process now"
            return Decision(False, verb, reason, None, 0), None
        return made[-1], row

    def remaining(self, target: str) -> tuple[int, float | None]:
        """(power actions left now, the time the next one is allowed when none is allowed now)."""
        # Every probe round asks: the rows check() reads, read once for both answers.
        now = self.clock()
        used, last, grant = self._rows(target, now)
        d = self._decide(Verb.CYCLE, now, used, last, grant)
        left = max(0, self.budget.max_actions - len(used)) + (1 if grant else 0)
        return left, (None if d.allowed else d.next_allowed_at)

    def grant(self, target: str, who: str, why: str) -> int:
        """Grant exactly one extra power action for ``target``, recording who and why."""
        if not who.strip() or not why.strip():
            raise ValueError("a grant needs who and why")
        grant_id = self.store.add_grant(target, who, why)
        self._on_event("grant", {"target": target, "who": who, "why": why, "grant": grant_id})
        return grant_id

    def recover(self) -> int:
        """Mark ledger rows that never got an outcome as ``unknown``; return how many.

        Rows of an active incident are left to whoever claims that incident (another
        live process may be sending that verb now); the claim settles them the same way.
        """
        why = "the watchdog stopped before the outcome was known"
        unfinished = self.store.ledger_unfinished()
        done = [row for row in unfinished if self.store.ledger_finish(row["id"], "unknown", why)]
        self.settled(done)
        return len(done)

    def settled(self, rows: list[dict[str, Any]]) -> None:
        """Announce rows found in flight and recorded ``unknown`` (at start, or on claiming an incident)."""
        for row in rows:
            target, verb = row["target"], row["verb"]
            log.warning("power_verb_unknown", target=target, verb=verb, ledger_id=row["id"])
            self._on_event("power_action", {"target": target, "verb": verb, "result": "unknown"})

    # -- sending ---------------------------------------------------------

    async def execute(
        self,
        target: str,
        incident_id: int,
        verb: Verb,
        pve: PveClient,
        *,
        who: str = "watchdog",
        trace: dict[str, Any] | None = None,
    ) -> PowerOutcome:
        """Send ``verb`` for ``target`` if the budget allows, forensics first, ledger row first."""
        if not isinstance(verb, Verb) or verb not in POWER_VERBS:
            raise ValueError(f"{verb!r} is not a power verb; the Governor only sends {sorted(POWER_VERBS)}")
        return await self._execute(target, incident_id, verb, pve, who, dict(trace or {}))

    async def judged(
        self,
        target: str,
        incident_id: int,
        verb: Verb,
        pve: PveClient,
        *,
        evidence: Evidence,
        who: str,
        trace: dict[str, Any] | None = None,
        on_allowed: Callable[[], None] | None = None,
    ) -> PowerOutcome:
        """Ask the evidence policy first; send through :meth:`execute` only if it allows ``verb``.

        The verdict is a ``policy`` step on the incident either way; a refusal sends
        nothing, writes no ledger row and uses no budget. ``on_allowed`` runs once the
        policy allows the verb, before the budget is asked (the manager moves the
        incident to ``remediating`` there, so a refused verb never reads as an action).
        """
        trace = dict(trace or {})
        judged = policy.verdict(verb, evidence)
        self.store.add_step(
            incident_id, "policy", {**judged.as_dict(), "requested_by": trace.get("requested_by", who)}
        )
        if not judged.allowed:
            self._on_event("power_action", {"target": target, "verb": verb.value, "result": "refused"})
            return policy_refusal(judged)
        if on_allowed is not None:
            on_allowed()
        return await self.execute(target, incident_id, verb, pve, who=who, trace=trace)

    async def _execute(
        self, target: str, incident_id: int, verb: Verb, pve: PveClient, who: str, trace: dict[str, Any]
    ) -> PowerOutcome:
        step = self.store.add_step
        # Forensics come before the claim when a look says the verb will be allowed, so a
        # slow host does not hold an in-flight row; the claim itself decides.
        forensics = await self._forensics(pve) if self.check(target, verb).allowed else None
        decision, row = self.claim(target, incident_id, verb, who, trace)
        if not decision.allowed:
            step(
                incident_id,
                "decision",
                {
                    "decision": f"{verb.value} refused",
                    "because": decision.reason,
                    "next_allowed_at": decision.next_allowed_at,
                    "trace": trace,
                },
            )
            self._emit(target, verb, "denied", decision, incident_id, row)
            return PowerOutcome(verb, "denied", decision, row, "", None)
        assert row is not None
        if forensics is None:  # the budget freed up between the look and the claim
            forensics = await self._forensics(pve)
        step(incident_id, "forensics", forensics)

        if self.budget.dry_run:
            step(
                incident_id,
                "decision",
                {
                    "decision": f"would send {verb.value} (dry run; nothing sent)",
                    "because": decision.reason,
                    "trace": trace,
                },
            )
            self._emit(target, verb, "dry_run", decision, incident_id, row)
            return PowerOutcome(verb, "dry_run", decision, row, "", forensics)

        step(
            incident_id,
            "decision",
            {"decision": f"send {verb.value}", "because": decision.reason, "ledger_id": row, "trace": trace},
        )
        log.info("power_verb_sending", target=target, verb=verb.value, incident=incident_id, ledger_id=row)
        try:
            result, output = await self._send(pve, verb)
        except BaseException as exc:
            # Cancelled (the core stopping) or an unexpected error mid-send: the verb may
            # have reached the host. Say so now rather than at the next start; re-raise.
            self.store.ledger_finish(row, "unknown", f"interrupted while sending: {exc!r}")
            step(incident_id, "verb", {"verb": verb.value, "result": "unknown", "output": repr(exc)})
            self._emit(target, verb, "unknown", decision, incident_id, row)
            raise
        self.store.ledger_finish(row, result, output[:_DETAIL_CAP])
        step(incident_id, "verb", {"verb": verb.value, "result": result, "output": output})
        self._emit(target, verb, result, decision, incident_id, row)
        return PowerOutcome(verb, result, decision, row, output, forensics)

    async def _forensics(self, pve: PveClient) -> dict[str, Any]:
        # A wedged host side must not block recovery: record the failure and go on.
        try:
            return {"captured": True, "forensics": await pve.forensics()}
        except RemoteError as exc:
            return {"captured": False, "error": f"{exc.kind}: {exc}"}

    async def _send(self, pve: PveClient, verb: Verb) -> tuple[str, str]:
        try:
            res = await pve.run(verb)
        except RemoteError as exc:
            # Refused before login: nothing reached the host. Anything later: it may have.
            return ("failed" if exc.kind in _NOT_SENT else "unknown"), f"{exc.kind}: {exc}"
        output = (res.stdout + res.stderr).strip()
        if res.timed_out:
            return "unknown", f"no answer within the verb timeout; the host may still be acting\n{output}"
        return ("ok" if res.exit_status == 0 else "failed"), output

    def _emit(
        self, target: str, verb: Verb, result: str, decision: Decision, incident_id: int, row: int | None
    ) -> None:
        # One line per decision: power_verb_sent (ok, failed, unknown), _denied or _dry_run.
        event = {"denied": "power_verb_denied", "dry_run": "power_verb_dry_run"}.get(
            result, "power_verb_sent"
        )
        (log.info if result in ("ok", "denied", "dry_run") else log.warning)(
            event,
            target=target,
            verb=verb.value,
            result=result,
            incident=incident_id,
            ledger_id=row,
            reason=decision.reason,
        )
        self._on_event(
            "power_action",
            {
                "target": target,
                "verb": verb.value,
                "result": result,
                "reason": decision.reason,
                "next_allowed_at": decision.next_allowed_at,
            },
        )
