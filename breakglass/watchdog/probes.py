"""One probe round per target: what the guest says over SSH and what Proxmox says about it.

A round never raises and never outlives ``round_timeout_seconds``: a dead,
hung or unreachable VM becomes a reading that says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from breakglass.config import Config, ProbeSettings, Target
from breakglass.log import configure_logging, get_logger
from breakglass.remote import RemoteError
from breakglass.watchdog import parse
from breakglass.watchdog.links import ProbeLinks

log = get_logger(__name__)
_debug_on = functools.partial(logging.getLogger(__name__).isEnabledFor, logging.DEBUG)


@dataclass(frozen=True)
class Readings:
    """Everything one probe round saw for one target; None means "could not be read"."""

    target: str
    at: float
    duration_seconds: float
    ssh_ok: bool
    ssh_error: str | None
    ssh_refused: bool
    ssh_login_seconds: float | None
    load1: float | None
    load5: float | None
    load15: float | None
    ncpu: int | None
    mem_total_bytes: int | None
    mem_available_bytes: int | None
    swap_total_bytes: int | None
    swap_used_bytes: int | None
    disk_used_ratio: float | None
    failed_units: tuple[str, ...] | None
    pve_ok: bool
    pve_error: str | None
    vm_status: str | None
    qmp_ok: bool | None
    qmp_status: str | None
    guest_agent_ok: bool | None
    uptime_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (failed_units as a list)."""
        # Every field is a scalar or a tuple of str: a shallow copy is enough, and it is
        # about 20 times cheaper than dataclasses.asdict (which deep-copies each value).
        d = {f.name: getattr(self, f.name) for f in _FIELDS}
        if self.failed_units is not None:
            d["failed_units"] = list(self.failed_units)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Readings:
        """Rebuild readings from ``to_dict`` output; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("failed_units") is not None:
            kwargs["failed_units"] = tuple(kwargs["failed_units"])
        return cls(**kwargs)


_DEVVM_EMPTY: dict[str, Any] = {
    "ssh_ok": False,
    "ssh_error": None,
    "ssh_refused": False,
    "ssh_login_seconds": None,
    "load1": None,
    "load5": None,
    "load15": None,
    "ncpu": None,
    "mem_total_bytes": None,
    "mem_available_bytes": None,
    "swap_total_bytes": None,
    "swap_used_bytes": None,
    "disk_used_ratio": None,
    "failed_units": None,
}

_PVE_EMPTY: dict[str, Any] = {
    "pve_ok": False,
    "pve_error": None,
    "vm_status": None,
    "qmp_ok": None,
    "qmp_status": None,
    "guest_agent_ok": None,
    "uptime_seconds": None,
}


_FIELDS = dataclasses.fields(Readings)


def readings_from_output(stdout: str, *, complete: bool) -> dict[str, Any]:
    """Turn the probe command's output into reading fields.

    ``complete`` says the chain ran to its end (exit 0); only then is an empty
    systemctl part trusted to mean "no failed units".
    """
    sections = parse.split_probe_output(stdout)
    load = parse.parse_loadavg(sections.loadavg)
    mem = parse.parse_meminfo("\n".join(sections.meminfo))
    failed: tuple[str, ...] | None = None
    if complete and sections.df:
        failed = parse.parse_failed_units("\n".join(sections.failed_units))
    return {
        "load1": load.load1 if load else None,
        "load5": load.load5 if load else None,
        "load15": load.load15 if load else None,
        "ncpu": parse.parse_nproc(sections.nproc),
        "mem_total_bytes": mem.total,
        "mem_available_bytes": mem.available,
        "swap_total_bytes": mem.swap_total,
        "swap_used_bytes": mem.swap_used,
        "disk_used_ratio": parse.parse_df_used_ratio("\n".join(sections.df)),
        "failed_units": failed,
    }


async def _devvm_side(links: ProbeLinks, target: Target, settings: ProbeSettings) -> dict[str, Any]:
    out = dict(_DEVVM_EMPTY)
    try:
        fresh, seconds = await links.login()
        out["ssh_login_seconds"] = seconds
        result = await links.readings(fresh, parse.PROBE_COMMAND)
    except RemoteError as exc:
        out["ssh_error"] = exc.short
        out["ssh_refused"] = exc.kind == "refused"
        return out
    if result.timed_out:
        # Logged in, but the guest cannot finish a command: not a working SSH.
        out["ssh_error"] = f"timeout: probe command took over {settings.command_timeout_seconds:g}s"
        return out
    out["ssh_ok"] = True
    out.update(readings_from_output(result.stdout, complete=result.exit_status == 0))
    if result.exit_status != 0:
        log.warning(
            "probe_command_failed",
            target=target.name,
            exit_status=result.exit_status,
            stderr=result.stderr[:500],
        )
    return out


async def _pve_side(links: ProbeLinks, target: Target, settings: ProbeSettings) -> dict[str, Any]:
    out = dict(_PVE_EMPTY)
    try:
        st = await links.status()
    except RemoteError as exc:
        out["pve_error"] = exc.short
        return out
    out.update(
        pve_ok=True,
        vm_status=st.vm_status,
        qmp_ok=st.qmp_ok,
        qmp_status=st.qmp_status,
        guest_agent_ok=st.guest_agent_ok,
        uptime_seconds=st.uptime_seconds,
    )
    return out


async def _bounded(
    side: Callable[[ProbeLinks, Target, ProbeSettings], Awaitable[dict[str, Any]]],
    empty: dict[str, Any],
    error_key: str,
    links: ProbeLinks,
    target: Target,
    settings: ProbeSettings,
) -> dict[str, Any]:
    """Run one side within the round timeout; anything unexpected becomes an error reading."""
    try:
        async with asyncio.timeout(settings.round_timeout_seconds):
            return await side(links, target, settings)
    except TimeoutError:
        err = f"timeout: round took over {settings.round_timeout_seconds:g}s"
    except Exception as exc:  # a probe must never take the scheduler down with it
        log.exception("probe_side_failed", target=target.name, side=error_key)
        err = f"unexpected error: {type(exc).__name__}: {exc}"
    return {**empty, error_key: err}


async def probe_target(
    target: Target,
    settings: ProbeSettings,
    *,
    now: Callable[[], float] = time.time,
    links: ProbeLinks | None = None,
) -> Readings:
    """Probe the guest and its Proxmox host concurrently; never raises, never outlasts the round.

    ``links`` are the target's kept connections (the core keeps one per target); without
    them the round opens its own and closes them at the end.
    """
    at = now()
    started = time.monotonic()
    own = links is None
    use = links if links is not None else ProbeLinks(target, settings)
    try:
        devvm, pve = await asyncio.gather(
            _bounded(_devvm_side, _DEVVM_EMPTY, "ssh_error", use, target, settings),
            _bounded(_pve_side, _PVE_EMPTY, "pve_error", use, target, settings),
        )
    finally:
        if own:
            await use.close()
    readings = Readings(
        target=target.name,
        at=at,
        duration_seconds=time.monotonic() - started,
        **devvm,
        **pve,
    )
    if _debug_on():  # the line's fields are only gathered when a debug line is wanted
        log.debug("probe_round", **readings.to_dict())
    return readings


async def probe_all(cfg: Config) -> list[Readings]:
    """Probe every target concurrently, in config order."""
    return list(await asyncio.gather(*(probe_target(t, cfg.probe) for t in cfg.targets)))


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f}G"


def _ssh_cell(r: Readings) -> str:
    if r.ssh_ok:
        return f"ok {r.ssh_login_seconds:.2f}s" if r.ssh_login_seconds is not None else "ok"
    return f"FAIL ({r.ssh_error})"


def _bool_cell(value: bool | None, extra: str | None = None) -> str:
    if value is None:
        return "-"
    text = "ok" if value else "FAIL"
    return f"{text} ({extra})" if extra else text


def _row(r: Readings) -> list[str]:
    load = "-" if r.load1 is None else f"{r.load1:.2f} {r.load5:.2f} {r.load15:.2f}"
    swap = (
        "-"
        if r.swap_total_bytes is None
        else f"{_gib(r.swap_used_bytes)}/{_gib(r.swap_total_bytes)}"
    )
    disk = "-" if r.disk_used_ratio is None else f"{r.disk_used_ratio:.0%}"
    units = "-" if r.failed_units is None else (",".join(r.failed_units) or "none")
    vm = r.vm_status if r.pve_ok else f"FAIL ({r.pve_error})"
    return [
        r.target,
        _ssh_cell(r),
        load,
        "-" if r.ncpu is None else str(r.ncpu),
        f"{_gib(r.mem_available_bytes)}/{_gib(r.mem_total_bytes)}",
        swap,
        disk,
        units,
        vm or "-",
        _bool_cell(r.qmp_ok, r.qmp_status),
        _bool_cell(r.guest_agent_ok),
    ]


_HEADERS = [
    "TARGET", "SSH", "LOAD 1/5/15", "CPUS", "MEM AVAIL/TOTAL", "SWAP USED/TOTAL",
    "DISK", "FAILED UNITS", "VM", "QMP", "AGENT",
]  # fmt: skip


def format_table(readings: list[Readings]) -> str:
    """Render readings as an aligned plain-text table, one row per target."""
    rows = [_HEADERS, *(_row(r) for r in readings)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def probe_command(cfg: Config, *, as_json: bool) -> int:
    """Run ``breakglass probe``: one round per target, printed as a table or a JSON list.

    Exit 0 when every target's guest and Proxmox host answered, 1 when any did not.
    """
    # Log lines go to stderr so stdout stays a clean table or JSON document.
    configure_logging(cfg.log, stream=sys.stderr)
    try:
        readings = asyncio.run(probe_all(cfg))
    except Exception as exc:  # the CLI reports, it does not dump a traceback
        print(f"breakglass probe: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps([r.to_dict() for r in readings], indent=2) if as_json else format_table(readings)
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # `breakglass probe | head` closed the pipe early: not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter exit quiet
    failed = [r.target for r in readings if not (r.ssh_ok and r.pve_ok)]
    if failed:
        print(f"breakglass probe: unreachable: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
