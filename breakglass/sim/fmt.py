"""Number and time formats the way coreutils, procps, util-linux and systemd print them."""

from __future__ import annotations

import math
import time

_UNITS = "KMGTP"


def human_ceil(n_bytes: int) -> str:
    """df -h / du -h: powers of 1024, rounded up, one decimal below 10."""
    if n_bytes < 1024:
        return str(n_bytes) if n_bytes else "0"
    value = float(n_bytes)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            if value < 10:
                v = math.ceil(value * 10) / 10
                if v < 10:
                    return f"{v:.1f}{unit}"
                value = v
            v2 = math.ceil(value)
            if v2 >= 1024 and unit != _UNITS[-1]:
                continue
            return f"{v2}{unit}"
    return f"{math.ceil(value)}P"


def human_free(n_bytes: int) -> str:
    """free -h (procps-ng 4): Ki/Mi/Gi suffixes, one decimal below 10."""
    if n_bytes < 1024:
        return f"{n_bytes}B"
    value = float(n_bytes)
    for unit in ("Ki", "Mi", "Gi", "Ti"):
        value /= 1024
        if value < 1024 or unit == "Ti":
            return f"{value:.1f}{unit}" if value < 10 else f"{int(value)}{unit}"
    return f"{value:.1f}Ti"


def human_util(n_bytes: int) -> str:
    """util-linux sizes (swapon, lsblk): one decimal, none when it is .0."""
    if n_bytes < 1024:
        return f"{n_bytes}B"
    value = float(n_bytes)
    for unit in "KMGT":
        value /= 1024
        if value < 1024 or unit == "T":
            text = f"{value:.1f}"
            return (text[:-2] if text.endswith(".0") else text) + unit
    return f"{value:.1f}T"


def short_size(n_bytes: int) -> str:
    """journalctl/systemd sizes: "128.0M", "6.3G", "0B"."""
    if n_bytes < 1024:
        return f"{n_bytes}B"
    value = float(n_bytes)
    for unit in "KMGT":
        value /= 1024
        if value < 1024 or unit == "T":
            return f"{value:.1f}{unit}"
    return f"{value:.1f}T"


def syslog_time(ts: float) -> str:
    """journalctl's short timestamp: "Nov 28 14:02:11"."""
    return time.strftime("%b %d %H:%M:%S", time.gmtime(ts))


def systemd_time(ts: float) -> str:
    """systemctl's absolute timestamp: "Sat 2026-11-28 14:02:11 UTC"."""
    return time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def ctime(ts: float) -> str:
    """dmesg -T's timestamp: "Sat Nov 28 14:02:11 2026"."""
    t = time.gmtime(ts)
    return time.strftime("%a %b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", t)


def ago(seconds: float) -> str:
    """systemd's relative time: "2 days ago", "1h 19min ago", "12s ago"."""
    s = int(max(0.0, seconds))
    day, hour, minute = 86_400, 3600, 60
    if s >= 7 * day:
        return f"{s // (7 * day)} weeks {s % (7 * day) // day} days ago"
    if s >= 2 * day:
        return f"{s // day} days ago"
    if s >= 25 * hour:
        return f"1 day {(s - day) // hour}h ago"
    if s >= 6 * hour:
        return f"{s // hour}h ago"
    if s >= hour:
        return f"{s // hour}h {s % hour // minute}min ago"
    if s >= 5 * minute:
        return f"{s // minute}min ago"
    if s >= minute:
        return f"{s // minute}min {s % minute}s ago"
    if s >= 1:
        return f"{s}s ago"
    return "now"


def timespan(seconds: float) -> str:
    """systemd's duration: "2d 4h 48min 8.123s"."""
    s = max(0.0, seconds)
    parts: list[str] = []
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            parts.append(f"{int(s // size)}{unit}")
            s %= size
    if s or not parts:
        parts.append(f"{s:.3f}".rstrip("0").rstrip(".") + "s")
    return " ".join(parts)


def parse_size(text: str) -> int | None:
    """journalctl's size argument ("200M", "1G", "500K", "4096") in bytes."""
    text = text.strip()
    if not text:
        return None
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    unit = text[-1].upper()
    number = text[:-1] if unit in mult else text
    if unit == "B":
        number, unit = text[:-1], ""
    try:
        value = float(number)
    except ValueError:
        return None
    return int(value * mult.get(unit, 1)) if value >= 0 else None
