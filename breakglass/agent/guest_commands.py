"""Judge a ``devvm_shell`` command line before it runs: refused, read-only or mutating.

The line is parsed with ``bashlex`` (a port of bash's own grammar), so every
simple command is seen wherever it hides: after ``;``, ``&&``, ``||`` and
``|``, inside ``$( )`` and backticks, subshells, loops, functions, and behind
the wrappers ``sudo``, ``env``, ``nohup``, ``nice``, ``ionice``, ``timeout``,
``setsid``, ``stdbuf``, ``exec``, ``command``, ``xargs`` and inline scripts
(``bash -c``, ``sh -c``, ``su -c``, ``eval``), which are parsed in turn.

Refused (each reason names the ``pve`` verb to use instead): power off,
reboot, halt, kexec or suspend the guest (``poweroff``, ``reboot``,
``shutdown``, ``init 0``, ``systemctl reboot`` ...); any write to sysrq;
stopping, disabling, masking or killing the SSH daemon or the network
(``systemctl stop ssh``, ``ip link set eth0 down``, firewall changes, ...);
a command name computed at run time; a line the parser cannot read.
Stopping a unit or killing a process is allowed only for what
``remediation.hog_allowlist`` names, as for the runbook: the judgement lists
the units, process names and PIDs to check (PIDs are resolved on the guest
by the tool).

What a parser cannot stop: a program that decides at run time what to do.
``python3 -c 'import os; os.system("reboot")'``, a script written to a file
and then run, ``base64 -d | sh``: bash would only know the command after
running something. Those lines are judged *mutating* (so they count as
acting) and run. The power budget and the ledger do not see an in-guest
reboot either; what still bounds the harm is that the watchdog's own probes
keep judging the VM (a guest that went down opens or keeps an incident and
only the policy and the Governor send power verbs), the agent's turn and
wall-clock limits, and the incident's record of every command the model ran.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import bashlex
import bashlex.errors

# Commands that only look (with the per-command exceptions in _read_only()).
READ_ONLY = frozenset(
    {
        "cat", "ls", "df", "du", "free", "uptime", "ps", "pgrep", "top", "htop", "vmstat", "iostat",
        "mpstat", "pidstat", "sar", "head", "tail", "grep", "egrep", "fgrep", "zgrep", "wc", "cut",
        "uniq", "tr", "echo", "printf", "date", "uname", "id", "whoami", "who", "w", "last", "lsblk",
        "blkid", "findmnt", "stat", "file", "ss", "netstat", "lsof", "nproc", "lscpu", "lsmod",
        "which", "type", "getent", "tree", "readlink", "realpath", "basename", "dirname", "md5sum",
        "sha256sum", "test", "[", "true", "false", "sleep", "hostnamectl", "timedatectl", "loginctl",
        "less", "more", "zcat", "column", "journalctl", "dmesg", "systemctl", "sed", "find", "ip",
        "sysctl", "sort", "mount", "swapon", "hostname", "env", "pwd", "ping", "dig", "host",
        "nslookup", "getconf", "ulimit", "awk", "lsns", "smartctl", "iotop", "slabtop", "watch",
    }
)
_SYSTEMCTL_READ = frozenset(
    {
        "status", "is-active", "is-failed", "is-enabled", "is-system-running", "list-units",
        "list-unit-files", "list-sockets", "list-timers", "list-jobs", "list-dependencies", "show",
        "cat", "help", "--failed", "",
    }
)
_POWER_COMMANDS = frozenset({"poweroff", "reboot", "halt", "shutdown", "kexec", "systemd-sleep"})
_SYSTEMCTL_POWER = frozenset(
    {
        "poweroff", "reboot", "halt", "kexec", "suspend", "hibernate", "hybrid-sleep",
        "suspend-then-hibernate", "soft-reboot", "rescue", "emergency", "isolate", "default",
        "exit", "switch-root",
    }
)
_POWER_TARGETS = frozenset(
    {"poweroff", "reboot", "halt", "kexec", "shutdown", "rescue", "emergency", "suspend", "hibernate",
     "hybrid-sleep", "suspend-then-hibernate", "soft-reboot", "ctrl-alt-del", "exit"}
)
_SYSTEMCTL_STOPS = frozenset({"stop", "disable", "mask", "kill", "freeze", "try-restart"})
# Units whose loss cuts the watchdog's way in.
_LIFELINE_UNITS = ("ssh", "sshd", "network", "networking", "networkmanager", "systemd-networkd",
                   "systemd-resolved", "wpa_supplicant", "ifup", "dhcpcd", "dhclient", "qemu-guest-agent")
_WRAPPERS_NO_ARG = frozenset({"nohup", "setsid", "exec", "command", "builtin", "time", "doas"})
_SHELLS = frozenset({"bash", "sh", "dash", "zsh", "ksh", "busybox"})
_FIREWALLS = frozenset({"iptables", "ip6tables", "nft", "ufw", "firewall-cmd", "iptables-restore"})
_DEVNULL = ("/dev/null", "&1", "&2", "1", "2")
_MAX_DEPTH = 6

HINT = POWER_HINT = "use the pve tool (reset, cycle or stop) so the budget, the policy and the ledger apply"


@dataclass
class Judgement:
    """What a command line would do."""

    refused: str | None = None
    mutating: bool = False
    units_stopped: list[str] = field(default_factory=list)
    names_killed: list[str] = field(default_factory=list)
    pids_killed: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)

    def refuse(self, why: str) -> None:
        """Record the first reason to refuse."""
        if self.refused is None:
            self.refused = why


def judge(line: str) -> Judgement:
    """Parse ``line`` and judge every simple command in it."""
    j = Judgement()
    _judge_line(line, j, 0)
    return j


def _judge_line(line: str, j: Judgement, depth: int) -> None:
    if depth > _MAX_DEPTH:
        j.refuse("refused: scripts nested too deep to judge")
        return
    if not line.strip():
        return
    try:
        trees = bashlex.parse(line)
    except (bashlex.errors.ParsingError, NotImplementedError, IndexError, AttributeError) as exc:
        j.refuse(f"refused: the shell parser could not read this command ({exc}); write a simpler one")
        return
    for tree in trees:
        for node in _commands(tree):
            _judge_command(node, j, depth)


def _commands(node: Any) -> list[Any]:
    """Every CommandNode under ``node``, in any position (pipelines, substitutions, bodies)."""
    found: list[Any] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(reversed(n))
            continue
        if not isinstance(n, bashlex.ast.node):
            continue
        if n.kind == "command":
            found.append(n)
        for key, value in vars(n).items():
            if key != "kind" and isinstance(value, (list, bashlex.ast.node)):
                stack.append(value)
    return found


def _judge_command(node: Any, j: Judgement, depth: int) -> None:
    argv: list[str] = []
    for part in node.parts:
        if part.kind == "word":
            argv.append(part.word)
            if any(p.kind in ("commandsubstitution", "processsubstitution") for p in _parts(part)):
                j.mutating = True  # judged on its own by _commands; the outer word is unknown
        elif part.kind == "redirect":
            _judge_redirect(part, j)
    if not argv:
        return  # only assignments or redirections
    _judge_argv(argv, node, j, depth)


def _parts(word: Any) -> list[Any]:
    return list(getattr(word, "parts", None) or [])


def _judge_redirect(part: Any, j: Judgement) -> None:
    if part.type in ("<", "<<", "<<<", "<&"):
        return
    out = part.output
    target = out.word if hasattr(out, "word") else str(out)
    if "sysrq" in target:
        j.refuse(f"refused: writing to {target} is a power action outside the budget; {POWER_HINT}")
    elif target not in _DEVNULL and not target.startswith("&"):
        j.mutating = True


def _unwrap(argv: list[str]) -> list[str]:
    """Strip sudo/env/nohup/nice/timeout-style wrappers; the wrapped command's argv."""
    while argv:
        name = posixpath.basename(argv[0])
        rest = argv[1:]
        if name == "sudo":
            while rest and rest[0].startswith("-"):
                flag = rest.pop(0)
                if flag in ("-u", "-g", "-C", "-h", "-p", "-U", "-r", "-t", "-D"):
                    rest = rest[1:]
            argv = rest
        elif name == "env":
            while rest and (rest[0].startswith("-") or "=" in rest[0]):
                flag = rest.pop(0)
                if flag in ("-u", "-C", "-S"):
                    rest = rest[1:]
            argv = rest
        elif name in ("nice", "ionice", "stdbuf", "chrt", "taskset"):
            while rest and rest[0].startswith("-"):
                flag = rest.pop(0)
                if flag in ("-n", "-c", "-p", "-o", "-e", "-i") and rest:
                    rest = rest[1:]
            if name in ("chrt", "taskset") and rest:
                rest = rest[1:]
            argv = rest
        elif name == "timeout":
            while rest and rest[0].startswith("-"):
                flag = rest.pop(0)
                if flag in ("-s", "-k", "--signal", "--kill-after") and rest:
                    rest = rest[1:]
            argv = rest[1:]
        elif name in _WRAPPERS_NO_ARG:
            while rest and rest[0].startswith("-"):
                rest.pop(0)
            argv = rest
        else:
            return argv
    return argv


