"""The devvm's inside: units, processes, memory, disk, journal and kernel log.

Faults are injected by changing this state, and repairs done through the
shell change it back, so what the tools print and whether a fault is still
present always follow from one model.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from breakglass.sim import catalog as c

# Memory the kernel keeps for itself (slab, page tables, stacks), kB.
_KERNEL_KB = 520_000
_SHMEM_KB = 186_112
_SWAP_BASE_KB = 209_712  # ~5 % of swap: pages idle daemons gave up long ago
_WMARK_LOW_KB = 22_000
_RESERVE_KB = 65_536
JOURNAL_FILE = 128 * c.MiB
_JOURNAL_ACTIVE = (("system.journal", 40 * c.MiB), ("user-1000.journal", 8 * c.MiB))


@dataclass
class Proc:
    """One process in the table."""

    pid: int
    user: str
    command: str
    rss_kb: int
    vsz_kb: int
    cpu_pct: float
    stat: str
    tty: str
    started: float
    unit: str | None = None
    kernel: bool = False


@dataclass
class Unit:
    """Runtime state of one systemd service."""

    spec: c.UnitSpec
    active: str = "inactive"  # active | inactive | failed
    sub: str = "dead"  # running | dead | failed
    result: str = "success"  # success | exit-code | signal
    since: float = 0.0
    main_pid: int | None = None
    exit_code: str = ""  # "status=1/FAILURE", "signal=KILL"


@dataclass
class JournalEntry:
    """One journal line."""

    ts: float
    ident: str
    pid: int | None
    message: str
    unit: str | None
    boot_id: str
    priority: int = 6


@dataclass
class MemInfo:
    """The memory numbers every tool derives its output from, in kB."""

    total: int
    free: int
    available: int
    buffers: int
    cached: int
    shmem: int
    sreclaimable: int
    sunreclaim: int
    anon: int
    swap_total: int
    swap_free: int
    swap_cached: int
    committed: int


@dataclass
class Guest:
    """Everything inside the simulated devvm."""

    now: float
    boot_at: float = 0.0
    boot_id: str = ""
    units: dict[str, Unit] = field(default_factory=dict)
    procs: dict[int, Proc] = field(default_factory=dict)
    disk: dict[str, int] = field(default_factory=dict)
    journal_archived: list[tuple[str, float, int]] = field(default_factory=list)
    journal: list[JournalEntry] = field(default_factory=list)
    dmesg: list[tuple[float, str]] = field(default_factory=list)
    next_pid: int = 400
    spike_until: float = 0.0
    hog_swap_kb: int = 0
    gone: set[str] = field(default_factory=set)

    # ---- life cycle -------------------------------------------------------------

    @classmethod
    def healthy(cls, now: float, uptime: float = 191_412.0, boot_id: str | None = None) -> Guest:
        """A devvm that booted ``uptime`` seconds ago (as boot ``boot_id``) with nothing wrong."""
        g = cls(now=now)
        g.disk = dict(c.BASE_DISK)
        target = int(c.ROOT_BLOCKS_KB * 1024 * 0.405)
        journal = JOURNAL_FILE + sum(s for _, s in _JOURNAL_ACTIVE)
        g.disk["/usr"] = target - sum(g.disk.values()) - journal
        g.journal_archived = [(archived_name(1, now - 6 * 86_400), now - 6 * 86_400, JOURNAL_FILE)]
        g.boot(now - uptime, boot_id)
        g.chatter(now - uptime + 300, now)
        return g

    def boot(self, at: float, boot_id: str | None = None) -> None:
        """Start the guest: fresh kernel log, processes and units, as after power-on."""
        self.boot_at = at
        self.boot_id = boot_id or uuid.uuid4().hex
        self.procs.clear()
        self.units = {spec.name: Unit(spec) for spec in c.UNITS}
        self.next_pid = 1
        self.hog_swap_kb = 0
        self.dmesg = [(0.0 if i == 0 else 0.01 * i * i, line) for i, line in enumerate(c.BOOT_DMESG)]
        self._spawn(c.ProcSpec("root", "/sbin/init", 13_212, 168_940, stat="Ss"), at)
        for name in c.KERNEL_THREADS:
            self._spawn(c.ProcSpec("root", name, 0, 0, stat="I<" if "/" in name else "S"), at,
                        kernel=True)
        self.next_pid = 312  # daemons start after udev's early work
        for spec in c.UNITS:
            if spec.enabled:
                self._start_unit(self.units[spec.name], at + 2.5)
        self.next_pid = max(self.next_pid, 700)
        for proc in c.USER_PROCS:
            self._spawn(proc, at + 60)
        self.next_pid = 2000

    def chatter(self, since: float, until: float) -> None:
        """The journal lines a quiet system writes anyway: hourly cron, daily apt timers."""
        hour = since - since % 3600 + 3600 + 17 * 60
        pid = 90_000
        while hour < until:
            pid += 311
            self.log(hour, "CRON", pid, "pam_unix(cron:session): session opened for user root(uid=0)"
                     " by (uid=0)", "cron.service")
            self.log(hour, "CRON", pid + 1, "(root) CMD (   cd / && run-parts --report "
                     "/etc/cron.hourly)", "cron.service")
            self.log(hour, "CRON", pid, "pam_unix(cron:session): session closed for user root",
                     "cron.service")
            if int(hour // 3600) % 12 == 6:
                self.log(hour + 120, "systemd", 1, "Starting apt-daily.service - Daily apt download "
                         "activities...")
                self.log(hour + 131, "systemd", 1, "apt-daily.service: Deactivated successfully.")
                self.log(hour + 131, "systemd", 1, "Finished apt-daily.service - Daily apt download "
                         "activities.")
            hour += 3600

    def power_off(self, at: float) -> None:
        """The guest is gone: nothing runs (disk and journal stay)."""
        self.log(at, "systemd", 1, "Stopping session-3.scope - Session 3 of User breakglass...")
        self.log(at, "systemd-shutdown", 1, "Sending SIGTERM to remaining processes...")
        for u in self.units.values():
            u.active, u.sub, u.main_pid = "inactive", "dead", None
        self.procs.clear()
        self.hog_swap_kb = 0
        self.spike_until = 0.0

    # ---- units and processes ------------------------------------------------------

    def _spawn(self, spec: c.ProcSpec, at: float, unit: str | None = None,
               kernel: bool = False) -> Proc:
        pid = self.next_pid
        self.next_pid += 1 if kernel or pid < 2000 else 37
        p = Proc(pid, spec.user, spec.command, spec.rss_kb, spec.vsz_kb, spec.cpu_pct, spec.stat,
                 spec.tty, at, unit, kernel)
        self.procs[pid] = p
        return p

    def _start_unit(self, unit: Unit, at: float) -> None:
        name, desc = unit.spec.name, unit.spec.description
        self.log(at, "systemd", 1, f"Starting {name} - {desc}...")
        pids = [self._spawn(s, at, unit=name).pid for s in unit.spec.procs]
        unit.active, unit.sub, unit.result, unit.since = "active", "running", "success", at
        unit.main_pid, unit.exit_code = pids[0], ""
        if name == c.HOG_UNIT:
            self.hog_swap_kb = int(c.SWAP_TOTAL_KB * 0.98) - _SWAP_BASE_KB
        if name == "postgresql.service":
            self.log(at, "postgres", pids[0], pg_line(at, pids[0], "LOG:  database system is ready "
                                                                "to accept connections"), name)
        self.log(at, "systemd", 1, f"Started {name} - {desc}.")

    def _drop_unit_procs(self, name: str) -> None:
        for pid in [p.pid for p in self.procs.values() if p.unit == name]:
            del self.procs[pid]
        if name == c.HOG_UNIT:
            self.hog_swap_kb = 0

    def start_unit(self, name: str, at: float) -> None:
        """``systemctl start``: no-op when already running."""
        unit = self.units[name]
        if unit.active != "active":
            self._start_unit(unit, at)

    def stop_unit(self, name: str, at: float) -> None:
        """``systemctl stop``: processes end, the unit is inactive."""
        unit = self.units[name]
        if unit.active == "active":
            self.log(at, "systemd", 1, f"Stopping {name} - {unit.spec.description}...")
            self._drop_unit_procs(name)
            self.log(at, "systemd", 1, f"{name}: Deactivated successfully.")
            self.log(at, "systemd", 1, f"Stopped {name} - {unit.spec.description}.")
        unit.active, unit.sub, unit.main_pid, unit.since = "inactive", "dead", None, at

    def restart_unit(self, name: str, at: float) -> None:
        """``systemctl restart``: stop (if running) then start; clears a failed state."""
        self.stop_unit(name, at)
        self._start_unit(self.units[name], at + 0.4)

    def fail_unit(self, name: str, at: float, result: str = "exit-code") -> None:
        """The unit's main process died; systemd marks it failed."""
        unit = self.units[name]
        pid = unit.main_pid
        self._drop_unit_procs(name)
        unit.exit_code = "status=1/FAILURE" if result == "exit-code" else "signal=KILL"
        how = "code=exited, status=1/FAILURE" if result == "exit-code" else "code=killed, status=9/KILL"
        self.log(at, "systemd", 1, f"{name}: Main process exited, {how}", pri=4)
        self.log(at, "systemd", 1, f"{name}: Failed with result '{result}'.", pri=4)
        self.log(at, "systemd", 1, f"{name}: Consumed 1min 12.418s CPU time.")
        unit.active, unit.sub, unit.result, unit.since, unit.main_pid = (
            "failed", "failed", result, at, pid)

    def kill(self, pid: int, at: float, signal: int) -> None:
        """Deliver ``signal`` to ``pid`` (which exists and may be signalled)."""
        p = self.procs[pid]
        if pid == 1 or p.kernel:
            return  # init and kernel threads ignore these signals
        unit = self.units.get(p.unit) if p.unit else None
        if unit is None:
            del self.procs[pid]
            return
        if unit.main_pid != pid:
            del self.procs[pid]
            return
        if unit.spec.name == c.HOG_UNIT:
            # The unit declares SuccessExitStatus=SIGKILL SIGTERM: it ends clean, not failed.
            sig = "KILL" if signal == 9 else "TERM"
            self._drop_unit_procs(unit.spec.name)
            self.log(at, "systemd", 1, f"{c.HOG_UNIT}: Main process exited, code=killed, "
                                       f"status={signal}/{sig}")
            self.log(at, "systemd", 1, f"{c.HOG_UNIT}: Deactivated successfully.")
            unit.active, unit.sub, unit.main_pid, unit.since = "inactive", "dead", None, at
            return
        self.fail_unit(unit.spec.name, at, result="signal")

    # ---- logs ------------------------------------------------------------------------

    def log(self, at: float, ident: str, pid: int | None, message: str,
            unit: str | None = None, pri: int = 6) -> None:
        """Append a journal entry."""
        if unit is None and ident == "systemd" and ".service" in message:
            unit = next((n for n in self.units if message.startswith((f"{n}:", "Start",
                         "Stop", "Fail")) and n in message), None)
        if unit is None and pid is not None:
            proc = self.procs.get(pid)
            unit = proc.unit if proc else None
        self.journal.append(JournalEntry(at, ident, pid, message, unit, self.boot_id, pri))

    def kmsg(self, at: float, message: str) -> None:
        """Append a kernel ring-buffer line (time since boot)."""
        self.dmesg.append((max(0.0, at - self.boot_at), message))

    # ---- numbers -----------------------------------------------------------------------

    def hog(self) -> Proc | None:
        """The leaking batch process, if it runs."""
        return next((p for p in self.procs.values() if p.command == c.HOG_COMMAND), None)

    def spiking(self, now: float) -> bool:
        """Whether the transient load spike is on at ``now``."""
        return now < self.spike_until

    def processes(self, now: float) -> list[Proc]:
        """The process table at ``now``, with the hog sized to fill memory."""
        procs = list(self.procs.values())
        if self.spiking(now):
            base = 9000
            procs += [Proc(base + 3 * i, c.SPIKE_PROC.user, c.SPIKE_PROC.command,
                           c.SPIKE_PROC.rss_kb, c.SPIKE_PROC.vsz_kb, c.SPIKE_PROC.cpu_pct,
                           c.SPIKE_PROC.stat, c.SPIKE_PROC.tty, now - 5) for i in range(12)]
        hog = self.hog()
        if hog is not None:
            m = self._mem_pressure(procs)
            hog.rss_kb = m
            hog.vsz_kb = m + self.hog_swap_kb + 31_204
        return sorted(procs, key=lambda p: p.pid)

    def _mem_pressure(self, procs: list[Proc]) -> int:
        others = sum(p.rss_kb for p in procs if p.command != c.HOG_COMMAND)
        return c.MEM_TOTAL_KB - _KERNEL_KB - 4_212 - (_SHMEM_KB + 82_020) - 112_064 - others

    def meminfo(self, now: float) -> MemInfo:
        """Memory as /proc/meminfo, free and ps all see it."""
        procs = self.processes(now)
        anon = sum(p.rss_kb for p in procs)
        if self.hog() is not None:
            buffers, cached, srec = 4_212, _SHMEM_KB + 82_020, 61_204
        else:
            buffers, cached, srec = 212_344, 3_480_120, 288_412
        free = c.MEM_TOTAL_KB - anon - _KERNEL_KB - buffers - cached
        pagecache = cached + buffers - _SHMEM_KB
        avail = (free - _RESERVE_KB + pagecache - min(pagecache // 2, _WMARK_LOW_KB)
                 + srec - min(srec // 2, _WMARK_LOW_KB))
        swap_used = _SWAP_BASE_KB + self.hog_swap_kb
        return MemInfo(
            total=c.MEM_TOTAL_KB, free=free, available=max(0, avail), buffers=buffers,
            cached=cached, shmem=_SHMEM_KB, sreclaimable=srec, sunreclaim=131_884, anon=anon,
            swap_total=c.SWAP_TOTAL_KB, swap_free=c.SWAP_TOTAL_KB - swap_used,
            swap_cached=88_316 if self.hog_swap_kb else 12_408,
            committed=anon + swap_used + 1_912_000,
        )

    def loadavg(self, now: float) -> tuple[float, float, float]:
        """Load averages: calm, swapping hard, or a compile storm."""
        load = (0.31, 0.27, 0.22)
        if self.hog() is not None:
            load = (12.43, 11.87, 9.61)
        if self.spiking(now):
            load = (max(load[0], 40.12), max(load[1], 14.3), max(load[2], 5.61))
        return load

    def journal_bytes(self) -> int:
        """Bytes the journal takes on disk."""
        return sum(s for _, _, s in self.journal_archived) + sum(s for _, s in _JOURNAL_ACTIVE)

    def files(self) -> dict[str, int]:
        """Every sized path on the root filesystem (journal files included)."""
        out = dict(self.disk)
        for name, _, size in self.journal_archived:
            out[f"{c.JOURNAL_DIR}/{name}"] = size
        for name, size in _JOURNAL_ACTIVE:
            out[f"{c.JOURNAL_DIR}/{name}"] = size
        return out

    def used_bytes(self) -> int:
        """Bytes used on the root filesystem (what df and ``du -s /`` report)."""
        return sum(self.disk.values()) + self.journal_bytes()

    def dirs(self) -> set[str]:
        """Every directory that exists in the model."""
        empty = [d for d in c.EMPTY_DIRS if d not in self.gone]
        out = {"/", c.JOURNAL_DIR, *empty}
        for path in [*self.files(), *empty]:
            parts = path.split("/")
            for i in range(2, len(parts) + 1):
                out.add("/".join(parts[:i]))
        return out

    def vacuum(self, keep_bytes: int | None = None, older_than: float | None = None
               ) -> list[tuple[str, int]]:
        """Delete archived journal files, oldest first; return what went."""
        gone: list[tuple[str, int]] = []
        while self.journal_archived:
            name, ts, size = self.journal_archived[0]
            if keep_bytes is not None and self.journal_bytes() <= keep_bytes:
                break
            if older_than is not None and ts >= older_than:
                break
            self.journal_archived.pop(0)
            gone.append((name, size))
        return gone

    def remove(self, path: str) -> int:
        """Delete ``path`` and all under it; return bytes freed."""
        path = path.rstrip("/") or "/"
        if path in self.dirs():
            self.gone.add(path)
        freed = 0
        for p in list(self.disk):
            if p == path or p.startswith(path + "/"):
                freed += self.disk.pop(p)
        for entry in list(self.journal_archived):
            full = f"{c.JOURNAL_DIR}/{entry[0]}"
            if full == path or full.startswith(path + "/"):
                self.journal_archived.remove(entry)
                freed += entry[2]
        return freed


def archived_name(seq: int, ts: float) -> str:
    """The file name journald gives an archived system journal."""
    return (f"system@{c.MACHINE_ID[:8]}b04c4e1f9d2a7c3e5b8f0a16-{seq * 4096 + 1:016x}-"
            f"{int(ts * 1_000_000):016x}.journal")


def pg_line(at: float, pid: int, text: str) -> str:
    """A PostgreSQL log line as its journal message."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
    return f"{stamp}.{int(at * 1000) % 1000:03d} UTC [{pid}] {text}"
