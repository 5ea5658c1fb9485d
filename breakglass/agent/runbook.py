"""The deterministic remediator: the seed's procedure as code, least force first.

With SSH up it diagnoses in the guest and repairs in place: restart failed
units, free a full root disk (journal vacuum, configured cleanup folders),
stop a memory or CPU hog only when the operator's allowlist names it.

With SSH down it asks the Proxmox host:

- host unreachable too: observer-side, no action, escalate;
- stopped: ``start``; paused: ``cycle`` (no verb resumes);
- running with QMP unresponsive, in io-error, or failed block I/O: ``cycle``
  (a ``reset`` reuses the stalled QEMU);
- QMP fine, guest agent dead: ``reset``, then ``cycle`` if not back in time;
- QMP and guest agent fine but sshd actively refuses: ``reset``;
- QMP and guest agent fine, SSH merely times out: the host does not
  corroborate, so no power action; escalate with the evidence.

Every command, observation and decision is recorded on the incident.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass, field
from typing import Any

from breakglass.incidents.context import RemediationContext, RemediationResult
from breakglass.remote import CommandResult, PveStatus, RemoteError, Verb
from breakglass.watchdog.parse import PROBE_COMMAND, parse_df_used_ratio
from breakglass.watchdog.probes import readings_from_output

RECORDED_OUTPUT = 4000


@dataclass
class _Work:
    """What the runbook found and did so far."""

    found: list[str] = field(default_factory=list)
    did: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Process:
    user: str
    pid: int
    cpu: float
    mem: float
    command: str


def parse_ps(text: str) -> list[_Process]:
    """Parse ``ps aux`` output into processes, in the order shown."""
    procs = []
    for line in text.splitlines()[1:]:
        parts = line.split(None, 10)
        if len(parts) < 11 or not parts[1].isdigit():
            continue
        try:
            procs.append(_Process(parts[0], int(parts[1]), float(parts[2]), float(parts[3]), parts[10]))
        except ValueError:
            continue
    return procs


class RunbookRemediator:
    """Diagnose and repair without a model."""

    name = "runbook"

    async def remediate(self, ctx: RemediationContext) -> RemediationResult:
        """Work one incident; never raises for expected remote failures."""
        work = _Work()
        res, error, refused = await self._probe(ctx)
        if res is not None:
            return await self._in_guest(ctx, work, res)
        return await self._from_host(ctx, work, error or "unreachable", refused)

    # -- helpers ---------------------------------------------------------

    async def _run(self, ctx: RemediationContext, command: str) -> CommandResult | None:
        try:
            res = await ctx.shell.run(command)
        except RemoteError as exc:
            ctx.record("command", {"command": command, "error": f"{exc.kind}: {exc}"})
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

    async def _probe(self, ctx: RemediationContext) -> tuple[dict[str, Any] | None, str | None, bool]:
        """Run the probe chain over SSH: (fields, None, False) or (None, error, refused)."""
        try:
            res = await ctx.shell.run(PROBE_COMMAND)
        except RemoteError as exc:
            ctx.record("evidence", {"ssh": f"{exc.kind}: {exc}"})
            return None, f"{exc.kind}: {exc}", exc.kind == "refused"
        if res.timed_out:
            ctx.record("evidence", {"ssh": "the diagnostic command timed out"})
            return None, "timeout: the diagnostic command hung", False
        fields = readings_from_output(res.stdout, complete=res.exit_status == 0)
        ctx.record("evidence", {"ssh": "ok", "readings": fields})
        await self._run(ctx, "uptime; sudo dmesg -T | tail -n 40")
        return fields, None, False

    # -- SSH up: repair in the guest ---------------------------------------

    async def _in_guest(
        self, ctx: RemediationContext, work: _Work, fields: dict[str, Any]
    ) -> RemediationResult:
        rules, rem = ctx.config.rules, ctx.config.remediation
        for unit in fields.get("failed_units") or ():
            work.found.append(f"unit {unit} failed")
            q = shlex.quote(unit)
            await self._run(ctx, f"systemctl status {q} --no-pager | head -n 20")
            self._decide(ctx, f"restart {unit}", "a failed unit is restarted before anything stronger")
            await self._run(ctx, f"sudo systemctl restart {q}")
            check = await self._run(ctx, f"systemctl is-active {q}")
            state = check.stdout.strip() if check else "unknown"
            work.did.append(f"restarted {unit} (now {state})")

        disk = fields.get("disk_used_ratio")
        if disk is not None and disk >= rules.disk_used_ratio:
            work.found.append(f"root disk {disk:.0%} used")
            self._decide(ctx, "free disk", f"root disk {disk:.1%} >= {rules.disk_used_ratio:.0%}")
            await self._run(ctx, f"sudo journalctl --vacuum-size={rem.journal_vacuum_size}")
            for path in rem.cleanup_paths:
                await self._run(ctx, f"sudo rm -rf {shlex.quote(path.rstrip('/'))}/*")
            after = await self._run(ctx, "df -P /")
            now = parse_df_used_ratio(after.stdout) if after else None
            shown = f"{now:.0%}" if now is not None else "unknown"
            work.did.append(
                f"vacuumed the journal to {rem.journal_vacuum_size} and cleaned "
                f"{', '.join(rem.cleanup_paths) or 'nothing'}: root disk {disk:.0%} -> {shown}"
            )

        hog = self._hog_kind(fields, ctx)
        if hog is not None:
            stopped = await self._stop_hog(ctx, work, hog)
            if not stopped:
                return RemediationResult(
                    outcome="escalate",
                    found="; ".join(work.found),
                    did=tuple(work.did),
                    escalation="policy",
                    detail=f"{hog} pressure from a process not on remediation.hog_allowlist; left running",
                )

        if not work.found:
            try:
                st = await ctx.pve.status()
            except RemoteError as exc:
                found = (
                    f"Proxmox host unreachable ({exc.kind}: {exc}); the VM answers over SSH; no power action"
                )
                ctx.record("evidence", {"pve": f"{exc.kind}: {exc}"})
                return RemediationResult(
                    outcome="escalate", found=found, escalation="pve_unreachable", detail=found
                )
            ctx.record("evidence", {"pve": st.raw})
            return RemediationResult(
                outcome="nothing_to_do", found="nothing wrong found in the guest or on the host"
            )
        return RemediationResult(outcome="acted", found="; ".join(work.found), did=tuple(work.did))

    def _hog_kind(self, fields: dict[str, Any], ctx: RemediationContext) -> str | None:
        rules = ctx.config.rules
        total, avail = fields.get("mem_total_bytes"), fields.get("mem_available_bytes")
        swap_total, swap_used = fields.get("swap_total_bytes"), fields.get("swap_used_bytes")
        if total and avail is not None and avail / total < rules.mem_available_ratio:
            swap_full = not swap_total or (swap_used or 0) / swap_total > rules.swap_used_ratio
            if swap_full:
                return "memory"
        load1, ncpu = fields.get("load1"), fields.get("ncpu")
        if load1 is not None and ncpu and load1 / ncpu > rules.load_per_cpu and "load_high" in ctx.conditions:
            return "cpu"
        return None

    async def _stop_hog(self, ctx: RemediationContext, work: _Work, kind: str) -> bool:
        sort = "-rss" if kind == "memory" else "-%cpu"
        res = await self._run(ctx, f"ps aux --sort={sort} | head -n 8")
        procs = parse_ps(res.stdout) if res else []
        if not procs:
            work.found.append(f"{kind} pressure, but the processes could not be listed")
            return False
        top = procs[0]
        work.found.append(f"{kind} pressure from PID {top.pid} ({top.command[:80]}, {top.mem:.0f}% memory)")
        for entry in ctx.config.remediation.hog_allowlist:
            if entry in top.command:
                self._decide(
                    ctx,
                    f"kill PID {top.pid}",
                    f"its command matches allowlist entry {entry!r}",
                    process=top.command,
                )
                await self._run(ctx, f"sudo kill -9 {top.pid}")
                work.did.append(f"killed PID {top.pid} ({top.command[:60]})")
                return True
            unit = entry if entry.endswith(".service") else f"{entry}.service"
            status = await self._run(ctx, f"systemctl status {shlex.quote(unit)} --no-pager")
            if status and (f"Main PID: {top.pid} " in status.stdout or f"─{top.pid} " in status.stdout):
                self._decide(
                    ctx,
                    f"stop {unit}",
                    f"PID {top.pid} belongs to allowlisted unit {unit}",
                    process=top.command,
                )
                await self._run(ctx, f"sudo systemctl stop {shlex.quote(unit)}")
                work.did.append(f"stopped {unit} (PID {top.pid}, {top.command[:60]})")
                return True
        self._decide(
            ctx,
            "leave it running",
            "not on remediation.hog_allowlist; a person must decide",
            process=top.command,
            top=[p.command[:80] for p in procs[:5]],
        )
        return False

    # -- SSH down: ask the host --------------------------------------------

    async def _from_host(
        self, ctx: RemediationContext, work: _Work, ssh_error: str, refused: bool
    ) -> RemediationResult:
        work.found.append(f"SSH down ({ssh_error})")
        try:
            st = await ctx.pve.status()
        except RemoteError as exc:
            detail = (
                f"observer-side: devvm ({ssh_error}) and Proxmox host ({exc.kind}: {exc}) both "
                "unreachable from the watchdog; no action"
            )
            self._decide(ctx, "no power action", detail)
            return RemediationResult(
                outcome="escalate", found=detail, escalation="observer_side", detail=detail
            )
        ctx.record("evidence", {"pve_status": st.raw})
        verb, because = await self._choose_verb(ctx, st, refused)
        if verb is None:
            work.found.append(because)
            self._decide(ctx, "no power action", because)
            return RemediationResult(
                outcome="escalate", found="; ".join(work.found), escalation="policy", detail=because
            )
        work.found.append(because)
        result = await self._power(ctx, work, verb, because)
        if result is not None:
            return result
        back = await self._wait_back(ctx)
        if not back and verb is Verb.RESET:
            because = "the guest did not come back after reset"
            work.found.append(because)
            result = await self._power(ctx, work, Verb.CYCLE, because)
            if result is not None:
                return result
            back = await self._wait_back(ctx)
        work.did.append("VM answers SSH again" if back else "VM did not answer SSH within the verify window")
        return RemediationResult(outcome="acted", found="; ".join(work.found), did=tuple(work.did))

    async def _choose_verb(
        self, ctx: RemediationContext, st: PveStatus, refused: bool
    ) -> tuple[Verb | None, str]:
        if st.vm_status == "stopped":
            return Verb.START, "VM is stopped"
        if st.vm_status == "paused":
            return Verb.CYCLE, f"VM is paused (QMP: {st.qmp_status}); no verb resumes it"
        if st.vm_status != "running":
            return None, f"VM status {st.vm_status!r}; cannot tell what is wrong"
        try:
            forensics = await ctx.pve.forensics()
        except RemoteError as exc:
            forensics = {}
            ctx.record("evidence", {"forensics": f"{exc.kind}: {exc}"})
        else:
            ctx.record("forensics", {"forensics": forensics})
        block_failed = any(
            isinstance(v, dict) and v.get("io_status") not in (None, "ok")
            for v in (forensics.get("blockstats") or {}).values()
        )
        if not st.qmp_ok or st.qmp_status in ("io-error", "internal-error") or block_failed:
            what = "QMP unresponsive" if not st.qmp_ok else f"QMP {st.qmp_status}"
            if block_failed:
                what += ", block I/O failed"
            return Verb.CYCLE, f"QEMU I/O stall ({what}); reset would reuse the stalled QEMU"
        if not st.guest_agent_ok:
            return Verb.RESET, "QEMU answers but the guest is hung (guest agent silent)"
        if refused:
            return Verb.RESET, "guest agent answers but sshd refuses connections; no in-guest path"
        return None, (
            "the host sees a healthy VM (QMP running, guest agent answers) while SSH times out: "
            "not corroborated, no power action"
        )

    async def _power(
        self, ctx: RemediationContext, work: _Work, verb: Verb, because: str
    ) -> RemediationResult | None:
        self._decide(ctx, f"power {verb.value}", because)
        out = await ctx.power(verb, trace={"because": because, "found": list(work.found)})
        if out.result == "ok":
            work.did.append(f"sent {verb.value}")
            return None
        if out.result == "dry_run":
            work.did.append(f"would send {verb.value} (dry run)")
            return RemediationResult(outcome="acted", found="; ".join(work.found), did=tuple(work.did))
        if out.result == "denied":
            d = out.decision
            return RemediationResult(
                outcome="escalate",
                found="; ".join(work.found),
                did=tuple(work.did),
                escalation="budget",
                detail=f"{verb.value} refused: {d.reason}",
                next_allowed_at=d.next_allowed_at,
            )
        return RemediationResult(
            outcome="escalate",
            found="; ".join(work.found),
            did=(*work.did, f"{verb.value} {out.result}"),
            escalation="gave_up",
            detail=f"{verb.value} {out.result}: {out.output[:300]}",
        )

    async def _wait_back(self, ctx: RemediationContext) -> bool:
        """Poll until the host says running and SSH logs in, within the verify window."""
        cfg = ctx.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.incidents.verify_timeout_seconds
        while loop.time() < deadline:
            try:
                st = await ctx.pve.status()
                if st.vm_status == "running":
                    await ctx.shell.login()
                    ctx.record("evidence", {"back": "VM running and SSH answers"})
                    return True
            except RemoteError:
                pass
            await asyncio.sleep(cfg.probe.interval_seconds)
        return False
