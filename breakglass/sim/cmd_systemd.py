"""systemd's tools: systemctl and journalctl, over the guest's units and journal."""

from __future__ import annotations

import re
import time

from breakglass.sim import catalog as c
from breakglass.sim import fmt
from breakglass.sim.guest import JournalEntry, Proc, Unit
from breakglass.sim.shell import Command, Ctx, Out

_ALIASES = {"sshd.service": "ssh.service", "postgresql@15-main.service": "postgresql.service",
            "journald.service": "systemd-journald.service", "docker.socket": "docker.service"}
_PRIVILEGED = {"start": "start", "stop": "stop", "restart": "restart", "reload": "reload",
               "try-restart": "try-restart", "reload-or-restart": "reload-or-restart",
               "kill": "kill", "reset-failed": "reset failed state of unit"}
_LEGEND = ("\nLOAD   = Reflects whether the unit definition was properly loaded.\n"
           "ACTIVE = The high-level unit activation state, i.e. generalization of SUB.\n"
           "SUB    = The low-level unit activation state, values depend on unit type.\n")


def unit_name(name: str) -> str:
    """Accept ``postgresql`` or ``postgresql.service``; resolve Debian's aliases."""
    full = name if "." in name.rsplit("@", 1)[-1] else f"{name}.service"
    return _ALIASES.get(full, full)


def _comm(command: str) -> str:
    first = command.split()[0].rstrip(":") if command.split() else command
    return first.rsplit("/", 1)[-1][:15]


def _status(ctx: Ctx, unit: Unit) -> str:
    g, s = ctx.guest, unit.spec
    dot = {"active": "●", "failed": "×"}.get(unit.active, "○")
    enabled = "enabled" if s.enabled else "disabled"
    lines = [f"{dot} {s.name} - {s.description}",
             f"     Loaded: loaded ({s.path}/{s.name}; {enabled}; preset: enabled)"]
    since = f" since {fmt.systemd_time(unit.since)}; {fmt.ago(ctx.now - unit.since)}"
    if unit.active == "active":
        lines.append(f"     Active: active (running){since}")
    elif unit.active == "failed":
        lines.append(f"     Active: failed (Result: {unit.result}){since}")
        lines.append(f"   Duration: {fmt.timespan(unit.since - g.boot_at - 2.5)}")
    else:
        lines.append("     Active: inactive (dead)" + (since if unit.since else ""))
    docs = s.docs.split()
    for i, doc in enumerate(docs):
        lines.append(("       Docs: " if i == 0 else "             ") + doc)
    procs = [p for p in g.processes(ctx.now) if p.unit == s.name]
    if unit.active == "failed" and unit.main_pid:
        how = ("code=exited, status=1/FAILURE" if unit.result == "exit-code"
               else "code=killed, signal=KILL")
        lines.append(f"    Process: {unit.main_pid} ExecStart={s.exec_start} ({how})")
        lines.append(f"   Main PID: {unit.main_pid} ({how})")
        lines.append("        CPU: 1min 12.418s")
    elif unit.active == "active" and procs:
        main = next((p for p in procs if p.pid == unit.main_pid), procs[0])
        mem = sum(p.rss_kb for p in procs) / 1024
        mem_text = f"{mem / 1024:.1f}G" if mem >= 1024 else f"{mem:.1f}M"
        lines += [f"   Main PID: {main.pid} ({_comm(main.command)})",
                  f"      Tasks: {len(procs) * 3 - 2} (limit: 19092)",
                  f"     Memory: {mem_text}",
                  f"        CPU: {fmt.timespan(_cpu_seconds(ctx, procs))}",
                  f"     CGroup: /system.slice/{s.name}"]
        for i, p in enumerate(procs):
            branch = "└─" if i == len(procs) - 1 else "├─"
            cmd = f'"{p.command}"' if ": " in p.command else p.command
            lines.append(f"             {branch}{p.pid} {cmd}")
    entries = [e for e in g.journal if e.unit == s.name][-10:]
    if entries:
        lines.append("")
        lines += [_journal_line(e) for e in entries]
    return "\n".join(lines) + "\n"


