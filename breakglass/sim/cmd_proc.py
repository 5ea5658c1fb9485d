"""Processes and memory: /proc files, uptime, free, ps, kill, swapon, dmesg."""

from __future__ import annotations

import operator
import time

from breakglass.sim import catalog as c
from breakglass.sim import fmt
from breakglass.sim.guest import MemInfo, Proc
from breakglass.sim.shell import Command, Ctx, Out

_OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""


def meminfo_text(m: MemInfo) -> str:
    """/proc/meminfo as a 6.1 kernel prints it."""
    active_file = (m.cached + m.buffers - m.shmem) * 2 // 5
    inactive_file = m.cached + m.buffers - m.shmem - active_file
    active_anon = m.anon * 3 // 10
    inactive_anon = m.anon - active_anon + m.shmem
    rows: list[tuple[str, int, bool]] = [
        ("MemTotal", m.total, True), ("MemFree", m.free, True),
        ("MemAvailable", m.available, True), ("Buffers", m.buffers, True),
        ("Cached", m.cached, True), ("SwapCached", m.swap_cached, True),
        ("Active", active_anon + active_file, True),
        ("Inactive", inactive_anon + inactive_file, True),
        ("Active(anon)", active_anon, True), ("Inactive(anon)", inactive_anon, True),
        ("Active(file)", active_file, True), ("Inactive(file)", inactive_file, True),
        ("Unevictable", 0, True), ("Mlocked", 0, True),
        ("SwapTotal", m.swap_total, True), ("SwapFree", m.swap_free, True),
        ("Zswap", 0, True), ("Zswapped", 0, True), ("Dirty", 412, True), ("Writeback", 0, True),
        ("AnonPages", m.anon, True), ("Mapped", 402_116 if m.cached > 1_000_000 else 61_340, True),
        ("Shmem", m.shmem, True), ("KReclaimable", m.sreclaimable, True),
        ("Slab", m.sreclaimable + m.sunreclaim, True), ("SReclaimable", m.sreclaimable, True),
        ("SUnreclaim", m.sunreclaim, True), ("KernelStack", 9_872, True),
        ("PageTables", 38_204, True), ("SecPageTables", 0, True), ("NFS_Unstable", 0, True),
        ("Bounce", 0, True), ("WritebackTmp", 0, True),
        ("CommitLimit", m.total // 2 + m.swap_total, True), ("Committed_AS", m.committed, True),
        ("VmallocTotal", 34_359_738_367, True), ("VmallocUsed", 31_424, True),
        ("VmallocChunk", 0, True), ("Percpu", 3_456, True), ("HardwareCorrupted", 0, True),
        ("AnonHugePages", 0, True), ("ShmemHugePages", 0, True), ("ShmemPmdMapped", 0, True),
        ("FileHugePages", 0, True), ("FilePmdMapped", 0, True),
        ("HugePages_Total", 0, False), ("HugePages_Free", 0, False),
        ("HugePages_Rsvd", 0, False), ("HugePages_Surp", 0, False),
        ("Hugepagesize", 2048, True), ("Hugetlb", 0, True),
        ("DirectMap4k", 155_500, True), ("DirectMap2M", 6_135_808, True),
        ("DirectMap1G", 12_582_912, True),
    ]
    # The kernel pads names to 16 columns and values to 8; HardwareCorrupted has its own format.
    return "".join((f"{name}: {value:5d}" if name == "HardwareCorrupted"
                    else f"{name + ':':<15} {value:>8}") + (" kB\n" if kb else "\n")
                   for name, value, kb in rows)


def virtual_file(ctx: Ctx, path: str) -> str | None:
    """The text of a file the devvm can show, or None if it has no such file."""
    g = ctx.guest
    if path == "/proc/meminfo":
        return meminfo_text(g.meminfo(ctx.now))
    if path == "/proc/loadavg":
        procs = g.processes(ctx.now)
        l1, l5, l15 = g.loadavg(ctx.now)
        running = sum(1 for p in procs if p.stat.startswith("R")) + 1
        return f"{l1:.2f} {l5:.2f} {l15:.2f} {running}/{len(procs) + 140} {g.next_pid - 1}\n"
    if path == "/proc/uptime":
        up = ctx.now - g.boot_at
        return f"{up:.2f} {up * 3.71:.2f}\n"
    if path == "/proc/swaps":
        m = g.meminfo(ctx.now)
        return ("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
                f"{c.SWAP_DEVICE:<40}partition\t{m.swap_total}\t\t{m.swap_total - m.swap_free}"
                "\t\t-2\n")
    if path in ("/etc/hostname", "/proc/sys/kernel/hostname"):
        return f"{c.HOSTNAME}\n"
    if path == "/etc/os-release":
        return _OS_RELEASE
    if path == "/etc/debian_version":
        return "12.8\n"
    return None


def _uptime(ctx: Ctx, args: list[str], stdin: str) -> Out:
    g = ctx.guest
    up = int(ctx.now - g.boot_at)
    days, rest = divmod(up, 86_400)
    hours, minutes = rest // 3600, rest % 3600 // 60
    if "-p" in args:
        parts = [f"{days} day{'s' * (days != 1)}"] if days else []
        parts += [f"{hours} hour{'s' * (hours != 1)}"] if hours else []
        parts += [f"{minutes} minute{'s' * (minutes != 1)}"]
        return "up " + ", ".join(parts) + "\n", "", 0
    if "-s" in args:
        return time.strftime("%Y-%m-%d %H:%M:%S\n", time.gmtime(g.boot_at)), "", 0
    clock = f"{hours:2d}:{minutes:02d}" if hours else f"{minutes} min"
    since = (f"{days} day{'s' * (days != 1)}, " if days else "") + clock
    l1, l5, l15 = g.loadavg(ctx.now)
    now = time.strftime("%H:%M:%S", time.gmtime(ctx.now))
    return (f" {now} up {since},  1 user,  load average: {l1:.2f}, {l5:.2f}, {l15:.2f}\n", "", 0)


def _free(ctx: Ctx, args: list[str], stdin: str) -> Out:
    m = ctx.guest.meminfo(ctx.now)
    flags = "".join(a.lstrip("-") for a in args if a.startswith("-") and not a.startswith("--"))
    longs = {a for a in args if a.startswith("--")}

    def show(kb: int) -> str:
        if "h" in flags or "--human" in longs:
            return fmt.human_free(kb * 1024)
        if "b" in flags or "--bytes" in longs:
            return str(kb * 1024)
        if "g" in flags or "--giga" in longs:
            return str(kb // 1024**2)
        if "m" in flags or "--mega" in longs:
            return str(kb // 1024)
        return str(kb)

    buff_cache = m.buffers + m.cached + m.sreclaimable
    used = m.total - m.available
    swap_used = m.swap_total - m.swap_free
    out = ["               total        used        free      shared  buff/cache   available\n",
           f"{'Mem:':<8}" + "".join(f" {show(v):>11}" for v in (
               m.total, used, m.free, m.shmem, buff_cache, m.available)) + "\n",
           f"{'Swap:':<8}" + "".join(f" {show(v):>11}" for v in (
               m.swap_total, swap_used, m.swap_free)) + "\n"]
    return "".join(out), "", 0


def _user(name: str) -> str:
    return name if len(name) <= 8 else name[:7] + "+"


def _start(p: Proc, now: float) -> str:
    if now - p.started < 86_400:
        return time.strftime("%H:%M", time.gmtime(p.started))
    return time.strftime("%b%d", time.gmtime(p.started))


def ps_lines(ctx: Ctx, procs: list[Proc]) -> list[str]:
    """``ps aux`` rows for ``procs``, in that order."""
    rows = []
    for p in procs:
        cpu_s = int(p.cpu_pct / 100 * (ctx.now - p.started))
        mem = p.rss_kb * 100 / c.MEM_TOTAL_KB
        rows.append(f"{_user(p.user):<8} {p.pid:>7} {p.cpu_pct:4.1f} {mem:4.1f} {p.vsz_kb:>6} "
                    f"{p.rss_kb:>5} {p.tty:<8} {p.stat:<4} {_start(p, ctx.now):>5} "
                    f"{cpu_s // 60:>3}:{cpu_s % 60:02d} {p.command}")
    return rows


_SORT_KEYS = {"rss": "rss_kb", "rssize": "rss_kb", "%mem": "rss_kb", "pmem": "rss_kb",
              "%cpu": "cpu_pct", "pcpu": "cpu_pct", "pid": "pid", "vsz": "vsz_kb",
              "vsize": "vsz_kb", "user": "user", "start_time": "started"}


def _ps(ctx: Ctx, args: list[str], stdin: str) -> Out:
    g = ctx.guest
    procs = g.processes(ctx.now)
    # The session itself: sshd's two halves and this ps.
    session = [Proc(g.next_pid, "root", "sshd: breakglass [priv]", 10_112, 17_624, 0.0, "Ss", "?",
                    ctx.now),
               Proc(g.next_pid + 6, c.LOGIN_USER, "sshd: breakglass@notty", 6_836, 17_888, 0.0,
                    "S", "?", ctx.now),
               Proc(g.next_pid + 7, "root" if ctx.root else c.LOGIN_USER, "ps " + " ".join(args),
                    3_968, 11_196, 0.0, "R", "?", ctx.now)]
    procs = procs + session
    sort = next((a.split("=", 1)[1] for a in args if a.startswith("--sort=")), None)
    if sort is None and "--sort" in args and args.index("--sort") + 1 < len(args):
        sort = args[args.index("--sort") + 1]
    if sort:
        for key in reversed(sort.split(",")):
            desc = key.startswith("-")
            field = _SORT_KEYS.get(key.lstrip("+-"))
            if field is None:
                return "", ("error: unknown sort specifier\n\nUsage:\n ps [options]\n\n Try 'ps "
                             "--help <simple|list|output|threads|misc|all>'\n"), 1
            procs.sort(key=operator.attrgetter(field), reverse=desc)
    if any(a.startswith("-") and not a.startswith("--") and "f" in a for a in args):
        return "\n".join(["UID          PID    PPID  C STIME TTY          TIME CMD",
                          *_ef_lines(ctx, procs)]) + "\n", "", 0
    header = "USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND"
    return "\n".join([header, *ps_lines(ctx, procs)]) + "\n", "", 0


def _ef_lines(ctx: Ctx, procs: list[Proc]) -> list[str]:
    """``ps -ef`` rows; parents follow from units (main process) and the kernel."""
    mains = {u.spec.name: u.main_pid for u in ctx.guest.units.values()}
    rows = []
    for p in procs:
        if p.pid in (1, 2):
            ppid = 0
        elif p.kernel:
            ppid = 2
        elif p.unit and mains.get(p.unit) not in (None, p.pid):
            ppid = mains[p.unit] or 1
        else:
            ppid = 1
        cpu_s = int(p.cpu_pct / 100 * (ctx.now - p.started))
        rows.append(f"{_user(p.user):<8} {p.pid:>7} {ppid:>7} {min(99, int(p.cpu_pct)):>2} "
                    f"{_start(p, ctx.now):>5} {p.tty:<8} {cpu_s // 3600:02d}:{cpu_s % 3600 // 60:02d}:"
                    f"{cpu_s % 60:02d} {p.command}")
    return rows


_SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "TERM": 15, "USR1": 10, "USR2": 12,
            "STOP": 19, "CONT": 18}


def _kill(ctx: Ctx, args: list[str], stdin: str) -> Out:
    # Without sudo this is bash's builtin; with sudo it is procps' /usr/bin/kill.
    def err(pid: str, why: str) -> str:
        return ctx.err(f"kill: ({pid}) - {why}") if not ctx.root else f"kill: ({pid}): {why}\n"

    sig = 15
    pids: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-s", "-n") and i + 1 < len(args):
            a = "-" + args[i + 1]
            i += 1
        if a.startswith("-") and len(a) > 1 and not pids:
            name = a[1:].upper().removeprefix("SIG")
            if name.isdigit():
                sig = int(name)
            elif name in _SIGNALS:
                sig = _SIGNALS[name]
            elif name == "L":
                return " 1) SIGHUP\t 2) SIGINT\t 3) SIGQUIT\t 9) SIGKILL\t15) SIGTERM\n", "", 0
            else:
                return "", ctx.err(f"kill: {a[1:]}: invalid signal specification"), 1
        else:
            pids.append(a)
        i += 1
    if not pids:
        return "", ctx.err("kill: usage: kill [-s sigspec | -n signum | -sigspec] pid | jobspec "
                           "... or kill -l [sigspec]"), 2
    errs: list[str] = []
    g = ctx.guest
    for text in pids:
        if not text.lstrip("-").isdigit():
            errs.append(ctx.err(f"kill: {text}: arguments must be process or job IDs"))
            continue
        pid = int(text)
        proc = g.procs.get(pid)
        if proc is None:
            errs.append(err(text, "No such process"))
        elif not ctx.root and proc.user != c.LOGIN_USER:
            errs.append(err(text, "Operation not permitted"))
        elif sig in (9, 15, 1, 2, 3):
            g.kill(pid, ctx.now, sig)
    return "", "".join(errs), 1 if errs else 0


def _swapon(ctx: Ctx, args: list[str], stdin: str) -> Out:
    m = ctx.guest.meminfo(ctx.now)
    if not args or args[0] in ("-s", "--summary"):
        if not args:
            return "", "", 0
        return virtual_file(ctx, "/proc/swaps") or "", "", 0
    if not any(a.startswith("--show") for a in args):
        return "", f"swapon: {args[-1]}: swapon failed: Operation not permitted\n", 1
    rows = [("NAME", "TYPE", "SIZE", "USED", "PRIO"),
            (c.SWAP_DEVICE, "partition", fmt.human_util(m.swap_total * 1024),
             fmt.human_util((m.swap_total - m.swap_free) * 1024), "-2")]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"{r[0]:<{widths[0]}} {r[1]:<{widths[1]}} {r[2]:>{widths[2]}} {r[3]:>{widths[3]}} "
             f"{r[4]:>{widths[4]}}" for r in rows]
    return "\n".join(lines) + "\n", "", 0


def _dmesg(ctx: Ctx, args: list[str], stdin: str) -> Out:
    if not ctx.root:
        return "", "dmesg: read kernel buffer failed: Operation not permitted\n", 1
    human = any(a in ("-T", "--ctime") or (a.startswith("-") and "T" in a and not a.startswith("--"))
                for a in args)
    g = ctx.guest
    lines = []
    for t, msg in g.dmesg:
        stamp = fmt.ctime(g.boot_at + t) if human else f"{t:12.6f}"
        lines.append(f"[{stamp}] {msg}")
    return "\n".join(lines) + "\n", "", 0


def comm(command: str) -> str:
    """The kernel's short name of a process (what pgrep and top match and show)."""
    if command.startswith("["):
        return command.strip("[]").split("/")[0][:15]
    first = command.split()[0] if command.split() else command
    return first.rstrip(":").rsplit("/", 1)[-1].lstrip("-")[:15]


def _pgrep(ctx: Ctx, args: list[str], stdin: str) -> Out:
    full = listing = with_cmd = False
    user: str | None = None
    patterns: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-u" and i + 1 < len(args):
            user = args[i + 1]
            i += 1
        elif a.startswith("-") and len(a) > 1:
            full |= "f" in a
            listing |= "l" in a
            with_cmd |= "a" in a
        else:
            patterns.append(a)
        i += 1
    if len(patterns) != 1:
        return "", "pgrep: no matching criteria specified\nTry `pgrep --help' for more information.\n", 2
    import re

    try:
        regex = re.compile(patterns[0])
    except re.error:
        return "", f"pgrep: cannot compile regular expression '{patterns[0]}'\n", 2
    hits = [p for p in ctx.guest.processes(ctx.now)
            if regex.search(p.command if full else comm(p.command))
            and (user is None or p.user == user)]
    lines = [f"{p.pid} {p.command}" if with_cmd else f"{p.pid} {comm(p.command)}" if listing
             else str(p.pid) for p in hits]
    return "".join(line + "\n" for line in lines), "", 0 if hits else 1


def _pidof(ctx: Ctx, args: list[str], stdin: str) -> Out:
    names = {a for a in args if not a.startswith("-")}
    pids = [str(p.pid) for p in reversed(ctx.guest.processes(ctx.now))
            if comm(p.command) in names or p.command.split()[0] in names]
    return (" ".join(pids) + "\n" if pids else ""), "", 0 if pids else 1


def _k(kb: int, width: int) -> str:
    if len(str(kb)) <= width:
        return str(kb)
    return f"{kb / 1024 / 1024:.1f}g"


def _top(ctx: Ctx, args: list[str], stdin: str) -> Out:
    if "-b" not in args and not any(a.startswith("-b") for a in args):
        return "", "top: failed tty get\n", 1
    g = ctx.guest
    procs = g.processes(ctx.now)
    m = g.meminfo(ctx.now)
    up = virtual_file(ctx, "/proc/loadavg") or ""
    running = int(up.split()[3].split("/")[0]) if up else 1
    head = _uptime(ctx, [], "")[0].strip()
    if g.spiking(ctx.now):
        cpu = (97.6, 2.2, 0.0, 0.0, 0.2)
    elif g.hog() is not None:
        cpu = (10.3, 23.1, 7.2, 58.9, 0.5)
    else:
        cpu = (2.1, 0.7, 96.9, 0.2, 0.1)
    lines = [
        f"top - {head.split(' up ')[0].strip()} up {head.split(' up ', 1)[1]}",
        f"Tasks: {len(procs) + 140:3d} total, {running:3d} running, {len(procs) + 140 - running:3d} "
        "sleeping,   0 stopped,   0 zombie",
        f"%Cpu(s): {cpu[0]:4.1f} us, {cpu[1]:4.1f} sy,  0.0 ni, {cpu[2]:4.1f} id, {cpu[3]:4.1f} wa,"
        f"  0.0 hi, {cpu[4]:4.1f} si,  0.0 st",
        f"MiB Mem : {m.total / 1024:8.1f} total, {m.free / 1024:8.1f} free, "
        f"{(m.total - m.available) / 1024:8.1f} used, "
        f"{(m.buffers + m.cached + m.sreclaimable) / 1024:8.1f} buff/cache",
        f"MiB Swap: {m.swap_total / 1024:8.1f} total, {m.swap_free / 1024:8.1f} free, "
        f"{(m.swap_total - m.swap_free) / 1024:8.1f} used. {m.available / 1024:8.1f} avail Mem",
        "",
        "    PID USER      PR  NI    VIRT    RES    SHR S  %CPU  %MEM     TIME+ COMMAND",
    ]
    for p in sorted(procs, key=lambda p: (-p.cpu_pct, p.pid)):
        secs = p.cpu_pct / 100 * (ctx.now - p.started)
        lines.append(
            f"{p.pid:>7} {_user(p.user):<8}  20   0 {_k(p.vsz_kb, 7):>7} {_k(p.rss_kb, 6):>6} "
            f"{min(p.rss_kb, 9_812) if p.rss_kb else 0:>6} {p.stat[0]} {p.cpu_pct:5.1f} "
            f"{p.rss_kb * 100 / c.MEM_TOTAL_KB:5.1f} {f'{int(secs // 60)}:{secs % 60:05.2f}':>9} "
            f"{comm(p.command)}")
    return "\n".join(lines) + "\n", "", 0


COMMANDS: dict[str, Command] = {
    "pgrep": _pgrep, "pidof": _pidof, "top": _top,
    "uptime": _uptime, "free": _free, "ps": _ps, "kill": _kill, "swapon": _swapon, "dmesg": _dmesg,
}
