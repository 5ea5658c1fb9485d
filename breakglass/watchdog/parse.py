"""Pure parsers for what the guest prints: /proc/loadavg, nproc, /proc/meminfo, df -P, systemctl.

Each parser takes text and returns values or None for what it cannot read,
so one odd line costs one reading, not the whole round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The probe's one chained command; split_probe_output knows its shape.
PROBE_COMMAND = (
    "cat /proc/loadavg && nproc && cat /proc/meminfo && df -P / && "
    "systemctl --failed --no-legend --plain"
)

_MEMINFO_LINE = re.compile(r"^(?P<key>[A-Za-z0-9_()]+):\s+(?P<value>\d+)(?:\s+(?P<unit>kB))?\s*$")
_UNIT_NAME = re.compile(
    r"^[\w@:.\\-]+\.(service|socket|mount|timer|target|path|scope|slice|swap|device|automount)$"
)


@dataclass(frozen=True)
class Load:
    """Load averages over 1, 5 and 15 minutes."""

    load1: float
    load5: float
    load15: float


@dataclass(frozen=True)
class Memory:
    """Memory and swap totals from /proc/meminfo, in bytes."""

    total: int | None
    available: int | None
    swap_total: int | None
    swap_used: int | None


@dataclass(frozen=True)
class ProbeSections:
    """The probe command's output cut into the part each tool printed."""

    loadavg: str = ""
    nproc: str = ""
    meminfo: list[str] = field(default_factory=list)
    df: list[str] = field(default_factory=list)
    failed_units: list[str] = field(default_factory=list)


def parse_loadavg(text: str) -> Load | None:
    """Parse ``/proc/loadavg`` ("0.52 0.58 0.59 1/467 12345")."""
    parts = text.split()
    if len(parts) < 3:
        return None
    try:
        return Load(float(parts[0]), float(parts[1]), float(parts[2]))
    except ValueError:
        return None


def parse_nproc(text: str) -> int | None:
    """Parse ``nproc`` output: one positive integer."""
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


# The /proc/meminfo fields a reading keeps; the other fifty-odd lines are not parsed.
_MEMINFO_KEYS = ("MemTotal:", "MemAvailable:", "SwapTotal:", "SwapFree:")


def parse_meminfo(text: str) -> Memory:
    """Parse ``/proc/meminfo`` into bytes; fields it lacks are None."""
    values: dict[str, int] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _MEMINFO_LINE.match(line) if line.startswith(_MEMINFO_KEYS) else None
        if m:
            scale = 1024 if m["unit"] else 1
            values[m["key"]] = int(m["value"]) * scale
    swap_total = values.get("SwapTotal")
    swap_free = values.get("SwapFree")
    swap_used = swap_total - swap_free if swap_total is not None and swap_free is not None else None
    return Memory(
        total=values.get("MemTotal"),
        available=values.get("MemAvailable"),
        swap_total=swap_total,
        swap_used=swap_used,
    )


def parse_df_used_ratio(text: str, mount: str = "/") -> float | None:
    """Return the used share (0..1) of ``mount`` from ``df -P`` output, as df computes Use%."""
    for line in text.splitlines():
        parts = line.split()
        # Filesystem 1024-blocks Used Available Capacity Mounted-on; the device
        # name cannot hold spaces in -P output, the mount point could.
        if len(parts) < 6 or parts[0] == "Filesystem":
            continue
        if " ".join(parts[5:]) != mount:
            continue
        try:
            used, avail = int(parts[2]), int(parts[3])
        except ValueError:
            return None
        if used + avail > 0:
            return used / (used + avail)
        capacity = parts[4].rstrip("%")
        return int(capacity) / 100 if capacity.isdigit() else None
    return None


def parse_failed_units(text: str) -> tuple[str, ...]:
    """Return the unit names from ``systemctl --failed --no-legend --plain`` output."""
    units: list[str] = []
    for line in text.splitlines():
        # Without --plain systemd prefixes a bullet; accept both forms.
        parts = line.replace("●", " ").replace("*", " ", 1).split()
        if parts and _UNIT_NAME.match(parts[0]):
            units.append(parts[0])
    return tuple(units)


def split_probe_output(text: str) -> ProbeSections:
    """Cut the output of PROBE_COMMAND into its five parts.

    1. the first line is /proc/loadavg; 2. the next line is nproc;
    3. "Key: value" lines are meminfo; 4. from the "Filesystem" header, the
    header and the lines with a mount point are df; 5. the rest is systemctl.
    """
    lines = text.splitlines()
    loadavg = lines[0] if lines else ""
    nproc = lines[1] if len(lines) > 1 else ""
    meminfo: list[str] = []
    df: list[str] = []
    rest: list[str] = []
    i = 2
    while i < len(lines) and _MEMINFO_LINE.match(lines[i].strip()):
        meminfo.append(lines[i])
        i += 1
    if i < len(lines) and lines[i].startswith("Filesystem"):
        df.append(lines[i])
        i += 1
        # df -P / prints exactly one row for one path.
        if i < len(lines):
            df.append(lines[i])
            i += 1
    rest = lines[i:]
    return ProbeSections(loadavg=loadavg, nproc=nproc, meminfo=meminfo, df=df, failed_units=rest)