def _judge_argv(argv: list[str], node: Any, j: Judgement, depth: int) -> None:
    argv = _unwrap(argv)
    if not argv:
        return
    j.commands.append(argv)
    raw = argv[0]
    if "$" in raw or "`" in raw:
        j.refuse(f"refused: the command name {raw!r} is computed at run time and cannot be judged")
        return
    name = posixpath.basename(raw)
    args = argv[1:]
    if name == "busybox" and args and args[0] not in ("sh", "ash", "bash"):
        _judge_argv(args, node, j, depth)  # busybox APPLET ARGS is the applet itself
        return
    if name in _SHELLS or name == "su":
        if "-c" in args and args.index("-c") + 1 < len(args):
            j.mutating = True
            _judge_line(args[args.index("-c") + 1], j, depth + 1)
            return
        j.mutating = True  # a script file or an interactive shell: cannot be seen into
        return
    if name == "eval":
        _judge_line(" ".join(args), j, depth + 1)
        return
    if name == "xargs":
        inner = [a for a in args if not a.startswith("-")]
        if inner:
            _judge_argv([*inner, "$XARGS"], node, j, depth)
        return
    if name == "find" and any(a in ("-exec", "-execdir", "-ok", "-okdir") for a in args):
        for flag in ("-exec", "-execdir", "-ok", "-okdir"):
            if flag in args:
                inner = args[args.index(flag) + 1 :]
                inner = inner[: inner.index(";")] if ";" in inner else inner
                _judge_argv(inner, node, j, depth)
        return
    _judge_simple(name, args, j)


