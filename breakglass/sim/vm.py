"""One simulated VM: its power state, injected faults, and the two ways in (devvm, Proxmox).

The SSH servers call ``devvm_login``/``pve_login`` on each connection and
``devvm_exec``/``pve_exec`` on each exec request; the control API calls
``inject``/``clear``/``state``. All state follows the injected clock, so tests
can step time instead of sleeping; only latencies and hangs really wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from breakglass.sim import catalog, faults, pve
from breakglass.sim.guest import Guest
from breakglass.sim.shell import ExecResult, Session

__all__ = [
    "FAULTS", "MISCONFIGS", "REAL_HOST_WEDGED_STATUS_SECONDS", "ExecResult", "HostView", "SimTiming", "SimVM",
]

FAULTS: tuple[str, ...] = (
    "io_stall", "guest_hang", "vm_stopped", "unit_failed", "disk_full", "memory_hog",
    "sshd_dead", "load_spike", "vm_paused", "pve_unreachable", "network_partition",
)
# Set-up mistakes an operator can make (not faults: clear() keeps them), for `breakglass doctor`.
MISCONFIGS: tuple[str, ...] = (
    "sudo_password", "sudo_missing", "command_missing", "agent_off", "pve_unforced",
)
# The command that "command_missing" takes away from the guest.
MISSING_COMMAND = "journalctl"
# Faults held as plain flags; every other fault is read off the VM's state.
_FLAG_FAULTS = frozenset({"io_stall", "guest_hang", "pve_unreachable", "network_partition"})
# Faults under which the guest (or the path to it) does not answer at all.
_HANG_FAULTS = frozenset({"io_stall", "guest_hang", "vm_paused", "network_partition"})
# Faults that need a running guest to happen in.
_GUEST_FAULTS = frozenset({"unit_failed", "memory_hog", "sshd_dead", "load_spike", "vm_paused"})
_DISK_FULL_RATIO = 0.90
_HANG_POLL_SECONDS = 0.05
FORENSICS_KEPT = 20
# How long a real Proxmox host's `status` takes on a wedged QEMU at most: the forced
# command's QMP timeout, then `qm list` (deploy/pve/breakglass-verbs: QMP_TIMEOUT +
# LIST_TIMEOUT). A qmp_timeout_seconds for tests that must see a real host's wait.
REAL_HOST_WEDGED_STATUS_SECONDS = 7.0


@dataclass(frozen=True)
class SimTiming:
    """The simulator's time constants, in seconds."""

    boot_seconds: float
    stop_seconds: float
    command_latency_seconds: float
    slow_latency_seconds: float
    qmp_timeout_seconds: float  # how long status and forensics take while QMP is wedged (io_stall)
    hang_seconds: float
    load_spike_seconds: float

    @classmethod
    def profile(cls, name: Literal["test", "demo"]) -> SimTiming:
        """The named set of constants: ``test`` for the suite, ``demo`` for people."""
        if name == "test":
            return cls(boot_seconds=1.0, stop_seconds=0.1, command_latency_seconds=0.0,
                       slow_latency_seconds=0.3, qmp_timeout_seconds=0.2, hang_seconds=3600.0,
                       load_spike_seconds=2.0)
        if name == "demo":
            return cls(boot_seconds=20.0, stop_seconds=3.0, command_latency_seconds=0.05,
                       slow_latency_seconds=3.0, qmp_timeout_seconds=2.0, hang_seconds=3600.0,
                       load_spike_seconds=60.0)
        raise ValueError(f"unknown timing profile {name!r}; known: test, demo")


@dataclass(frozen=True)
class HostView:
    """What the Proxmox host can see of the VM at one instant."""

    vmid: int
    now: float
    power: Literal["running", "stopped", "paused"]
    booting: bool
    faults: frozenset[str]
    qemu_pid: int | None
    qemu_started: float
    qmp_timeout_seconds: float
    disk_ops: tuple[int, int]
    misconfigured: frozenset[str] = frozenset()


