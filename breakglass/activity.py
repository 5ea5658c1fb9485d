"""What the watchdog is doing or waiting for on one target, in words a person reads in an emergency.

A pure function of what the core already knows (rule state, latest readings,
incidents, silence, budget) and ``now``: no I/O, so each answer is tested
round by round. The page, the API (``/api/v1/status``) and the index stream
all show the same answer.

Health levels: ``healthy`` (every reading within its threshold, both probes
answered), ``degraded`` (a probe failed, a threshold is crossed but has not
held long enough, or the VM is in boot grace), ``failing`` (a condition is
active) and ``needs_person`` (an escalation is waiting for a person). The page
never says "healthy" while a condition is active or a probe failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from breakglass.watchdog.rules import TargetState, breaches, building, grace_ends

if TYPE_CHECKING:
    from breakglass.config import Config
    from breakglass.watchdog.probes import Readings

HEALTH_LEVELS = ("healthy", "degraded", "failing", "needs_person")


@dataclass(frozen=True)
class Reason:
    """One thing the watchdog is doing or waiting for; ``until`` when it ends, if known."""

    code: str
    text: str
    until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The API's shape."""
        return {"code": self.code, "text": self.text, "until": self.until}


def explain(
    cfg: Config,
    *,
    state: TargetState,
    readings: Readings | None,
    active: Mapping[str, Any] | None,
    latest: Mapping[str, Any] | None,
    silence: Mapping[str, Any] | None,
    remaining: int,
    next_allowed_at: float | None,
    now: float,
) -> dict[str, Any]:
    """Health, the reasons in order of importance (the first is what it is doing), and breached readings.

    ``active`` is the target's open incident, ``latest`` its newest incident of any state.
    """
    conditions = state.active
    probe_failed = readings is not None and not (readings.ssh_ok and readings.pve_ok)
    # An escalated incident stays open while the target is sick (schema 3); an older
    # store may hold a closed one, which still needs a person while the target is sick.
    open_escalation = active is not None and active.get("state") == "escalated"
    escalated = open_escalation or (
        active is None
        and latest is not None
        and latest.get("state") == "escalated"
        and (bool(conditions) or probe_failed)
    )
    reasons: list[Reason] = []
    if readings is None:
        reasons.append(Reason("waiting", "waiting for the first probe round"))
    if active is not None and not open_escalation:
        reasons.append(
            Reason("incident", f"working on incident #{active['id']} ({active.get('state', 'open')})")
        )
    if escalated:
        which = active if open_escalation else latest
        assert which is not None
        reasons.append(
            Reason(
                "escalated",
                f"escalated in incident #{which['id']}: waiting for a person to act or for the budget",
            )
        )
    if silence is not None:
        who = silence.get("who") or "someone"
        why = f": {silence['reason']}" if silence.get("reason") else ""
        reasons.append(Reason("silenced", f"silenced by {who}{why}", silence.get("expires_at")))
    if conditions and active is None and not escalated and silence is None:
        closed = latest.get("closed_at") if latest else None
        cooldown_ends = closed + cfg.incidents.cooldown_seconds if closed is not None else None
        if cooldown_ends is not None and now < cooldown_ends and latest is not None:
            reasons.append(
                Reason(
                    "cooldown", f"cooldown after incident #{latest['id']}: no new incident yet", cooldown_ends
                )
            )
        else:
            reasons.append(Reason("opening", "opening an incident"))
    for b in building(state, cfg.rules, now):
        reasons.append(Reason("building", f"condition building: {b.text}"))
    grace = grace_ends(state, readings, cfg.rules, now)
    if grace is not None:
        reasons.append(Reason("booting", "booting: conditions wait for the grace period", grace))
    if remaining <= 0:
        reasons.append(Reason("budget_spent", "power budget spent: no power action allowed", next_allowed_at))
    elif next_allowed_at is not None:
        reasons.append(Reason("min_gap", "next power action waits for the minimum gap", next_allowed_at))
    if not reasons:
        every = cfg.probe.interval_seconds
        reasons.append(Reason("probing", f"probing every {every:g} s; every reading within its threshold"))
    breached = list(breaches(readings, cfg.rules)) if readings is not None else []
    if escalated:
        health = "needs_person"
    elif conditions:
        health = "failing"
    elif probe_failed or breached or grace is not None or readings is None:
        health = "degraded"
    else:
        health = "healthy"
    first = reasons[0]
    return {
        "health": health,
        "needs_person": escalated,
        "doing": first.code,
        "text": first.text,
        "until": first.until,
        "reasons": [r.to_dict() for r in reasons],
        "breached": breached,
    }
