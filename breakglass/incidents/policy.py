"""Which power verbs the evidence allows now, and why: one policy for every remediator.

The runbook and the model agent's ``pve`` tool both ask :func:`verdict`, and
the incident manager asks it again in front of the Governor, so a verb the
evidence does not support never reaches the host whoever proposed it. The
evidence (:class:`Evidence`) comes from the watchdog's own SSH login and the
Proxmox host's ``status``/``forensics`` (:func:`observe`), never from what a
model or an alert says. The seed's rule is the spine: power verbs are for a
guest unreachable over SSH or unrecoverable in place.

Rules, in order:

1. no host view (the Proxmox host did not answer): no power verb;
2. ``start`` only when the host says stopped, and a stopped VM gets only ``start``;
3. SSH and the guest agent both answer: no power verb, unless the person who
   opened the incident authorized one explicitly (``authorize_power`` on the
   manual trigger); SSH answering alone still means repair in place, unless
   QEMU itself is wedged (then ``cycle``);
4. QEMU wedged (QMP unresponsive, QMP run state not ``running`` such as
   ``io-error``, paused, or failed block I/O): never ``reset`` (it reuses the
   stalled QEMU) -- the answer names ``cycle``;
5. SSH down and the guest agent silent (QMP fine): ``reset`` (or ``cycle``/``stop``);
6. SSH refused while the guest agent answers (sshd dead): ``reset``/``cycle``;
7. SSH times out while QMP and the guest agent answer: not corroborated, no verb.

A ``stop`` is allowed where ``cycle`` is, but the remediator that sent it
must not leave it standing (the agent follows a model's ``stop`` with
``start`` or escalates saying the VM is stopped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from breakglass.remote import POWER_VERBS, DevvmShell, PveClient, PveStatus, RemoteError, Verb

SshResult = Literal["ok", "refused", "timeout", "error"]


@dataclass(frozen=True)
class Evidence:
    """The host's and the guest's state now, as the watchdog itself observed it."""

    ssh: SshResult
    ssh_detail: str = ""
    vm_status: str | None = None  # running | stopped | paused; None when the host did not answer
    qmp_ok: bool | None = None
    qmp_status: str | None = None
    guest_agent_ok: bool | None = None
    failed_block_devices: tuple[str, ...] = ()
    pve_error: str | None = None
    authorized_by: str | None = None  # who explicitly authorized a power verb when opening the incident

    @classmethod
    def from_host(
        cls,
        ssh: SshResult,
        st: PveStatus | None,
        *,
        forensics: Mapping[str, Any] | None = None,
        ssh_detail: str = "",
        pve_error: str | None = None,
    ) -> Evidence:
        """Evidence from an SSH result, a parsed ``status`` (or None) and ``forensics`` output."""
        if st is None:
            return cls(ssh=ssh, ssh_detail=ssh_detail, pve_error=pve_error or "no status")
        return cls(
            ssh=ssh,
            ssh_detail=ssh_detail,
            vm_status=st.vm_status,
            qmp_ok=st.qmp_ok,
            qmp_status=st.qmp_status,
            guest_agent_ok=st.guest_agent_ok,
            failed_block_devices=failed_block_devices(forensics or {}),
        )

    def qemu_wedged(self) -> list[str]:
        """The signs that QEMU itself is stuck (empty when it is not)."""
        signs: list[str] = []
        if self.vm_status == "paused":
            signs.append("VM paused")
        if self.qmp_ok is False:
            signs.append("QMP unresponsive")
        elif self.qmp_status not in (None, "running") and self.vm_status != "paused":
            signs.append(f"QMP run state {self.qmp_status}")
        signs.extend(f"block device {d} I/O failed" for d in self.failed_block_devices)
        return signs

    def as_dict(self) -> dict[str, Any]:
        """The evidence as stored data (a step on the incident, a tool result)."""
        return {
            "ssh": self.ssh,
            "ssh_detail": self.ssh_detail,
            "vm_status": self.vm_status,
            "qmp_ok": self.qmp_ok,
            "qmp_status": self.qmp_status,
            "guest_agent_ok": self.guest_agent_ok,
            "failed_block_devices": list(self.failed_block_devices),
            "pve_error": self.pve_error,
            "authorized_by": self.authorized_by,
        }


@dataclass(frozen=True)
class Verdict:
    """Whether one power verb is allowed now; ``instead`` names the verb to use when one fits."""

    verb: Verb
    allowed: bool
    reason: str
    instead: Verb | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The verdict as stored data."""
        return {
            "verb": self.verb.value,
            "allowed": self.allowed,
            "reason": self.reason,
            "instead": self.instead.value if self.instead else None,
            "evidence": self.evidence,
        }


def failed_block_devices(forensics: Mapping[str, Any]) -> tuple[str, ...]:
    """Block devices whose ``io_status`` in the forensics output is not ``ok``."""
    blocks = forensics.get("blockstats") if isinstance(forensics, Mapping) else None
    if not isinstance(blocks, Mapping):
        return ()
    return tuple(
        str(dev)
        for dev, stats in blocks.items()
        if isinstance(stats, Mapping) and stats.get("io_status") not in (None, "ok")
    )