class SimVM:
    """A simulated devvm on a simulated Proxmox host, with fault injection."""

    def __init__(self, timing: SimTiming, *, vmid: int = 102,
                 clock: Callable[[], float] = time.time) -> None:
        self.timing = timing
        self.vmid = vmid
        self.clock = clock
        self._lock = threading.RLock()
        # Execs waiting out a hang right now: what a test waits on to know one is stalled.
        self.hanging_execs = 0
        now = clock()
        self.guest = Guest.healthy(now)
        self._power: Literal["running", "stopped", "paused"] = "running"
        self._booting_until = 0.0
        self._flags: set[str] = set()
        self._qemu_pid: int | None = 4242
        self._qemu_started = self.guest.boot_at - 3.2
        self.power_log: list[dict[str, Any]] = []
        self.verb_counts: Counter[str] = Counter()
        self.forensics_log: deque[dict[str, Any]] = deque(maxlen=FORENSICS_KEPT)
        self.misconfigured: set[str] = set()
        # Set while a test holds the host mid-stop: a stop ends only once it is released.
        self._stops_held: asyncio.Event | None = None

    # ---- control ---------------------------------------------------------------

    def inject(self, fault: str) -> None:
        """Make ``fault`` happen now.

        A no-op when it is already present, and for faults that live inside the
        guest (unit_failed, memory_hog, sshd_dead, load_spike, vm_paused) while
        the VM is stopped: there is no guest for them to happen in.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        with self._lock:
            now = self.clock()
            if fault in self._faults(now):
                return
            if self._power == "stopped" and fault in _GUEST_FAULTS:
                return
            g = self.guest
            if fault in _FLAG_FAULTS:
                self._flags.add(fault)
                if fault == "io_stall":
                    faults.stall_messages(g, now)
                elif fault == "guest_hang":
                    faults.soft_lockup(g, now)
            elif fault == "vm_stopped":
                self._power_off(now)
            elif fault == "vm_paused":
                if self._power == "running":
                    self._power = "paused"
            elif fault == "unit_failed":
                faults.crash_postgres(g, now)
            elif fault == "disk_full":
                faults.fill_disk(g, now)
            elif fault == "memory_hog":
                faults.start_hog(g, now)
            elif fault == "sshd_dead":
                faults.kill_sshd(g, now)
            elif fault == "load_spike":
                g.spike_until = now + self.timing.load_spike_seconds

    def misconfigure(self, mistake: str) -> None:
        """Make one set-up mistake (see MISCONFIGS); faults and clear() leave it in place."""
        if mistake not in MISCONFIGS:
            raise ValueError(f"unknown misconfiguration {mistake!r}; known: {', '.join(MISCONFIGS)}")
        with self._lock:
            self.misconfigured.add(mistake)

    def clear(self) -> None:
        """Remove every fault: a running, healthy VM (the history logs are kept)."""
        with self._lock:
            now = self.clock()
            running = self._power == "running" and now >= self._booting_until
            uptime = now - self.guest.boot_at if running else 0.0
            # A running VM keeps its boot: sessions that waited out a stall carry on.
            self.guest = Guest.healthy(now, uptime=uptime,
                                       boot_id=self.guest.boot_id if running else None)
            self._flags.clear()
            self._booting_until = 0.0
            if self._power != "running" or self._qemu_pid is None:
                self._new_qemu(now)
            self._power = "running"

    def state(self) -> dict[str, Any]:
        """The ground truth: power state, present faults, power verbs received, verb counts."""
        with self._lock:
            now = self.clock()
            return {
                "vm": self._vm_state(now),
                "vmid": self.vmid,
                "faults": sorted(self._faults(now)),
                "known_faults": list(FAULTS),
                "power_log": [dict(e) for e in self.power_log],
                "verb_counts": dict(self.verb_counts),
                "uptime_seconds": round(now - self.guest.boot_at, 3)
                if self._power != "stopped" else 0.0,
            }

    # ---- the devvm side ----------------------------------------------------------

    def devvm_login(self) -> Literal["ok", "refuse", "hang", "slow"]:
        """What an SSH connection to the devvm does right now."""
        with self._lock:
            now = self.clock()
            found = self._faults(now)
            if "network_partition" in found:
                return "hang"
            if self._power == "stopped":
                return "refuse"
            if found & _HANG_FAULTS:
                return "hang"
            if self._vm_state(now) == "booting" or "sshd_dead" in found:
                return "refuse"
            return "slow" if "memory_hog" in found else "ok"

    async def devvm_exec(self, command: str) -> ExecResult:
        """Run one exec request's command line in the guest, as user breakglass."""
        with self._lock:
            boot_id = self.guest.boot_id
            hangs = self._exec_hangs()
        if hangs and not await self._wait_out_hang(boot_id):
            return ExecResult("", "Connection to devvm closed by remote host.\n", 255)
        with self._lock:
            delay = self.timing.command_latency_seconds
            if "memory_hog" in self._faults(self.clock()):
                delay += self.timing.slow_latency_seconds
        if delay > 0:
            await asyncio.sleep(delay)
        with self._lock:
            if self._power == "stopped" or self.guest.boot_id != boot_id:
                return ExecResult("", "Connection to devvm closed by remote host.\n", 255)
            missing = {MISSING_COMMAND} if "command_missing" in self.misconfigured else set()
            if "sudo_missing" in self.misconfigured:
                missing.add("sudo")
            return Session(self.guest, self.clock(), sudo_password="sudo_password" in self.misconfigured,
                           missing=frozenset(missing)).run(command)

    def _exec_hangs(self) -> bool:
        return bool(self._faults(self.clock()) & _HANG_FAULTS)

    async def _wait_out_hang(self, boot_id: str) -> bool:
        """Wait until the hang ends; True when the same boot carries on, False otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timing.hang_seconds
        with self._lock:
            self.hanging_execs += 1
        try:
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(_HANG_POLL_SECONDS, left))
                with self._lock:
                    if self.guest.boot_id != boot_id or self._power == "stopped":
                        return False
                    if not self._exec_hangs():
                        return True
            return False
        finally:
            with self._lock:
                self.hanging_execs -= 1

    # ---- the Proxmox side --------------------------------------------------------

    def pve_login(self) -> Literal["ok", "refuse", "hang"]:
        """What an SSH connection to the Proxmox host does right now."""
        with self._lock:
            if "network_partition" in self._flags:
                return "hang"
            return "refuse" if "pve_unreachable" in self._flags else "ok"

    async def pve_exec(self, command: str) -> ExecResult:
        """Run the forced command with ``command`` as the client's requested command."""
        return await pve.run(self, command)

    def host_view(self) -> HostView:
        """A consistent snapshot of what the host sees (used by the forced command)."""
        with self._lock:
            now = self.clock()
            return HostView(
                vmid=self.vmid, now=now, power=self._power,
                booting=self._vm_state(now) == "booting", faults=frozenset(self._faults(now)),
                qemu_pid=self._qemu_pid, qemu_started=self._qemu_started,
                qmp_timeout_seconds=self.timing.qmp_timeout_seconds,
                disk_ops=(48_211 + len(self.guest.journal) * 7, 91_804 + len(self.guest.journal) * 3),
                misconfigured=frozenset(self.misconfigured),
            )

    def record_verb(self, verb: str) -> None:
        """Count one accepted (or, as "rejected", refused) forced-command request."""
        with self._lock:
            self.verb_counts[verb] += 1

    def record_power(self, verb: str, ok: bool, at: float) -> None:
        """Append one accepted power verb, with the time it arrived, to the ground-truth log."""
        with self._lock:
            self.power_log.append({"verb": verb, "at": at, "ok": ok})

    def power_reset(self) -> tuple[bool, str]:
        """Hard reset: the guest reboots in the same QEMU process."""
        with self._lock:
            now = self.clock()
            if self._power == "stopped":
                return False, f"VM {self.vmid} not running"
            self._flags.discard("guest_hang")
            self.guest.power_off(now)
            self.guest.boot(now)
            if self._power == "paused":
                # QEMU resets a paused VM's CPUs but leaves it paused.
                return True, f"VM {self.vmid} reset (still paused: io-error)"
            self._booting_until = now + self.timing.boot_seconds
            return True, f"VM {self.vmid} reset"

    def hold_stops(self) -> None:
        """Until :meth:`release_stops`, a stop the host makes does not end (call on the simulator's loop).

        A test that must act while a power verb is in flight holds it there as long as it
        needs, instead of racing a fixed ``stop_seconds``.
        """
        if self._stops_held is None:
            self._stops_held = asyncio.Event()

    def release_stops(self) -> None:
        """Let held stops (and later ones) end after ``stop_seconds`` (call on the simulator's loop)."""
        held, self._stops_held = self._stops_held, None
        if held is not None:
            held.set()

    async def stopping(self) -> None:
        """As long as the host takes to stop QEMU: ``stop_seconds``, and while a hold lasts."""
        await asyncio.sleep(self.timing.stop_seconds)
        held = self._stops_held
        if held is not None:
            await held.wait()

    def power_stop_begin(self) -> tuple[bool, str]:
        """Check a stop can start; the caller waits :meth:`stopping`, then calls power_stop_end."""
        with self._lock:
            if self._power == "stopped":
                return False, f"VM {self.vmid} not running"
            return True, ""

    def power_stop_end(self) -> str:
        """QEMU is gone: the VM is off."""
        with self._lock:
            self._power_off(self.clock())
            return f"VM {self.vmid} stopped"

    def power_start(self) -> tuple[bool, str]:
        """Start QEMU and boot the guest."""
        with self._lock:
            now = self.clock()
            if self._power != "stopped":
                return False, f"VM {self.vmid} already running"
            self._new_qemu(now)
            self.guest.boot(now)
            self._power = "running"
            self._booting_until = now + self.timing.boot_seconds
            return True, f"VM {self.vmid} started"

    # ---- internals -----------------------------------------------------------------

    def _new_qemu(self, now: float) -> None:
        self._qemu_pid = 4242 + int(now) % 50_000 + len(self.power_log) * 7
        self._qemu_started = now

    def _power_off(self, now: float) -> None:
        if self._power != "stopped":
            self.guest.power_off(now)
        self._power = "stopped"
        self._booting_until = 0.0
        self._qemu_pid = None
        # The QEMU process (and with it a stalled I/O path or a pause) is gone.
        self._flags -= {"io_stall", "guest_hang"}

    def _vm_state(self, now: float) -> Literal["running", "stopped", "booting", "paused"]:
        if self._power == "running" and now < self._booting_until:
            return "booting"
        return self._power

    def _faults(self, now: float) -> set[str]:
        g = self.guest
        found = set(self._flags)
        if self._power == "stopped":
            found.add("vm_stopped")
        else:
            if self._power == "paused":
                found.add("vm_paused")
            if g.units["postgresql.service"].active != "active":
                found.add("unit_failed")
            if g.units["ssh.service"].active != "active":
                found.add("sshd_dead")
            if g.hog() is not None:
                found.add("memory_hog")
            if g.spiking(now):
                found.add("load_spike")
        if g.used_bytes() >= _DISK_FULL_RATIO * catalog.ROOT_BLOCKS_KB * 1024:
            found.add("disk_full")
        return found
