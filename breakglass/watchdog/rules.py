"""Health rules: pure functions from one probe round's readings (and the time) to conditions.

Nothing here reads a clock or does I/O: ``now`` is always a parameter, so the
rules are tested round by round without freezing time.

How a condition moves
    Each round gives every condition a verdict: bad, good, or unknown. A
    condition fires after its threshold has held for its consecutive-round
    count or its for-duration (``bad_since`` to ``now``), and an active
    condition clears only after ``rules.clear_rounds`` consecutive good rounds
    (hysteresis, so a flapping VM does not open and close incidents).

Missing readings
    When SSH is down the guest-side readings (memory, disk, load, failed
    units) are None. Such a round is invisible to those conditions: it neither
    counts as bad nor as good, resets no counter, and an active condition stays
    active. The same holds for the Proxmox-side conditions (guest agent, VM
    status) when the Proxmox host cannot be asked. For duration rules,
    ``bad_since`` is kept across the gap: with no evidence that the pressure
    stopped, it is taken to have lasted.

Boot grace
    While ``now < state.grace_until`` (set by the caller with ``with_grace``
    after any power action or VM start) or while the readings show a running
    VM whose uptime is below ``rules.boot_grace_seconds``, no condition may
    newly fire. Counters keep advancing during grace, so a VM that never comes
    back fires on the first round after grace rather than one full rule-period
    later; grace delays a verdict but does not erase the evidence behind it.
    Already-active conditions stay active and may clear as usual.
    Two conditions are exempt, because booting cannot explain them:
    ``vm_not_running`` when the status is "stopped" or "paused" (a stopped or
    paused VM is not booting; after a ``start`` or ``cycle`` the host reports
    "running" as soon as QEMU runs, so a stopped status during grace means the
    power action did not take), and ``pve_unreachable`` (a guest's boot does
    not make its host unreachable).
    The uptime comes from Proxmox (the QEMU process): a ``reset`` keeps the
    same QEMU process, so the caller's ``grace_until`` is what covers resets.

Corroboration before a power verb is not decided here: the evidence policy
(:mod:`breakglass.incidents.policy`) is its one home.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from breakglass.config import RuleSettings
    from breakglass.watchdog.probes import Readings

SSH_DOWN = "ssh_down"
GUEST_AGENT_SILENT = "guest_agent_silent"
VM_NOT_RUNNING = "vm_not_running"
MEMORY_PRESSURE = "memory_pressure"
DISK_FULL = "disk_full"
LOAD_HIGH = "load_high"
UNITS_FAILED = "units_failed"
PVE_UNREACHABLE = "pve_unreachable"

# Every condition name, in display order; the names are bounded metric label values.
CONDITIONS: tuple[str, ...] = (
    SSH_DOWN,
    GUEST_AGENT_SILENT,
    VM_NOT_RUNNING,
    MEMORY_PRESSURE,
    DISK_FULL,
    LOAD_HIGH,
    UNITS_FAILED,
    PVE_UNREACHABLE,
)

# VM states in which the VM is certainly not booting (see "Boot grace" above).
_NOT_BOOTING_STATUSES = frozenset({"stopped", "paused"})


@dataclass(frozen=True)
class ConditionState:
    """Where one condition stands after the rounds seen so far."""

    active: bool = False
    bad_rounds: int = 0
    bad_since: float | None = None
    good_rounds: int = 0
    since: float | None = None  # when it became active
    note: str = ""  # what the last bad round showed


@dataclass(frozen=True)
class TargetState:
    """Every condition of one target, plus its boot-grace deadline."""

    conditions: Mapping[str, ConditionState] = field(default_factory=dict)
    grace_until: float | None = None

    def condition(self, name: str) -> ConditionState:
        """Return the state of condition ``name`` (inactive if never seen)."""
        return self.conditions.get(name, ConditionState())

    @property
    def active(self) -> tuple[str, ...]:
        """Active condition names, in display order."""
        return tuple(n for n in CONDITIONS if self.condition(n).active)


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one round: the new state and what changed."""

    state: TargetState
    fired: tuple[str, ...]
    cleared: tuple[str, ...]
    active: tuple[str, ...]
    detail: Mapping[str, str]  # human text per active condition
    in_grace: bool = False