def least_force(ev: Evidence) -> tuple[Verb | None, str]:
    """The least-force power verb the evidence calls for, or None, with the reason."""
    if ev.pve_error is not None:
        return None, f"the Proxmox host did not answer ({ev.pve_error}); no power verb without its view"
    if ev.vm_status == "stopped":
        return Verb.START, "the host reports the VM stopped"
    if ev.vm_status not in ("running", "paused"):
        return None, f"the host reports VM status {ev.vm_status!r}; cannot tell what is wrong"
    wedged = ev.qemu_wedged()
    if ev.ssh == "ok":
        if wedged:
            return Verb.CYCLE, f"QEMU is wedged ({', '.join(wedged)}) although SSH answers"
        ga = "and the guest agent answer" if ev.guest_agent_ok else "answers"
        return None, f"SSH {ga}: repair in place over the guest, or escalate"
    if wedged:
        return Verb.CYCLE, f"QEMU is wedged ({', '.join(wedged)}); a reset would reuse the stalled QEMU"
    if ev.guest_agent_ok is False:
        return Verb.RESET, "QEMU answers but the guest is hung (guest agent silent, SSH down)"
    if ev.ssh == "refused":
        return Verb.RESET, "the guest agent answers but sshd refuses connections; no in-guest path"
    return None, "the host sees a healthy VM while SSH times out: not corroborated, no power verb"


def verdict(verb: Verb, ev: Evidence) -> Verdict:
    """Whether ``verb`` may be sent now on this evidence, and why."""
    if verb not in POWER_VERBS:
        return Verdict(verb, True, f"{verb.value} only reads", evidence=ev.as_dict())
    allowed, reason, instead = _judge(verb, ev)
    return Verdict(verb, allowed, reason, instead, ev.as_dict())


def _judge(verb: Verb, ev: Evidence) -> tuple[bool, str, Verb | None]:
    best, why = least_force(ev)
    if ev.pve_error is not None:
        return False, why, None
    if ev.vm_status == "stopped":
        if verb is Verb.START:
            return True, why, None
        return False, f"the VM is already stopped; only start applies, not {verb.value}", Verb.START
    if verb is Verb.START:
        return False, f"start only when the VM is stopped; the host reports it {ev.vm_status}", best
    wedged = ev.qemu_wedged()
    if verb is Verb.RESET and wedged:
        return (
            False,
            f"QEMU is wedged ({', '.join(wedged)}): a reset reuses the stalled QEMU process; use cycle",
            Verb.CYCLE,
        )
    if ev.ssh == "ok" and ev.guest_agent_ok and not wedged:
        if ev.authorized_by:
            who = ev.authorized_by
            return True, f"SSH and the guest agent answer, but {who} authorized a power verb", None
        return (
            False,
            "SSH and the guest agent both answer: repair in place over devvm_shell or escalate; a power "
            "verb on a reachable guest needs the person opening the incident to authorize it",
            None,
        )
    if best is None:
        if ev.authorized_by and ev.vm_status in ("running", "paused"):
            return True, f"{why}; {ev.authorized_by} authorized a power verb", None
        return False, why, None
    if best is Verb.CYCLE:
        # QEMU wedged: only a fresh QEMU helps; stop is half of that and must be followed by start.
        if verb in (Verb.CYCLE, Verb.STOP):
            return True, why, None
        return False, f"{why}; use cycle", Verb.CYCLE
    # best is RESET: the guest is hung or sshd is dead while QEMU is fine; any of the three may run.
    return True, why, None


async def observe(
    shell: DevvmShell, pve: PveClient, *, authorized_by: str | None = None
) -> Evidence:
    """Probe now: one SSH login, the host's ``status`` and, when the VM runs, ``forensics``."""
    try:
        await shell.login()
        ssh: SshResult = "ok"
        ssh_detail = "login and `true` succeeded"
    except RemoteError as exc:
        ssh = "refused" if exc.kind == "refused" else ("timeout" if exc.kind == "timeout" else "error")
        ssh_detail = f"{exc.kind}: {exc}"
    try:
        st = await pve.status()
    except RemoteError as exc:
        ev = Evidence.from_host(ssh, None, ssh_detail=ssh_detail, pve_error=f"{exc.kind}: {exc}")
        return _authorized(ev, authorized_by)
    forensics: Mapping[str, Any] = {}
    if st.vm_status != "stopped":
        try:
            forensics = await pve.forensics()
        except RemoteError:
            forensics = {}
    return _authorized(Evidence.from_host(ssh, st, forensics=forensics, ssh_detail=ssh_detail), authorized_by)


def _authorized(ev: Evidence, who: str | None) -> Evidence:
    if not who:
        return ev
    from dataclasses import replace

    return replace(ev, authorized_by=who)