def _cpu_seconds(ctx: Ctx, procs: list[Proc]) -> float:
    used = sum(p.cpu_pct / 100 * (ctx.now - p.started) for p in procs)
    return round(max(0.412, used), 3)


def _system_status(ctx: Ctx) -> str:
    g = ctx.guest
    failed = sum(1 for u in g.units.values() if u.active == "failed")
    dot = "×" if failed else "●"
    lines = [f"{dot} {c.HOSTNAME}",
             f"    State: {'degraded' if failed else 'running'}",
             "    Units: 236 loaded (incl. loaded aliases)",
             "     Jobs: 0 queued",
             f"   Failed: {failed} units",
             f"    Since: {fmt.systemd_time(g.boot_at)}; {fmt.ago(ctx.now - g.boot_at)}",
             "  systemd: 252.31-1~deb12u1",
             "   CGroup: /",
             "           ├─init.scope",
             "           │ └─1 /sbin/init",
             "           └─system.slice"]
    active = sorted((u for u in g.units.values() if u.active == "active"),
                    key=lambda u: u.spec.name)
    procs = g.processes(ctx.now)
    for i, u in enumerate(active):
        last = i == len(active) - 1
        lines.append(f"             {'└─' if last else '├─'}{u.spec.name}")
        mine = [p for p in procs if p.unit == u.spec.name]
        for j, p in enumerate(mine):
            lines.append(f"             {'  ' if last else '│ '}"
                         f"{'└─' if j == len(mine) - 1 else '├─'}{p.pid} {p.command}")
    return "\n".join(lines) + "\n"


