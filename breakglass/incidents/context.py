"""What a remediator (runbook or model agent) is handed, and what it hands back.

The incident manager builds a :class:`RemediationContext` for each incident
and awaits ``remediator.remediate(ctx)``. The remediator diagnoses and acts
through the context only: guest commands through ``shell``, host verbs through
``pve`` (read-only verbs) and ``power`` (the Governor; the only way to send a
power verb), and every observation or decision through ``record``. It returns
a :class:`RemediationResult`; verification (green probe rounds) and the final
state belong to the manager: a remediator never waits for the VM to come back.
One that sent a power verb may ask to be called again if the manager cannot
verify the fix (``follow_up``); it then finds the verbs already sent in
``previous_verbs`` (from the store) and returns its next action, or escalates.

An incident left mid-pass by a stop, a crash or a lapsed lease is handed to the
remediator again with ``resume`` set: the incident's stored steps, oldest first,
and how it came back (a restart, or a takeover by another process). A remediator
that keeps a conversation (the model agent) rebuilds it from those steps and
goes on; one that does not diagnoses afresh. Either way it records a ``note``
saying where it resumed (:meth:`Resume.note`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from breakglass.config import Config, Target
from breakglass.incidents.policy import Evidence
from breakglass.remote import DevvmShell, PveClient, Verb
from breakglass.watchdog.probes import Readings

Outcome = Literal["acted", "nothing_to_do", "escalate"]

# Bounded escalation reasons (they become a metric label).
EscalationReason = Literal[
    "budget", "observer_side", "unverified", "gave_up", "policy", "pve_unreachable", "dry_run"
]


@dataclass(frozen=True)
class RemediationResult:
    """How a remediation ended: the manager verifies ``acted``/``nothing_to_do``."""

    outcome: Outcome
    found: str
    did: tuple[str, ...] = ()
    escalation: EscalationReason | None = None
    detail: str = ""
    next_allowed_at: float | None = None
    report: str | None = None  # a full report text (the agent's final answer); built from found/did if None
    # Sent a power verb: if the VM is not verified, diagnose again for the next action.
    follow_up: bool = False


class Instruction(NamedTuple):
    """A person's instruction on the incident: who, what, and its ``operator_instruction`` step's id."""

    who: str
    text: str
    step: int | None = None


@dataclass(frozen=True)
class Resume:
    """The incident's pass is taken up again, not started: after a restart or by a takeover.

    ``headline`` says which (``resumed after a restart``, or ``taken over from HOLDER,
    whose lease had lapsed``); ``steps`` are the incident's stored steps, oldest first
    (``id``, ``at``, ``kind``, ``data``), the conversation a model agent rebuilds.
    """

    headline: str
    steps: tuple[dict[str, Any], ...]

    def note(self, where: str) -> str:
        """The note for the incident: how it came back, then where it goes on."""
        return f"{self.headline}: {where}"


class PowerFn(Protocol):
    """Send a power verb for this incident: the policy judges ``evidence``, then the Governor.

    The result is a ``governor.PowerOutcome``; ``result`` is ``refused`` when the
    policy said no (nothing was sent and no budget was used).
    """

    def __call__(self, verb: Verb, *, trace: Mapping[str, Any], evidence: Evidence) -> Awaitable[Any]: ...


@dataclass
class RemediationContext:
    """Everything a remediator may use for one incident."""

    incident_id: int
    target: Target
    config: Config
    shell: DevvmShell
    pve: PveClient
    power: PowerFn  # returns a governor.PowerOutcome
    record: Callable[[str, dict[str, Any]], None]  # store a step on the incident as it happens
    latest: Readings | None  # the readings that triggered (or the newest round)
    conditions: tuple[str, ...]  # active rule conditions at open time
    trigger: str = "rule"
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    # Operator instructions added since the last call; each is returned once.
    instructions: Callable[[], list[Instruction]] = field(default=lambda: [])
    # On a follow-up (the VM was not verified after a verb): the power verbs this incident
    # sent, as (verb, result: ok, failed or unknown), oldest first. Empty on a fresh pass.
    previous_verbs: tuple[tuple[str, str], ...] = ()
    # Set when this pass was interrupted (stop, crash, lapsed lease) and is taken up again.
    resume: Resume | None = None


class Remediator(Protocol):
    """A runbook or an agent: diagnose and repair one incident."""

    name: str

    async def remediate(self, ctx: RemediationContext) -> RemediationResult: ...
