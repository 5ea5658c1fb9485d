"""The deterministic remediator: the seed's procedure as code, least force first.

With SSH up it diagnoses in the guest (the probe's chained command, parsed by
the probe's parsers, plus uptime/free/dmesg as evidence) and repairs in place:

1. failed units: ``sudo systemctl restart UNIT``, confirmed by ``is-active``;
2. root disk at or above ``rules.disk_used_ratio``: journal vacuum to
   ``remediation.journal_vacuum_size`` and ``rm -rf PATH/*`` for each
   ``remediation.cleanup_paths`` entry (nothing else), confirmed by ``df``;
3. memory pressure (or sustained load, when the rules flagged ``load_high``):
   the top process by RSS (or CPU) is stopped only when
   ``remediation.hog_allowlist`` names it (its unit, or a substring of its
   command line): ``systemctl stop UNIT`` when its unit is known, else
   ``kill -9 PID``; otherwise escalate ("policy") with the top processes;
4. nothing wrong in the guest: if the Proxmox host cannot be reached, escalate
   ("pve_unreachable", no power action); else "nothing_to_do".

With SSH down it asks the Proxmox host (``status``, and ``forensics`` for a
running VM) and sends the least-force verb that
:func:`breakglass.incidents.policy.least_force` names for that evidence:
``start`` when stopped, ``cycle`` when QEMU is wedged (paused, QMP silent or
not running, failed block I/O: a ``reset`` would reuse the stalled QEMU),
``reset`` for a hung guest or a dead sshd, nothing when the host cannot be
reached or does not corroborate. The incident manager asks the same policy
again before the Governor sends anything.

It sends at most one verb per call and returns at once (``follow_up``): the
manager's one verification path (green probe rounds) judges the fix. If the
VM does not come back, the manager calls it again with the verbs already sent
(``ctx.previous_verbs``): a ``reset`` that did not help a guest whose agent is
dead is followed by ``cycle``; a verb already sent is never chosen again (it
escalates instead). Every command, observation and decision is recorded on
the incident with the evidence behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from breakglass.agent import diagnose
from breakglass.incidents import policy
from breakglass.incidents.context import RemediationContext, RemediationResult
from breakglass.remote import CommandResult, PveStatus, RemoteError, Verb
from breakglass.watchdog.parse import PROBE_COMMAND, parse_df_used_ratio
from breakglass.watchdog.probes import readings_from_output
from breakglass.watchdog.rules import LOAD_HIGH

RECORDED_OUTPUT = 4000


class _Runner(Protocol):
    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult: ...  # noqa: ASYNC109


@dataclass
class _Work:
    """What the runbook found and did so far."""

    found: list[str] = field(default_factory=list)
    did: list[str] = field(default_factory=list)

    def result(self, **kw: Any) -> RemediationResult:
        """A result carrying what was found and done so far."""
        kw.setdefault("found", "; ".join(self.found) or "nothing wrong found")
        return RemediationResult(did=tuple(self.did), **kw)


class _SshDown(Exception):
    """The guest could not be diagnosed over SSH."""

    def __init__(self, error: str, refused: bool) -> None:
        super().__init__(error)
        self.error = error
        self.refused = refused


class RunbookRemediator:
    """Diagnose and repair without a model."""

    name = "runbook"

    async def remediate(self, ctx: RemediationContext) -> RemediationResult:
        """Work one incident; never raises for expected remote failures."""
        if ctx.resume is not None:  # it keeps no conversation: a resumed pass is diagnosed afresh
            ctx.record("note", {"text": ctx.resume.note("diagnosing again")})
        work = _Work()
        try:
            result = await self._in_guest(ctx, work)
        except _SshDown as down:
            result = await self._from_host(ctx, work, down)
        return self._noted(ctx, result)

    def _noted(self, ctx: RemediationContext, result: RemediationResult) -> RemediationResult:
        """Operator instructions reach the runbook too: it records them (it follows its fixed procedure)."""
        said = ctx.instructions()
        if not said:
            return result
        for who, text, _ in said:
            self._decide(
                ctx,
                "note the operator's instruction",
                "the runbook follows its fixed procedure; a person or the model agent acts on free text",
                who=who,
                instruction=text,
            )
        notes = tuple(f"noted {who}'s instruction: {text[:120]}" for who, text, _ in said)
        return replace(result, did=(*result.did, *notes))

    # -- recording -------------------------------------------------------

    async def _run(self, ctx: RemediationContext, sh: _Runner, command: str) -> CommandResult | None:
        """Run one guest command and record it; None when the connection failed."""
        try:
            res = await sh.run(command)
        except RemoteError as exc:
            ctx.record("command", {"command": command, "exit_status": None, "error": f"{exc.kind}: {exc}"})
            return None
        ctx.record(
            "command",
            {
                "command": command,
                "exit_status": res.exit_status,
                "timed_out": res.timed_out,
                "output": (res.stdout + res.stderr)[:RECORDED_OUTPUT],
            },
        )
        return res

    def _decide(self, ctx: RemediationContext, decision: str, because: str, **evidence: Any) -> None:
        ctx.record("decision", {"decision": decision, "because": because, "evidence": evidence})

    # -- SSH up: repair in the guest ---------------------------------------

    @contextlib.asynccontextmanager
    async def _session(self, ctx: RemediationContext) -> AsyncIterator[_Runner]:
        """One connection for the whole diagnosis; _SshDown when it cannot be opened."""
        try:
            async with ctx.shell.session() as s:
                yield s
        except RemoteError as exc:
            ctx.record("evidence", {"ssh": f"{exc.kind}: {exc}"})
            raise _SshDown(f"{exc.kind}: {exc}", exc.kind == "refused") from None

    async def _in_guest(self, ctx: RemediationContext, work: _Work) -> RemediationResult:
        async with self._session(ctx) as sh:
            probe = await self._run(ctx, sh, PROBE_COMMAND)
            if probe is None or probe.timed_out or (probe.exit_status == 255 and not probe.stdout):
                why = "the diagnostic command hung" if probe and probe.timed_out else "the connection dropped"
                ctx.record("evidence", {"ssh": f"logged in, but {why}"})
                raise _SshDown(f"timeout: {why}", refused=False)
            fields = readings_from_output(probe.stdout, complete=probe.exit_status == 0)
            ctx.record("evidence", {"ssh": "ok", "readings": fields})
            await self._run(ctx, sh, diagnose.EVIDENCE_COMMAND)
            stuck = await self._repair_units(ctx, sh, work, fields)
            stuck += await self._free_disk(ctx, sh, work, fields)
            hog = await self._stop_hog(ctx, sh, work, fields)
        if hog is not None:
            return hog
        if stuck:
            return work.result(outcome="escalate", escalation="gave_up", detail="; ".join(stuck))
        if work.found:
            return work.result(outcome="acted")
        return await self._nothing_in_guest(ctx, work)

    async def _repair_units(
        self, ctx: RemediationContext, sh: _Runner, work: _Work, fields: dict[str, Any]
    ) -> list[str]:
        stuck: list[str] = []
        for unit in fields.get("failed_units") or ():
            q = shlex.quote(unit)
            work.found.append(f"unit {unit} failed")
            await self._run(ctx, sh, f"systemctl status {q} --no-pager | head -n 20")
            self._decide(
                ctx, f"restart {unit}", "a failed unit is restarted before anything stronger", unit=unit
            )
            await self._run(ctx, sh, f"sudo systemctl restart {q}")
            check = await self._run(ctx, sh, f"systemctl is-active {q}")
            state = check.stdout.strip() if check and check.stdout.strip() else "unknown"
            work.did.append(f"restarted {unit} (now {state})")
            if state != "active":
                stuck.append(f"{unit} is {state} after a restart")
        return stuck

    async def _free_disk(
        self, ctx: RemediationContext, sh: _Runner, work: _Work, fields: dict[str, Any]
    ) -> list[str]:
        rules, rem = ctx.config.rules, ctx.config.remediation
        disk = fields.get("disk_used_ratio")
        if disk is None or disk < rules.disk_used_ratio:
            return []
        work.found.append(f"root disk {disk:.0%} used")
        self._decide(
            ctx,
            "free disk space",
            f"root disk {disk:.1%} used >= {rules.disk_used_ratio:.0%}",
            disk_used_ratio=disk,
            cleanup_paths=list(rem.cleanup_paths),
        )
        await self._run(ctx, sh, f"sudo journalctl --vacuum-size={shlex.quote(rem.journal_vacuum_size)}")
        cleaned: list[str] = []
        for path in rem.cleanup_paths:
            refusal = diagnose.cleanup_refusal(path)
            if refusal is not None:
                self._decide(ctx, f"skip cleanup path {path!r}", refusal)
                continue
            # The glob stays outside the quotes so the guest's shell expands it.
            await self._run(ctx, sh, f"sudo rm -rf -- {shlex.quote(path.rstrip('/'))}/*")
            cleaned.append(path)
        after = await self._run(ctx, sh, "df -P /")
        now = parse_df_used_ratio(after.stdout) if after else None
        shown = f"{now:.0%}" if now is not None else "unknown"
        work.did.append(
            f"vacuumed the journal to {rem.journal_vacuum_size}, emptied "
            f"{', '.join(cleaned) or 'no cleanup path'}: root disk {disk:.0%} -> {shown}"
        )
        if now is None or now >= rules.disk_used_ratio:
            return [f"root disk still {shown} used after cleanup"]
        return []

    async def _stop_hog(
        self, ctx: RemediationContext, sh: _Runner, work: _Work, fields: dict[str, Any]
    ) -> RemediationResult | None:
        """Stop an allowlisted hog; a result when the incident must end here, else None."""
        rules, rem = ctx.config.rules, ctx.config.remediation
        pressure = diagnose.memory_pressure(fields, rules)
        kind, sort = "memory", "-rss"
        if pressure is None and LOAD_HIGH in ctx.conditions:
            # Load alone counts only when the rules saw it last (a short spike is nobody's fault).
            pressure = diagnose.load_high(fields, rules)
            kind, sort = "CPU", "-%cpu"
        if pressure is None:
            return None
        listing = await self._run(ctx, sh, f"ps aux --sort={sort} | head -n 8")
        procs = diagnose.parse_ps(listing.stdout) if listing else []
        if not procs:
            work.found.append(f"{kind} pressure ({pressure}), processes could not be listed")
            return work.result(outcome="escalate", escalation="gave_up", detail="ps gave no process list")
        top = procs[0]
        tree = await self._run(
            ctx, sh, f"systemctl status --no-pager {top.pid} 2>/dev/null || systemctl status --no-pager"
        )
        unit = diagnose.unit_of_pid(tree.stdout, top.pid) if tree else None
        owner = f" of {unit}" if unit else ""
        work.found.append(f"{kind} pressure ({pressure}); top: PID {top.pid}{owner} {top.command[:80]}")
        evidence = {
            "pressure": pressure,
            "top": [f"{p.pid} {p.user} {p.cpu:.1f}%cpu {p.mem:.1f}%mem {p.command[:100]}" for p in procs],
            "unit": unit,
        }
        # PID 1 is never stopped, whatever the allowlist says.
        entry = diagnose.hog_allowed(rem.hog_allowlist, top, unit) if top.pid > 1 else None
        if entry is None:
            self._decide(
                ctx,
                "leave it running",
                "remediation.hog_allowlist names neither its unit nor its command; a person decides",
                **evidence,
            )
            return work.result(
                outcome="escalate",
                escalation="policy",
                detail=f"{kind} hog PID {top.pid}{owner} ({top.command[:80]}) is not on "
                "remediation.hog_allowlist; left running",
            )
        if unit is not None:
            self._decide(ctx, f"stop {unit}", f"allowlist entry {entry!r} matches", **evidence)
            await self._run(ctx, sh, f"sudo systemctl stop {shlex.quote(unit)}")
            work.did.append(f"stopped {unit} (PID {top.pid}, {top.command[:60]})")
        else:
            self._decide(ctx, f"kill -9 {top.pid}", f"allowlist entry {entry!r} matches; no unit", **evidence)
            await self._run(ctx, sh, f"sudo kill -9 {top.pid}")
            work.did.append(f"killed PID {top.pid} ({top.command[:60]})")
        return await self._confirm_relief(ctx, sh, work, kind)

    async def _confirm_relief(
        self, ctx: RemediationContext, sh: _Runner, work: _Work, kind: str
    ) -> RemediationResult | None:
        if kind != "memory":
            return None  # load averages decay over minutes; the manager's rounds judge it
        after = await self._run(ctx, sh, "cat /proc/meminfo")
        still, avail = diagnose.pressure_in_meminfo(after.stdout if after else "", ctx.config.rules)
        if still is not None:
            return work.result(
                outcome="escalate", escalation="gave_up", detail=f"memory pressure remains: {still}"
            )
        work.did.append(f"MemAvailable now {avail:.0%}")
        return None

    async def _nothing_in_guest(self, ctx: RemediationContext, work: _Work) -> RemediationResult:
        try:
            st = await ctx.pve.status()
        except RemoteError as exc:
            found = "Proxmox host unreachable; the VM answers; no power action"
            ctx.record("evidence", {"pve": f"{exc.kind}: {exc}"})
            self._decide(ctx, "no power action", found, pve_error=f"{exc.kind}: {exc}")
            return work.result(
                outcome="escalate",
                found=found,
                escalation="pve_unreachable",
                detail=f"{found} ({exc.kind}: {exc})",
            )
        ctx.record("evidence", {"pve_status": st.raw})
        return work.result(
            outcome="nothing_to_do", found="nothing wrong found in the guest; the host sees it running"
        )

    # -- SSH down: ask the host --------------------------------------------

    async def _from_host(self, ctx: RemediationContext, work: _Work, down: _SshDown) -> RemediationResult:
        work.found.append(f"SSH down ({down.error})")
        try:
            st = await ctx.pve.status()
        except RemoteError as exc:
            found = "observer-side: devvm and Proxmox host both unreachable; no action"
            detail = f"{found} (devvm: {down.error}; Proxmox: {exc.kind}: {exc})"
            self._decide(ctx, "no power action", detail, ssh=down.error, pve=f"{exc.kind}: {exc}")
            return work.result(outcome="escalate", found=found, escalation="observer_side", detail=detail)
        ctx.record("evidence", {"pve_status": st.raw})
        if await self._still_booting(ctx, st):
            try:
                return await self._in_guest(ctx, _Work())
            except _SshDown as again:
                down = again
                st = await self._status_or_none(ctx) or st
        return await self._power_path(ctx, work, down, st)

    async def _power_path(
        self, ctx: RemediationContext, work: _Work, down: _SshDown, st: PveStatus
    ) -> RemediationResult:
        ev, forensics = await self._host_evidence(ctx, down, st)
        evidence: dict[str, Any] = {"ssh": down.error, "ssh_refused": down.refused, "pve_status": st.raw}
        if forensics:
            evidence["blockstats"] = forensics.get("blockstats")
        verb, because = policy.least_force(ev)
        work.found.append(because)
        if verb is None:
            self._decide(ctx, "no power action", because, **evidence)
            return work.result(outcome="escalate", escalation="policy", detail=because)
        sent = [v for v, _ in ctx.previous_verbs]
        if sent:
            verb, because = self._after(ctx, work, verb, because, sent, st)
            if verb is None:
                self._decide(ctx, "no further power action", because, **evidence)
                return work.result(outcome="escalate", escalation="gave_up", detail=because)
        ended = await self._power(ctx, work, verb, because, evidence, ev)
        if ended is not None:
            return ended
        return work.result(outcome="acted", follow_up=True)

    def _after(
        self, ctx: RemediationContext, work: _Work, verb: Verb, because: str, sent: list[str], st: PveStatus
    ) -> tuple[Verb | None, str]:
        """The next verb once ``sent`` did not bring the VM back: cycle after a reset, else none."""
        last = sent[-1]
        hung = verb is Verb.RESET and last == Verb.RESET.value and st.guest_agent_ok is False
        if hung and Verb.CYCLE.value not in sent:
            because = f"the guest did not come back after the reset ({because})"
            work.found.append(because)
            return Verb.CYCLE, because
        if verb.value in sent or (verb is Verb.RESET and Verb.CYCLE.value in sent):
            return None, f"the VM did not come back after {', '.join(sent)}; {verb.value} was already tried"
        return verb, because

    async def _host_evidence(
        self, ctx: RemediationContext, down: _SshDown, st: PveStatus
    ) -> tuple[policy.Evidence, dict[str, Any]]:
        """The policy's evidence: this SSH failure, the host's status and, for a running VM, forensics."""
        forensics: dict[str, Any] = {}
        if st.vm_status == "running":
            try:
                forensics = await ctx.pve.forensics()
            except RemoteError as exc:
                ctx.record("evidence", {"forensics": f"{exc.kind}: {exc}"})
            else:
                ctx.record("forensics", {"forensics": forensics})
        ssh: policy.SshResult = "refused" if down.refused else "timeout"
        ev = policy.Evidence.from_host(ssh, st, forensics=forensics, ssh_detail=down.error)
        ctx.record("evidence", {"policy_evidence": ev.as_dict()})
        return ev, forensics

    async def _power(
        self,
        ctx: RemediationContext,
        work: _Work,
        verb: Verb,
        because: str,
        evidence: dict[str, Any],
        ev: policy.Evidence,
    ) -> RemediationResult | None:
        """Send ``verb`` through the policy and the Governor; a result when the incident ends here."""
        self._decide(ctx, f"power {verb.value}", because, **evidence)
        out = await ctx.power(
            verb,
            trace={"because": because, "found": list(work.found), "evidence": evidence},
            evidence=ev,
        )
        if out.result == "ok":
            work.did.append(f"sent {verb.value}")
            return None
        if out.result == "dry_run":
            work.did.append(f"would send {verb.value} (dry run)")
            return work.result(outcome="acted")
        if out.result == "refused":
            work.did.append(f"{verb.value} refused by the policy")
            return work.result(outcome="escalate", escalation="policy", detail=out.decision.reason)
        if out.result == "denied":
            d = out.decision
            work.did.append(f"{verb.value} refused by the budget")
            return work.result(
                outcome="escalate", escalation="budget", detail=d.reason, next_allowed_at=d.next_allowed_at
            )
        work.did.append(f"{verb.value} {out.result}")
        return work.result(
            outcome="escalate", escalation="gave_up", detail=f"{verb.value} {out.result}: {out.output[:300]}"
        )

    # -- waiting -----------------------------------------------------------

    async def _status_or_none(self, ctx: RemediationContext) -> PveStatus | None:
        try:
            return await ctx.pve.status()
        except RemoteError:
            return None

    async def _still_booting(self, ctx: RemediationContext, st: PveStatus) -> bool:
        """A freshly started VM is left to boot: wait out the boot grace, True if SSH came up."""
        grace = ctx.config.rules.boot_grace_seconds
        up = st.uptime_seconds
        if not (st.vm_status == "running" and st.qmp_ok and st.qmp_status == "running"):
            return False
        if up is None or up >= grace or st.guest_agent_ok:
            return False
        self._decide(
            ctx, "wait for the boot", f"QEMU started {up:.0f} s ago, under the {grace:g} s boot grace"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace - up)
        while loop.time() < deadline:
            try:
                await ctx.shell.login()
            except RemoteError:
                await asyncio.sleep(min(ctx.config.probe.interval_seconds, max(0.0, deadline - loop.time())))
                continue
            ctx.record("evidence", {"boot": "SSH answers after the boot"})
            return True
        return False