def _list_units(ctx: Ctx, state: str | None, legend: bool, plain: bool, show_all: bool) -> str:
    units = [u for u in ctx.guest.units.values()
             if (show_all or u.active != "inactive")
             and (state is None or state in (u.active, u.sub))]
    units.sort(key=lambda u: u.spec.name)
    rows = [(u.spec.name, "loaded", u.active, u.sub, u.spec.description) for u in units]
    header = ("UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, ...], failed: bool) -> str:
        text = " ".join(f"{r[i]:<{widths[i]}}" for i in range(4)) + " " + r[4]
        return text if plain else ("● " if failed else "  ") + text

    out = [line(header, False)] if legend else []
    out += [line(r, u.active == "failed") for r, u in zip(rows, units, strict=True)]
    if legend:
        tail = (f"{len(rows)} loaded units listed." +
                ("" if state or show_all else " Pass --all to see loaded but inactive units, too."))
        out.append(_LEGEND.rstrip("\n") if rows else "")
        out = [o for o in out if o] + [tail]
        if not state:
            out.append("To show all installed unit files use 'systemctl list-unit-files'.")
    return "\n".join(out) + "\n" if out else ""


def _systemctl(ctx: Ctx, args: list[str], stdin: str) -> Out:
    opts = [a for a in args if a.startswith("-")]
    words = [a for a in args if not a.startswith("-")]
    legend = "--no-legend" not in opts and "--legend=false" not in opts
    plain = "--plain" in opts
    quiet = "--quiet" in opts or "-q" in opts
    state = next((o.split("=", 1)[1] for o in opts if o.startswith("--state=")), None)
    if "--failed" in opts:
        state = "failed"
    show_all = "--all" in opts or "-a" in opts
    verb = words[0] if words else "list-units"
    names = [unit_name(w) for w in words[1:]]
    g = ctx.guest
    if verb == "list-units":
        return _list_units(ctx, state, legend, plain, show_all), "", 0
    if verb == "is-system-running":
        degraded = any(u.active == "failed" for u in g.units.values())
        return ("" if quiet else ("degraded\n" if degraded else "running\n")), "", int(degraded)
    if verb in ("daemon-reload", "daemon-reexec"):
        return ("", "", 0) if ctx.root else ("", "Failed to reload daemon: Access denied\n", 1)
    if not names:
        if verb == "status":
            return _system_status(ctx), "", 0
        return "", "Too few arguments.\n" if verb in _PRIVILEGED or verb.startswith("is-") \
            else f"Unknown command verb {verb}.\n", 1
    if verb == "status":
        out, err, code = [], [], 0
        for n in names:
            unit = g.units.get(n)
            if unit is None:
                err.append(f"Unit {n} could not be found.\n")
                code = 4
            else:
                out.append(_status(ctx, unit))
                code = max(code, 0 if unit.active == "active" else 3)
        return "\n".join(out), "".join(err), code
    if verb in ("is-active", "is-failed", "is-enabled"):
        out, ok = [], True
        for n in names:
            unit = g.units.get(n)
            if verb == "is-enabled":
                if unit is None:
                    return "", (f"Failed to get unit file state for {n}: No such file or "
                                "directory\n"), 1
                value = "enabled" if unit.spec.enabled else "disabled"
                ok &= unit.spec.enabled
            else:
                value = unit.active if unit else "inactive"
                ok &= value == ("active" if verb == "is-active" else "failed")
            out.append(value + "\n")
        bad = 3 if verb == "is-active" else 1
        return ("" if quiet else "".join(out)), "", 0 if ok else bad
    if verb in _PRIVILEGED:
        err = []
        for n in names:
            unit = g.units.get(n)
            if unit is None:
                err.append(f"Failed to {_PRIVILEGED[verb]} {n}: Unit {n} not found.\n")
                return "", "".join(err), 5
            if not ctx.root:
                err.append(f"Failed to {_PRIVILEGED[verb]} {n}: Access denied\n"
                           f"See system logs and 'systemctl status {n}' for details.\n")
                return "", "".join(err), 1
            if verb == "start":
                g.start_unit(n, ctx.now)
            elif verb == "stop":
                g.stop_unit(n, ctx.now)
            elif verb in ("restart", "reload-or-restart") or (
                    verb == "try-restart" and unit.active == "active"):
                g.restart_unit(n, ctx.now)
            elif verb == "reset-failed" and unit.active == "failed":
                unit.active, unit.sub, unit.main_pid = "inactive", "dead", None
            elif verb == "reload" and unit.active != "active":
                return "", (f"Job for {n} failed.\nSee \"systemctl status {n}\" and "
                            f"\"journalctl -xeu {n}\" for details.\n"), 1
        return "", "", 0
    return "", f"Unknown command verb {verb}.\n", 1


# ---- journalctl ------------------------------------------------------------------------

_PRIORITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5,
               "info": 6, "debug": 7}


def _journal_line(e: JournalEntry) -> str:
    who = f"{e.ident}[{e.pid}]" if e.pid is not None else e.ident
    return f"{fmt.syslog_time(e.ts)} {c.HOSTNAME} {who}: {e.message}"


def _kernel_entries(ctx: Ctx) -> list[JournalEntry]:
    g = ctx.guest
    out = []
    for t, msg in g.dmesg:
        pri = 3 if re.search(r"Out of memory|blocked for more than|BUG:|No space", msg) else 6
        out.append(JournalEntry(g.boot_at + t, "kernel", None, msg, None, g.boot_id, pri))
    return out


def parse_when(text: str, now: float) -> float | None:
    """journalctl's --since/--until: "today", "1 hour ago", "-10min", "2026-11-28 14:00"."""
    text = text.strip()
    day = now - now % 86_400
    if text in ("today", "now", "yesterday", "tomorrow"):
        return {"today": day, "now": now, "yesterday": day - 86_400,
                "tomorrow": day + 86_400}[text]
    m = re.fullmatch(r"-?\s*(\d+)\s*(s|sec|seconds?|m|min|minutes?|h|hours?|d|days?)(\s+ago)?",
                     text)
    if m and (text.startswith("-") or m[3]):
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86_400}[m[2][0]]
        return now - int(m[1]) * scale
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, pattern)) - time.timezone
        except ValueError:
            pass
    for pattern in ("%H:%M:%S", "%H:%M"):
        try:
            t = time.strptime(text, pattern)
            return day + t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec
        except ValueError:
            pass
    return None


