"""The Proxmox host's forced command: six bare verbs for one VM, JSON out.

Output shapes (one JSON object on stdout):

``status``::

    {"vmid": 102, "status": "running|stopped|paused", "uptime_seconds": 1234.5,
     "pid": 4242 | null, "qmp": {"ok": bool, "status": "running|io-error|..." | null,
     "error": str | null}, "guest_agent": {"ok": bool, "error": str | null},
     "captured_at": "2026-11-28T15:20:00Z"}

``forensics``: the status object plus ``config`` (the VM's qm config), ``pending``,
``blockstats`` ({"scsi0": {"io_status": "ok|failed", "rd_operations": n,
"wr_operations": n}}) and ``qmp_raw`` (the raw query-status answer).

``reset|stop|start|cycle``: forensics is captured first, then
``{"verb": .., "vmid": .., "ok": bool, "message": .., "forensics": "captured"}``,
exit 0 when done, 1 when the action cannot be done.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from breakglass.sim.shell import ExecResult, Session

if TYPE_CHECKING:
    from breakglass.sim.vm import HostView, SimVM

VERBS: tuple[str, ...] = ("status", "forensics", "reset", "stop", "start", "cycle")
POWER_VERBS: frozenset[str] = frozenset({"reset", "stop", "start", "cycle"})
REJECTION = ("breakglass-verbs: rejected: only status, forensics, reset, stop, start, cycle "
             "are accepted\n")


async def run(vm: SimVM, command: str) -> ExecResult:
    """Handle one forced-command request: the whole string must be one bare verb."""
    if "pve_unforced" in vm.host_view().misconfigured:
        # The key was added without command=: root's shell runs whatever was asked.
        out, err, code = Session(vm.guest, vm.clock()).run_line(command, root=True)
        return ExecResult(out, err, code)
    if command not in VERBS:
        vm.record_verb("rejected")
        return ExecResult("", REJECTION, 1)
    vm.record_verb(command)
    if command == "status":
        return _json(await _status(vm))
    if command == "forensics":
        return _json(await _forensics(vm))
    # Like the real forced command (which ignores SIGHUP), an accepted power verb runs
    # to the end even when the client hangs up halfway.
    return await asyncio.shield(asyncio.ensure_future(_power(vm, command)))


async def _power(vm: SimVM, command: str) -> ExecResult:
    received = vm.clock()
    vm.forensics_log.append(await _forensics(vm))
    ok, message = await _act(vm, command)
    vm.record_power(command, ok, at=received)
    out = {"verb": command, "vmid": vm.vmid, "ok": ok, "message": message,
           "forensics": "captured"}
    return _json(out, 0 if ok else 1)


async def _act(vm: SimVM, verb: str) -> tuple[bool, str]:
    if verb == "reset":
        return vm.power_reset()
    if verb == "start":
        return vm.power_start()
    if verb == "stop":
        ok, message = vm.power_stop_begin()
        if not ok:
            return ok, message
        await vm.stopping()
        return True, vm.power_stop_end()
    # cycle: stop (when not already off), then start a fresh QEMU.
    ok, _ = vm.power_stop_begin()
    if ok:
        await vm.stopping()
        vm.power_stop_end()
    vm.power_start()
    return True, f"VM {vm.vmid} stopped and started (fresh QEMU process)"


def _json(obj: dict[str, Any], status: int = 0) -> ExecResult:
    return ExecResult(json.dumps(obj) + "\n", "", status)


async def _status(vm: SimVM) -> dict[str, Any]:
    view = vm.host_view()
    if "io_stall" in view.faults and view.power != "stopped":
        # QMP sits behind the stalled block layer: the host waits, then gives up.
        await asyncio.sleep(view.qmp_timeout_seconds)
        view = vm.host_view()
    return status_object(view)


def status_object(view: HostView) -> dict[str, Any]:
    """What ``status`` reports for this view of the VM."""
    faults, vmid = view.faults, view.vmid
    if view.power == "stopped":
        down = f"VM {vmid} not running"
        qmp: dict[str, Any] = {"ok": False, "status": None, "error": down}
        agent: dict[str, Any] = {"ok": False, "error": down}
    elif "io_stall" in faults:
        qmp = {"ok": False, "status": None,
               "error": f"QMP query-status timed out after {view.qmp_timeout_seconds:g}s"}
        agent = {"ok": False, "error": "guest agent not responding"}
    else:
        qmp = {"ok": True, "status": "io-error" if view.power == "paused" else "running",
               "error": None}
        if view.power == "paused" or "guest_hang" in faults:
            agent = {"ok": False, "error": "guest agent not responding"}
        elif view.booting or "agent_off" in view.misconfigured:
            agent = {"ok": False, "error": "QEMU guest agent is not running"}
        else:
            agent = {"ok": True, "error": None}
    running = view.power != "stopped"
    return {
        "vmid": vmid,
        "status": view.power,
        "uptime_seconds": round(view.now - view.qemu_started, 1) if running else 0.0,
        "pid": view.qemu_pid if running else None,
        "qmp": qmp,
        "guest_agent": agent,
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(view.now)),
    }


async def _forensics(vm: SimVM) -> dict[str, Any]:
    status = await _status(vm)
    view = vm.host_view()
    failed = view.power != "stopped" and bool({"io_stall", "vm_paused"} & view.faults)
    rd, wr = view.disk_ops
    qmp = status["qmp"]
    return {
        **status,
        "config": {
            "name": "devvm", "cores": 4, "sockets": 1, "cpu": "x86-64-v2-AES", "memory": 16384,
            "balloon": 0, "ostype": "l26", "agent": "1,fstrim_cloned_disks=1", "boot": "order=scsi0",
            "scsihw": "virtio-scsi-single",
            "scsi0": "local-lvm:vm-102-disk-0,iothread=1,size=64G,discard=on",
            "net0": "virtio=BC:24:11:5E:0A:12,bridge=vmbr0,firewall=1",
            "onboot": 1, "smbios1": "uuid=0b6f4d1e-3a2c-4e8f-9d71-5c2e8a4b6f10",
        },
        "pending": {},
        "blockstats": {"scsi0": {"io_status": "failed" if failed else "ok",
                                 "rd_operations": rd, "wr_operations": wr}},
        "qmp_raw": ({"query-status": {"status": qmp["status"], "running": qmp["status"] == "running",
                                      "singlestep": False}}
                    if qmp["ok"] else {"error": qmp["error"]}),
    }
