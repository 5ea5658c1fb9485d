"""The one readings factory: a green probe round, and the shapes a sick round takes.

Tests change only what they are about: ``healthy_readings(load1=9.0)``,
``ssh_down(healthy_readings(), "timeout")``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from breakglass.watchdog.probes import Readings

GiB = 1024**3

# Everything read over SSH: unknown (None) in a round whose login failed.
SSH_FIELDS = (
    "ssh_login_seconds", "load1", "load5", "load15", "ncpu", "mem_total_bytes", "mem_available_bytes",
    "swap_total_bytes", "swap_used_bytes", "disk_used_ratio", "failed_units",
)
# Everything the Proxmox host reports: unknown (None) in a round where it did not answer.
PVE_FIELDS = ("vm_status", "qmp_ok", "qmp_status", "guest_agent_ok", "uptime_seconds")


# Overrides for a round whose SSH login timed out / whose Proxmox host refused.
SSH_DOWN: dict[str, Any] = {"ssh_ok": False, "ssh_error": "timeout", **dict.fromkeys(SSH_FIELDS)}
PVE_DOWN: dict[str, Any] = {"pve_ok": False, "pve_error": "refused", **dict.fromkeys(PVE_FIELDS)}


def healthy_readings(target: str = "devvm", at: float | None = None, **changes: Any) -> Readings:
    """A green probe round for ``target`` at ``at`` (now by default), with ``changes`` applied."""
    fields: dict[str, Any] = {
        "target": target,
        "at": time.time() if at is None else at,
        "duration_seconds": 0.4,
        "ssh_ok": True,
        "ssh_error": None,
        "ssh_refused": False,
        "ssh_login_seconds": 0.12,
        "load1": 0.5,
        "load5": 0.4,
        "load15": 0.3,
        "ncpu": 4,
        "mem_total_bytes": 8 * GiB,
        "mem_available_bytes": 5 * GiB,
        "swap_total_bytes": GiB,
        "swap_used_bytes": 0,
        "disk_used_ratio": 0.41,
        "failed_units": (),
        "pve_ok": True,
        "pve_error": None,
        "vm_status": "running",
        "qmp_ok": True,
        "qmp_status": "running",
        "guest_agent_ok": True,
        "uptime_seconds": 3600.0,
    }
    return Readings(**{**fields, **changes})


def ssh_down(r: Readings, error: str = "timeout", *, refused: bool = False, **changes: Any) -> Readings:
    """``r`` as a round whose SSH login failed: nothing read over SSH is known."""
    return dataclasses.replace(r, **{**SSH_DOWN, "ssh_error": error, "ssh_refused": refused, **changes})


def pve_down(r: Readings, error: str = "refused", **changes: Any) -> Readings:
    """``r`` as a round where the Proxmox host did not answer: nothing it reports is known."""
    return dataclasses.replace(r, **{**PVE_DOWN, "pve_error": error, **changes})