@dataclass(frozen=True)
class _Verdict:
    bad: bool | None  # None: no reading this round, hold the state
    note: str = ""


@dataclass(frozen=True)
class _Need:
    rounds: int = 1
    seconds: float = 0.0


def _ssh(r: Readings, rules: RuleSettings) -> _Verdict:
    if not r.ssh_ok:
        return _Verdict(True, f"ssh login failed ({r.ssh_error or 'no error given'})")
    if r.ssh_login_seconds is not None and r.ssh_login_seconds > rules.ssh_slow_seconds:
        return _Verdict(True, f"ssh login slow ({r.ssh_login_seconds:.1f} s > {rules.ssh_slow_seconds:g} s)")
    return _Verdict(False)


def _guest_agent(r: Readings) -> _Verdict:
    if r.guest_agent_ok is None:
        return _Verdict(None)
    return _Verdict(not r.guest_agent_ok, "guest agent not answering")


def _vm_status(r: Readings) -> _Verdict:
    if r.vm_status is None:
        return _Verdict(None)
    return _Verdict(r.vm_status != "running", f"vm status {r.vm_status}")


def _memory(r: Readings, rules: RuleSettings) -> _Verdict:
    total, avail = r.mem_total_bytes, r.mem_available_bytes
    swap_total, swap_used = r.swap_total_bytes, r.swap_used_bytes
    if total is None or avail is None or swap_total is None or swap_used is None or total <= 0:
        return _Verdict(None)
    avail_ratio = avail / total
    # A VM without swap has nowhere left to spill either: count its swap as full.
    swap_ratio = swap_used / swap_total if swap_total > 0 else 1.0
    bad = avail_ratio < rules.mem_available_ratio and swap_ratio > rules.swap_used_ratio
    swap_text = f"swap {swap_ratio * 100:.0f}% used" if swap_total > 0 else "no swap"
    return _Verdict(bad, f"memory {avail_ratio * 100:.1f}% available, {swap_text}")


def _disk(r: Readings, rules: RuleSettings) -> _Verdict:
    if r.disk_used_ratio is None:
        return _Verdict(None)
    return _Verdict(
        r.disk_used_ratio >= rules.disk_used_ratio,
        f"root disk {r.disk_used_ratio * 100:.1f}% used (>= {rules.disk_used_ratio * 100:g}%)",
    )


def _load(r: Readings, rules: RuleSettings) -> _Verdict:
    if r.load1 is None or not r.ncpu:
        return _Verdict(None)
    per_cpu = r.load1 / r.ncpu
    return _Verdict(
        per_cpu > rules.load_per_cpu,
        f"load1 {r.load1:.2f} on {r.ncpu} cpus ({per_cpu:.1f} per cpu > {rules.load_per_cpu:g})",
    )


def _units(r: Readings) -> _Verdict:
    if r.failed_units is None:
        return _Verdict(None)
    names = ", ".join(r.failed_units[:5])
    more = f" and {len(r.failed_units) - 5} more" if len(r.failed_units) > 5 else ""
    return _Verdict(bool(r.failed_units), f"failed units: {names}{more}")


def _pve(r: Readings) -> _Verdict:
    return _Verdict(not r.pve_ok, f"proxmox host unreachable ({r.pve_error or 'no error given'})")


def _verdicts(r: Readings, rules: RuleSettings) -> dict[str, _Verdict]:
    return {
        SSH_DOWN: _ssh(r, rules),
        GUEST_AGENT_SILENT: _guest_agent(r),
        VM_NOT_RUNNING: _vm_status(r),
        MEMORY_PRESSURE: _memory(r, rules),
        DISK_FULL: _disk(r, rules),
        LOAD_HIGH: _load(r, rules),
        UNITS_FAILED: _units(r),
        PVE_UNREACHABLE: _pve(r),
    }