def _judge_simple(name: str, args: list[str], j: Judgement) -> None:
    if name in _POWER_COMMANDS or (name in ("init", "telinit") and args[:1] in (["0"], ["6"])):
        j.refuse(f"refused: `{name}` powers off or reboots the guest outside the budget; {POWER_HINT}")
        return
    if any("sysrq" in a for a in args) and name not in ("cat", "grep", "ls", "stat", "sysctl"):
        j.refuse(f"refused: `{name}` touches sysrq, a power action outside the budget; {POWER_HINT}")
        return
    if name == "sysctl" and any("sysrq" in a and "=" in a for a in args):
        j.refuse(f"refused: changing kernel.sysrq from inside the guest; {POWER_HINT}")
        return
    if name == "systemctl":
        _judge_systemctl(args, j)
    elif name == "service":
        _judge_service(args, j)
    elif name in ("kill", "pkill", "killall"):
        _judge_kill(name, args, j)
    elif name in ("ip", "ifdown", "ifconfig", "nmcli") or name in _FIREWALLS:
        _judge_network(name, args, j)
    if not _read_only(name, args):
        j.mutating = True


def _lifeline(unit: str) -> bool:
    base = unit.rsplit(".", 1)[0].split("@", 1)[0].lower() if "." in unit else unit.lower()
    return base in _LIFELINE_UNITS or base.startswith(("ssh", "network"))


def _judge_systemctl(args: list[str], j: Judgement) -> None:
    words = [a for a in args if not a.startswith("-")]
    verb = words[0] if words else ""
    units = words[1:]
    if verb in _SYSTEMCTL_POWER:
        j.refuse(f"refused: `systemctl {verb}` changes the guest's power state outside the budget; {HINT}")
        return
    power_targets = [u for u in units if u.split(".", 1)[0] in _POWER_TARGETS]
    if power_targets and verb in ("start", "restart", "reload-or-restart", "try-restart"):
        j.refuse(f"refused: `systemctl {verb} {' '.join(power_targets)}` powers off or reboots; {HINT}")
        return
    targets = any(u.endswith(".target") for u in units)
    if verb in _SYSTEMCTL_STOPS or (verb in ("restart", "start") and targets):
        cut = [u for u in units if _lifeline(u)]
        if cut:
            j.refuse(
                f"refused: `systemctl {verb} {' '.join(cut)}` would cut the watchdog's access to the guest; "
                "if sshd or the network is broken use pve reset (or cycle when QEMU is wedged)"
            )
            return
        if verb in ("stop", "kill", "freeze"):
            j.units_stopped.extend(units)


def _judge_service(args: list[str], j: Judgement) -> None:
    if len(args) >= 2 and args[1] in ("stop", "force-stop"):
        if _lifeline(args[0]):
            j.refuse(f"refused: `service {args[0]} {args[1]}` would cut the watchdog's access; use pve reset")
            return
        j.units_stopped.append(args[0])