def _vacuum(ctx: Ctx, keep: int | None, older: float | None) -> Out:
    g = ctx.guest
    if not ctx.root:
        victims = [name for name, ts, size in g.journal_archived
                   if (keep is not None and g.journal_bytes() > keep) or
                   (older is not None and ts < older)]
        err = [f"Failed to delete archived journal {c.JOURNAL_DIR}/{v}: Permission denied\n"
               for v in victims]
        freed = 0
    else:
        gone = g.vacuum(keep_bytes=keep, older_than=older)
        err = [f"Deleted archived journal {c.JOURNAL_DIR}/{name} ({fmt.short_size(size)}).\n"
               for name, size in gone]
        freed = sum(size for _, size in gone)
    err += ["Vacuuming done, freed 0B of archived journals from /var/log/journal.\n",
            "Vacuuming done, freed 0B of archived journals from /run/log/journal.\n",
            f"Vacuuming done, freed {fmt.short_size(freed)} of archived journals from "
            f"{c.JOURNAL_DIR}.\n"]
    return "", "".join(err), 0


def _option_values(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split journalctl's arguments into {option: [values]} and stray words."""
    takes = {"-u": "--unit", "-n": "--lines", "-p": "--priority", "-o": "--output",
             "-S": "--since", "-U": "--until", "-b": "--boot", "-t": "--identifier"}
    values: dict[str, list[str]] = {}
    stray: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            key, val = a.split("=", 1)
            values.setdefault(key, []).append(val)
        elif a in takes or a in takes.values():
            key = takes.get(a, a)
            nxt = args[i + 1] if i + 1 < len(args) else None
            optional = key in ("--boot", "--lines")
            if nxt is not None and not (optional and nxt.startswith("-") and
                                        not nxt.lstrip("-").isdigit()):
                values.setdefault(key, []).append(nxt)
                i += 1
            else:
                values.setdefault(key, []).append("")
        elif a[:2] in takes and len(a) > 2 and (a[1] in "nb" or not a[2:].isalpha()):
            values.setdefault(takes[a[:2]], []).append(a[2:])
        elif re.fullmatch(r"-[a-zA-Z]+", a):
            for j, ch in enumerate(a[1:]):
                flag = f"-{ch}"
                if flag in takes and j == len(a) - 2:
                    values.setdefault(takes[flag], []).append(
                        args[i + 1] if i + 1 < len(args) and flag not in ("-b", "-n") else "")
                    if flag not in ("-b", "-n") and i + 1 < len(args):
                        i += 1
                elif flag in takes:
                    values.setdefault(takes[flag], []).append(a[2 + j:])
                    break
                else:
                    values.setdefault(flag, []).append("")
        elif a.startswith("-"):
            values.setdefault(a, []).append("")
        else:
            stray.append(a)
        i += 1
    return values, stray


def _journalctl(ctx: Ctx, args: list[str], stdin: str) -> Out:
    g = ctx.guest
    opts, _ = _option_values(args)
    if "--disk-usage" in opts:
        return (f"Archived and active journals take up {fmt.short_size(g.journal_bytes())} in the "
                "file system.\n", "", 0)
    if "--vacuum-size" in opts or "--vacuum-time" in opts or "--vacuum-files" in opts:
        keep = older = None
        if "--vacuum-size" in opts:
            keep = fmt.parse_size(opts["--vacuum-size"][-1])
            if keep is None:
                return "", f"Failed to parse size value: {opts['--vacuum-size'][-1]}\n", 1
        if "--vacuum-time" in opts:
            spec = opts["--vacuum-time"][-1]
            m = re.fullmatch(r"(\d+)\s*(s|min|h|d|w|months|y)?", spec)
            if not m:
                return "", f"Failed to parse timestamp: {spec}\n", 1
            scale = {"s": 1, "min": 60, "h": 3600, "d": 86_400, "w": 604_800,
                     "months": 2_629_800, "y": 31_557_600}[m[2] or "s"]
            older = ctx.now - int(m[1]) * scale
        if "--vacuum-files" in opts:
            n = opts["--vacuum-files"][-1]
            if not n.isdigit():
                return "", f"Failed to parse n_files argument: {n}\n", 1
            keep_n = max(int(n) - 2, 0)
            archived = g.journal_archived
            older = archived[-keep_n][1] if 0 < keep_n <= len(archived) else (
                ctx.now if keep_n == 0 else None)
        return _vacuum(ctx, keep, older)
    if "--rotate" in opts or "--flush" in opts or "--sync" in opts:
        return ("", "", 0) if ctx.root else ("", "Failed to rotate journal: Access denied\n", 1)
    entries = list(g.journal)
    if "-k" in opts or "--dmesg" in opts:
        entries = _kernel_entries(ctx)
    elif "--unit" not in opts and "--identifier" not in opts:
        entries = sorted(entries + _kernel_entries(ctx), key=lambda e: e.ts)
    if "--unit" in opts:
        wanted = {unit_name(u) for u in opts["--unit"]}
        entries = [e for e in entries if e.unit in wanted]
    if "--identifier" in opts:
        entries = [e for e in entries if e.ident in opts["--identifier"]]
    if "--boot" in opts or "-k" in opts:
        which = (opts.get("--boot") or [""])[-1]
        boots = list(dict.fromkeys(e.boot_id for e in g.journal)) or [g.boot_id]
        if which in ("", "0"):
            target = g.boot_id
        elif which.lstrip("-").isdigit() and int(which) < 0 and len(boots) >= 1 - int(which):
            target = boots[int(which) - 1]
        else:
            return "", "Data from the specified boot (" + which + ") is not available: No such "\
                       "boot ID in journal\n", 1
        entries = [e for e in entries if e.boot_id == target]
    if "--priority" in opts:
        spec = opts["--priority"][-1]
        top = spec.split("..")[-1]
        level = _PRIORITIES.get(top, int(top) if top.isdigit() else -1)
        if not 0 <= level <= 7:
            return "", f"Unknown log level {top}\n", 1
        entries = [e for e in entries if e.priority <= level]
    for key, keep_after in (("--since", True), ("--until", False)):
        if key in opts:
            when = parse_when(opts[key][-1], ctx.now)
            if when is None:
                return "", f"Failed to parse timestamp: {opts[key][-1]}\n", 1
            entries = [e for e in entries if (e.ts >= when) == keep_after]
    lines_opt = opts.get("--lines")
    if lines_opt is not None:
        n = lines_opt[-1] or "10"
        if not (n.isdigit() or n == "all"):
            return "", f"Failed to parse lines '{n}'\n", 1
        if n != "all":
            entries = entries[-int(n):] if int(n) else []
    elif "-e" in opts or "--pager-end" in opts or "-f" in opts or "--follow" in opts:
        entries = entries[-(1000 if "-e" in opts else 10):]
    if "-r" in opts or "--reverse" in opts:
        entries.reverse()
    if not entries:
        return "-- No entries --\n", "", 0
    output = (opts.get("--output") or ["short"])[-1]
    out: list[str] = []
    prev = entries[0].boot_id
    for e in entries:
        if e.boot_id != prev:
            out.append(f"-- Boot {e.boot_id} --")
            prev = e.boot_id
        out.append(e.message if output == "cat" else _journal_line(e))
    return "\n".join(out) + "\n", "", 0


COMMANDS: dict[str, Command] = {"systemctl": _systemctl, "journalctl": _journalctl}