def _needs(rules: RuleSettings) -> dict[str, _Need]:
    return {
        SSH_DOWN: _Need(rounds=rules.ssh_rounds),
        GUEST_AGENT_SILENT: _Need(rounds=rules.guest_agent_rounds),
        VM_NOT_RUNNING: _Need(rounds=rules.vm_not_running_rounds),
        MEMORY_PRESSURE: _Need(seconds=rules.memory_for_seconds),
        DISK_FULL: _Need(rounds=rules.disk_rounds),
        LOAD_HIGH: _Need(seconds=rules.load_for_seconds),
        UNITS_FAILED: _Need(rounds=rules.failed_units_rounds),
        PVE_UNREACHABLE: _Need(rounds=rules.pve_rounds),
    }


def _exempt_from_grace(name: str, r: Readings) -> bool:
    if name == PVE_UNREACHABLE:
        return True
    return name == VM_NOT_RUNNING and r.vm_status in _NOT_BOOTING_STATUSES


def is_booting(r: Readings, rules: RuleSettings) -> bool:
    """True when Proxmox shows the VM running for less than the boot grace period."""
    return (
        r.vm_status == "running"
        and r.uptime_seconds is not None
        and r.uptime_seconds < rules.boot_grace_seconds
    )


def _step(
    prev: ConditionState,
    verdict: _Verdict,
    need: _Need,
    *,
    clear_rounds: int,
    now: float,
    may_fire: bool,
) -> tuple[ConditionState, str | None]:
    """Advance one condition by one round; return the new state and "fired"/"cleared"/None."""
    if verdict.bad is None:
        return prev, None
    if verdict.bad:
        bad_rounds = prev.bad_rounds + 1
        bad_since = prev.bad_since if prev.bad_since is not None else now
        if prev.active:
            return replace(
                prev, bad_rounds=bad_rounds, bad_since=bad_since, good_rounds=0, note=verdict.note
            ), None
        held = bad_rounds >= need.rounds and now - bad_since >= need.seconds
        fire = held and may_fire
        state = ConditionState(
            active=fire,
            bad_rounds=bad_rounds,
            bad_since=bad_since,
            since=now if fire else None,
            note=verdict.note,
        )
        return state, "fired" if fire else None
    if not prev.active:
        return ConditionState(), None
    good_rounds = prev.good_rounds + 1
    if good_rounds >= clear_rounds:
        return ConditionState(), "cleared"
    return replace(prev, good_rounds=good_rounds), None


def _describe(st: ConditionState, need: _Need, fresh: bool, now: float) -> str:
    if need.seconds > 0 and st.bad_since is not None:
        text = f"{st.note}, for {now - st.bad_since:.0f} s"
    else:
        text = f"{st.note}, {st.bad_rounds} round{'s' if st.bad_rounds != 1 else ''}"
    if st.good_rounds:
        text += f"; good for {st.good_rounds} round{'s' if st.good_rounds != 1 else ''}"
    if not fresh:
        text += "; no fresh reading"
    return text


def evaluate(prev: TargetState, readings: Readings, rules: RuleSettings, now: float) -> Evaluation:
    """Advance every condition of one target by one probe round."""
    grace_until = prev.grace_until if prev.grace_until is not None and now < prev.grace_until else None
    in_grace = grace_until is not None or is_booting(readings, rules)
    verdicts = _verdicts(readings, rules)
    needs = _needs(rules)
    conditions: dict[str, ConditionState] = {}
    fired: list[str] = []
    cleared: list[str] = []
    for name in CONDITIONS:
        may_fire = not in_grace or _exempt_from_grace(name, readings)
        st, event = _step(
            prev.condition(name),
            verdicts[name],
            needs[name],
            clear_rounds=rules.clear_rounds,
            now=now,
            may_fire=may_fire,
        )
        conditions[name] = st
        if event == "fired":
            fired.append(name)
        elif event == "cleared":
            cleared.append(name)
    state = TargetState(conditions=conditions, grace_until=grace_until)
    detail = {n: _describe(conditions[n], needs[n], verdicts[n].bad is not None, now) for n in state.active}
    return Evaluation(
        state=state,
        fired=tuple(fired),
        cleared=tuple(cleared),
        active=state.active,
        detail=detail,
        in_grace=in_grace,
    )