def _judge_kill(name: str, args: list[str], j: Judgement) -> None:
    rest = list(args)
    if name == "kill":
        if rest[:1] in (["-s"], ["-n"], ["--signal"]):
            rest = rest[2:]
        elif rest and rest[0].startswith("-") and rest[0] not in ("--", "-1"):
            rest = rest[1:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        for pid in rest:
            if not pid.isdigit():
                j.refuse(f"refused: cannot judge kill target {pid!r}; give numeric PIDs (no -1 or groups)")
                return
            if int(pid) <= 1:
                j.refuse(f"refused: killing PID {pid} brings the guest down; {POWER_HINT}")
                return
        j.pids_killed.extend(rest)
        return
    names: list[str] = []
    skip = False
    for a in rest:
        if skip:
            skip = False
        elif a in ("-u", "-U", "-g", "-G", "-P", "-t", "-s", "--signal", "--user", "-F", "-n", "-o"):
            skip = True
        elif not a.startswith("-"):
            names.append(a)
    if not names:
        j.refuse(f"refused: cannot judge `{name} {' '.join(args)}`; name the process to stop")
        return
    for n in names:
        if n.lower().startswith(("ssh", "network", "systemd", "init", "qemu-ga")) or "$" in n:
            j.refuse(f"refused: `{name} {n}` would cut the watchdog's access or bring the guest down")
            return
    j.names_killed.extend(names)


def _judge_network(name: str, args: list[str], j: Judgement) -> None:
    low = [a.lower() for a in args]
    cut = False
    if name == "ip":
        obj = low[0] if low else ""
        if obj in ("link", "l") and "down" in low:
            cut = True
        if obj in ("addr", "address", "a", "route", "r", "ro") and any(
            v in low[1:2] for v in ("del", "delete", "flush", "change", "replace")
        ):
            cut = True
    elif name == "ifdown" or (name == "ifconfig" and "down" in low):
        cut = True
    elif name == "nmcli":
        cut = ("off" in low) or ("down" in low) or ("disconnect" in low) or ("delete" in low)
    elif name in _FIREWALLS:
        listing = {"-l", "-s", "--list", "list", "-nl", "-nvl", "-vnl", "status", "--list-all", "show"}
        cut = not any(a in listing for a in low)
    if cut:
        j.refuse(
            f"refused: `{name} {' '.join(args)}` could cut the network path the watchdog uses; "
            "report it, or use pve reset if the guest's network is broken"
        )


def _read_only(name: str, args: list[str]) -> bool:
    if name not in READ_ONLY:
        return False
    low = [a.lower() for a in args]
    if name == "systemctl":
        verbs = [a for a in low if not a.startswith("-")]
        return (verbs[0] if verbs else "") in _SYSTEMCTL_READ
    if name == "journalctl":
        writes = ("--vacuum", "--rotate", "--flush", "--sync", "--relinquish")
        return not any(a.startswith(writes) for a in low)
    if name == "dmesg":
        return not any(a in ("-c", "-C", "--clear", "--read-clear", "-D", "-E", "-n") for a in low)
    if name == "sed":
        return not any(a.startswith(("-i", "--in-place")) for a in low)
    if name == "find":
        return not any(a in ("-delete", "-fprint", "-fprintf", "-fls") for a in low)
    if name == "ip":
        return len(low) <= 1 or any(v in low for v in ("show", "list", "ls", "s", "get"))
    if name == "sysctl":
        return not any(a in ("-w", "--write", "-p", "--load", "--system") or "=" in a for a in low)
    if name == "sort":
        return not any(a.startswith(("-o", "--output")) for a in low)
    if name in ("date", "hostname", "hostnamectl", "timedatectl"):
        return not any(a in ("-s", "--set", "set-hostname", "set-time", "set-timezone") for a in low) and (
            name != "hostname" or not [a for a in low if not a.startswith("-")]
        )
    if name == "mount":
        return not [a for a in low if not a.startswith("-")] or "--show" in low
    if name == "loginctl":
        verbs = [a for a in low if not a.startswith("-")]
        looks = ("list", "show", "session-status", "user-status", "seat-status")
        return not verbs or verbs[0].startswith(looks)
    if name == "swapon":
        return any(a in ("--show", "-s", "--summary") for a in low)
    if name == "awk":
        return not any("system" in a or ">" in a or "|" in a for a in args)
    if name == "env":
        return not args
    return name != "watch"
