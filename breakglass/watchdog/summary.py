"""One-line, human descriptions of readings, for reports and the page."""

from __future__ import annotations

from breakglass.watchdog.probes import Readings

GIB = 1024**3


def describe_readings(r: Readings | None) -> str:
    """Describe a probe round tersely: VM state, SSH, load, memory, disk."""
    if r is None:
        return "unknown (no probe round yet)"
    parts: list[str] = []
    if r.pve_ok:
        vm = f"VM {r.vm_status or 'unknown'}"
        if r.qmp_ok is False:
            vm += ", QMP unresponsive"
        elif r.qmp_status and r.qmp_status != r.vm_status:
            vm += f", QMP {r.qmp_status}"
        if r.guest_agent_ok is False:
            vm += ", guest agent silent"
        parts.append(vm)
    else:
        parts.append(f"Proxmox host unreachable ({r.pve_error or 'error'})")
    if r.ssh_ok and r.ssh_login_seconds is not None:
        parts.append(f"SSH ok in {r.ssh_login_seconds:.2f} s")
    else:
        parts.append(f"SSH down ({r.ssh_error or 'error'})")
    if r.load1 is not None and r.ncpu:
        parts.append(f"load {r.load1:.2f} on {r.ncpu} CPUs")
    if r.mem_total_bytes and r.mem_available_bytes is not None:
        parts.append(f"memory {r.mem_available_bytes / r.mem_total_bytes:.0%} available")
    if r.swap_total_bytes and r.swap_used_bytes is not None:
        parts.append(f"swap {r.swap_used_bytes / r.swap_total_bytes:.0%} used")
    if r.disk_used_ratio is not None:
        parts.append(f"root disk {r.disk_used_ratio:.0%} used")
    if r.failed_units:
        parts.append("failed units: " + ", ".join(r.failed_units))
    return "; ".join(parts)