def with_grace(state: TargetState, until: float) -> TargetState:
    """Return ``state`` with boot grace extended to at least ``until`` (epoch seconds)."""
    if state.grace_until is not None and state.grace_until >= until:
        return state
    return replace(state, grace_until=until)


def health_problems(readings: Readings, rules: RuleSettings) -> list[str]:
    """What keeps this single round from being fully green; empty when it is green.

    Stricter than the rules: one round, no for-durations, and a missing reading
    is a problem, because a fix cannot be verified by what could not be seen.
    """
    r = readings
    problems: list[str] = []
    ssh = _ssh(r, rules)
    if ssh.bad:
        problems.append(ssh.note)
    if not r.pve_ok:
        problems.append(_pve(r).note)
    elif r.vm_status != "running":
        problems.append(f"vm status {r.vm_status or 'missing'}")
    if r.pve_ok and r.guest_agent_ok is not True:
        problems.append("guest agent not answering")
    if r.ssh_ok:
        for name, verdict in (
            (MEMORY_PRESSURE, _memory(r, rules)),
            (DISK_FULL, _disk(r, rules)),
            (LOAD_HIGH, _load(r, rules)),
            (UNITS_FAILED, _units(r)),
        ):
            if verdict.bad is None:
                problems.append(f"{name}: reading missing")
            elif verdict.bad:
                problems.append(verdict.note)
    return problems


def is_healthy(readings: Readings, rules: RuleSettings) -> bool:
    """True when this one round is fully green by the thresholds."""
    return not health_problems(readings, rules)


@dataclass(frozen=True)
class Building:
    """A condition whose threshold is crossed but has not held long enough to fire yet."""

    condition: str
    have: float
    need: float
    unit: str  # "rounds" or "s"
    note: str

    @property
    def text(self) -> str:
        """'ssh login failed (timeout): 2 of 3 rounds'."""
        return f"{self.note}: {self.have:.0f} of {self.need:.0f} {self.unit}"


def building(state: TargetState, rules: RuleSettings, now: float) -> tuple[Building, ...]:
    """Conditions on their way to firing (bad now, not yet active), in display order."""
    needs = _needs(rules)
    out: list[Building] = []
    for name in CONDITIONS:
        st = state.condition(name)
        if st.active or st.bad_rounds <= 0:
            continue
        need = needs[name]
        if need.seconds > 0 and st.bad_since is not None:
            out.append(Building(name, max(0.0, now - st.bad_since), need.seconds, "s", st.note))
        else:
            out.append(Building(name, st.bad_rounds, need.rounds, "rounds", st.note))
    return tuple(out)


def breaches(r: Readings, rules: RuleSettings) -> tuple[str, ...]:
    """Conditions whose threshold this one round crosses (whether or not they have fired)."""
    return tuple(name for name, v in _verdicts(r, rules).items() if v.bad)


def grace_ends(state: TargetState, r: Readings | None, rules: RuleSettings, now: float) -> float | None:
    """When boot grace ends, if the target is in it now (after a power action or a fresh boot)."""
    ends = [state.grace_until] if state.grace_until is not None and now < state.grace_until else []
    if r is not None and is_booting(r, rules) and r.uptime_seconds is not None:
        ends.append(r.at - r.uptime_seconds + rules.boot_grace_seconds)
    return max(ends) if ends else None
