"""Pure helpers for the runbook: what the guest's tools print, and what it means.

Nothing here talks to a host; each function takes text or readings and
returns a verdict, so the runbook's judgement is testable on fixture text.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from breakglass.config import RuleSettings
from breakglass.watchdog.parse import parse_meminfo

# Evidence for a person reading the incident; the runbook parses the probe command instead.
EVIDENCE_COMMAND = "uptime; free -b; sudo dmesg -T | tail -n 40"

# A line naming a unit: the header of `systemctl status PID`, a CGroup line, or a tree node.
_UNIT_LINE = re.compile(r"(?:^[●×○*]\s+|CGroup: /(?:\S*/)?|[├└]─)(?P<unit>[\w@:.\\-]+\.service)\b")
_PID_LINE = re.compile(r"[├└]─(?P<pid>\d+)\s")
_GLOB = re.compile(r"[*?\[\]{}]")


@dataclass(frozen=True)
class Process:
    """One row of ``ps aux``."""

    user: str
    pid: int
    cpu: float
    mem: float
    command: str


def parse_ps(text: str) -> list[Process]:
    """Parse ``ps aux`` output into processes, in the order shown (header skipped)."""
    procs: list[Process] = []
    for line in text.splitlines():
        parts = line.split(None, 10)
        if len(parts) < 11 or not parts[1].isdigit():
            continue
        try:
            procs.append(Process(parts[0], int(parts[1]), float(parts[2]), float(parts[3]), parts[10]))
        except ValueError:
            continue
    return procs


def unit_of_pid(text: str, pid: int) -> str | None:
    """Find the service a PID belongs to in ``systemctl status [PID]`` output.

    Works on both shapes: ``systemctl status PID`` (a "● x.service" header and
    a "CGroup: /system.slice/x.service" line above the PID) and the whole-system
    tree of plain ``systemctl status`` ("├─x.service" above "│ └─PID cmd").
    The PID belongs to the nearest unit named above it.
    """
    current: str | None = None
    for line in text.splitlines():
        m = _UNIT_LINE.search(line)
        if m:
            current = m["unit"]
            continue
        p = _PID_LINE.search(line)
        if p and int(p["pid"]) == pid:
            return current
        if re.search(r"[├└]─\S+\.(slice|scope)\b", line):
            current = None  # a slice or scope starts: the PIDs below are not a service's
    return None


def hog_allowed(allowlist: Iterable[str], proc: Process, unit: str | None) -> str | None:
    """Return the allowlist entry that lets the runbook stop ``proc``, or None.

    An entry matches when it names the process's unit exactly (``leaky-batch``
    or ``leaky-batch.service``) or is a substring of its full command line
    (``/opt/batch/leak.py``). Empty entries match nothing.
    """
    for entry in allowlist:
        entry = entry.strip()
        if not entry:
            continue
        if unit is not None and entry in (unit, unit.removesuffix(".service")):
            return entry
        if entry in proc.command:
            return entry
    return None


def memory_pressure(fields: Mapping[str, Any], rules: RuleSettings) -> str | None:
    """Describe memory pressure by the rule's thresholds, or None when there is none."""
    total, avail = fields.get("mem_total_bytes"), fields.get("mem_available_bytes")
    swap_total, swap_used = fields.get("swap_total_bytes"), fields.get("swap_used_bytes")
    if not total or avail is None:
        return None
    # No swap at all means nowhere left to spill: count it as full, as the rule does.
    swap_ratio = (swap_used or 0) / swap_total if swap_total else 1.0
    ratio = avail / total
    if ratio < rules.mem_available_ratio and swap_ratio > rules.swap_used_ratio:
        return f"MemAvailable {ratio:.1%} of MemTotal, swap {swap_ratio:.0%} used"
    return None


def pressure_in_meminfo(text: str, rules: RuleSettings) -> tuple[str | None, float]:
    """Memory pressure in ``/proc/meminfo`` text (or why it cannot tell), and MemAvailable/MemTotal."""
    mem = parse_meminfo(text)
    if not mem.total or mem.available is None:
        return "meminfo unreadable", 0.0
    fields = {
        "mem_total_bytes": mem.total,
        "mem_available_bytes": mem.available,
        "swap_total_bytes": mem.swap_total,
        "swap_used_bytes": mem.swap_used,
    }
    return memory_pressure(fields, rules), mem.available / mem.total


def load_high(fields: Mapping[str, Any], rules: RuleSettings) -> str | None:
    """Describe load above ``rules.load_per_cpu`` per CPU, or None."""
    load1, ncpu = fields.get("load1"), fields.get("ncpu")
    if load1 is None or not ncpu or load1 / ncpu <= rules.load_per_cpu:
        return None
    return f"load1 {load1:.2f} on {ncpu} CPUs ({load1 / ncpu:.1f} per CPU > {rules.load_per_cpu:g})"


def cleanup_refusal(path: str) -> str | None:
    """Why ``path`` must not be emptied with ``rm -rf PATH/*``, or None when it may be."""
    if not path.startswith("/"):
        return "not an absolute path"
    if ".." in path.split("/") or _GLOB.search(path) or "\n" in path:
        return "contains '..', a glob character or a newline"
    if posixpath.normpath(path) in ("/", "//"):
        return "is the root directory"
    return None
