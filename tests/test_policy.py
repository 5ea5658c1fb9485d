"""The evidence policy as a table: which power verbs each state of the host and guest allows."""

from __future__ import annotations

import pytest

from breakglass.incidents.policy import Evidence, least_force, verdict
from breakglass.remote import Verb

HEALTHY = {
    "ssh": "ok",
    "vm_status": "running",
    "qmp_ok": True,
    "qmp_status": "running",
    "guest_agent_ok": True,
}


def ev(**kw: object) -> Evidence:
    return Evidence(**{**HEALTHY, **kw})  # type: ignore[arg-type]


CASES = [
    # (evidence, verbs allowed, least-force verb)
    (ev(), set(), None),
    (ev(authorized_by="viktor"), {Verb.RESET, Verb.CYCLE, Verb.STOP}, None),
    (ev(ssh="timeout", qmp_ok=False, guest_agent_ok=False), {Verb.CYCLE, Verb.STOP}, Verb.CYCLE),
    (ev(ssh="timeout", qmp_status="io-error", guest_agent_ok=False), {Verb.CYCLE, Verb.STOP}, Verb.CYCLE),
    (
        ev(ssh="timeout", guest_agent_ok=False, failed_block_devices=("scsi0",)),
        {Verb.CYCLE, Verb.STOP},
        Verb.CYCLE,
    ),
    (ev(ssh="timeout", vm_status="paused", qmp_status="io-error"), {Verb.CYCLE, Verb.STOP}, Verb.CYCLE),
    (ev(ssh="timeout", guest_agent_ok=False), {Verb.RESET, Verb.CYCLE, Verb.STOP}, Verb.RESET),
    (ev(ssh="refused"), {Verb.RESET, Verb.CYCLE, Verb.STOP}, Verb.RESET),
    (ev(ssh="timeout"), set(), None),
    (
        ev(ssh="refused", vm_status="stopped", qmp_ok=False, qmp_status=None, guest_agent_ok=False),
        {Verb.START},
        Verb.START,
    ),
    (ev(ssh="error", vm_status=None, pve_error="refused: connection refused"), set(), None),
    (ev(ssh="ok", guest_agent_ok=False), set(), None),
    # the host's status is something else: cannot tell, even with an authorization
    (ev(ssh="timeout", vm_status="unknown", authorized_by="viktor"), set(), None),
    # an authorization never lets a reset reuse a wedged QEMU
    (ev(ssh="timeout", qmp_ok=False, authorized_by="viktor"), {Verb.CYCLE, Verb.STOP}, Verb.CYCLE),
]


@pytest.mark.parametrize(("evidence", "allowed", "best"), CASES)
def test_each_state_allows_exactly_its_verbs(
    evidence: Evidence, allowed: set[Verb], best: Verb | None
) -> None:
    got = {v for v in (Verb.RESET, Verb.STOP, Verb.START, Verb.CYCLE) if verdict(v, evidence).allowed}
    assert got == allowed
    assert least_force(evidence)[0] is best
    if best is not None:
        assert best in allowed


def test_a_refused_reset_on_a_wedged_qemu_names_cycle_and_carries_the_evidence() -> None:
    v = verdict(Verb.RESET, ev(ssh="timeout", qmp_ok=False, guest_agent_ok=False))
    assert not v.allowed
    assert v.instead is Verb.CYCLE
    assert "use cycle" in v.reason
    assert v.evidence["qmp_ok"] is False


def test_start_is_refused_unless_the_vm_is_stopped() -> None:
    v = verdict(Verb.START, ev(ssh="timeout", guest_agent_ok=False))
    assert not v.allowed
    assert "only when the VM is stopped" in v.reason
