"""Probe cost per target-round, client and server side: breakglass vs OpenSSH with the same connections.

The simulators (the SSH servers) run in a child process; their CPU is the
"server" column, read from /proc for each measurement. Both probers make the
same connections for the same readings, every round, per target:

- breakglass: ``probe_target`` with the target's kept connections
  (``ProbeLinks``, as the core does): one fresh guest login, the readings
  over the kept guest connection, ``status`` over the kept host connection.
  Client CPU: ``RUSAGE_SELF`` of this process.
- OpenSSH: one ``ssh`` master per target and side (``ControlMaster``, kept
  open), and per round one fresh ``ssh`` login (``ControlPath=none``,
  ``true``) plus the readings and ``status`` through the masters as mux
  clients. Client CPU: the ``ssh`` processes (``RUSAGE_CHILDREN``) plus the
  masters (/proc).

Targets run concurrently, rounds one after another, after one warm-up round.

    .venv/bin/python bench/probe_cost.py [--rounds 5] [--targets 1,10,100]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simchild import proc_cpu, simulators

from breakglass.config import ProbeSettings, Target
from breakglass.watchdog.links import ProbeLinks
from breakglass.watchdog.parse import PROBE_COMMAND
from breakglass.watchdog.probes import probe_target


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def measure_breakglass(
    targets: list[Target], settings: ProbeSettings, rounds: int, server: int
) -> dict[str, float]:
    """Client and server CPU s/target/round and wall s/round of rounds over kept connections."""

    async def go() -> tuple[float, float, float, int]:
        links = [
            ProbeLinks(t, settings, gate=asyncio.Semaphore(settings.max_concurrent_handshakes))
            for t in targets
        ]
        try:
            await asyncio.gather(
                *(probe_target(t, settings, links=k) for t, k in zip(targets, links, strict=True))
            )
            cpu0, srv0, wall0, bad = _cpu(resource.RUSAGE_SELF), proc_cpu(server), time.monotonic(), 0
            for _ in range(rounds):
                res = await asyncio.gather(
                    *(probe_target(t, settings, links=k) for t, k in zip(targets, links, strict=True))
                )
                bad += sum(1 for r in res if not (r.ssh_ok and r.pve_ok))
            return _cpu(resource.RUSAGE_SELF) - cpu0, proc_cpu(server) - srv0, time.monotonic() - wall0, bad
        finally:
            await asyncio.gather(*(k.close() for k in links))

    cpu, srv, wall, bad = asyncio.run(go())
    if bad:
        print(f"warning: {bad} breakglass readings were not fully green", file=sys.stderr)
    per = len(targets) * rounds
    return {"client": cpu / per, "server": srv / per, "wall": wall / rounds}


def _ssh_argv(ep: dict[str, Any], *options: str) -> list[str]:
    return [
        "ssh",
        "-i",
        str(ep["key_file"]),
        "-o",
        f"UserKnownHostsFile={ep['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-F",
        "/dev/null",
        *options,
        "-p",
        str(ep["port"]),
        f"{ep['user']}@{ep['host']}",
    ]


async def _run(argv: list[str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    await proc.communicate()
    return proc.returncode or 0


def measure_openssh(targets: list[dict[str, Any]], rounds: int, server: int, tmp: str) -> dict[str, float]:
    """The same connections with OpenSSH: kept masters, one fresh login per round, mux clients."""
    masters: list[subprocess.Popen[bytes]] = []
    paths: dict[tuple[int, str], str] = {}
    for i, t in enumerate(targets):
        for side in ("devvm", "pve"):
            path = f"{tmp}/cm-{i}-{side}"
            paths[i, side] = path
            masters.append(
                subprocess.Popen(
                    [
                        *_ssh_argv(
                            t[side],
                            "-o",
                            "ControlMaster=yes",
                            "-o",
                            f"ControlPath={path}",
                            "-o",
                            "ServerAliveInterval=30",
                            "-N",
                        )
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    deadline = time.monotonic() + 60
    while not all(Path(p).exists() for p in paths.values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the OpenSSH masters did not come up within 60 s")
        time.sleep(0.1)

    async def one(i: int, t: dict[str, Any]) -> int:
        fresh = _run([*_ssh_argv(t["devvm"], "-o", "ControlPath=none"), "true"])
        rc = await fresh
        readings = _run([*_ssh_argv(t["devvm"], "-o", f"ControlPath={paths[i, 'devvm']}"), PROBE_COMMAND])
        status = _run([*_ssh_argv(t["pve"], "-o", f"ControlPath={paths[i, 'pve']}"), "status"])
        return int(rc != 0) + sum(int(x != 0) for x in await asyncio.gather(readings, status))

    async def go() -> tuple[float, float, float, float, int]:
        await asyncio.gather(*(one(i, t) for i, t in enumerate(targets)))  # warm-up
        m0 = sum(proc_cpu(m.pid) for m in masters)
        cpu0, srv0, wall0, bad = _cpu(resource.RUSAGE_CHILDREN), proc_cpu(server), time.monotonic(), 0
        for _ in range(rounds):
            bad += sum(await asyncio.gather(*(one(i, t) for i, t in enumerate(targets))))
        cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu0
        return (
            cpu,
            sum(proc_cpu(m.pid) for m in masters) - m0,
            proc_cpu(server) - srv0,
            time.monotonic() - wall0,
            bad,
        )

    try:
        cpu, master_cpu, srv, wall, bad = asyncio.run(go())
    finally:
        for m in masters:
            m.terminate()
        for m in masters:
            m.wait(10)
    if bad:
        print(f"warning: {bad} OpenSSH commands failed", file=sys.stderr)
    per = len(targets) * rounds
    return {"client": (cpu + master_cpu) / per, "server": srv / per, "wall": wall / rounds}


def run_case(count: int, rounds: int, ssh_rounds: int, tmp: str) -> dict[str, Any]:
    """Start ``count`` simulators in a child process and measure both probers against them."""
    with simulators(count, Path(tmp) / f"n{count}") as (server, entries):
        targets = [Target.model_validate(t) for t in entries]
        settings = ProbeSettings(
            connect_timeout_seconds=10.0, command_timeout_seconds=10.0, round_timeout_seconds=30.0
        )
        bg = measure_breakglass(targets, settings, rounds, server)
        ssh = measure_openssh(entries, ssh_rounds, server, tmp)
    return {"n": count, "rounds": rounds, "ssh_rounds": ssh_rounds, "bg": bg, "ssh": ssh}


def main(argv: list[str] | None = None) -> int:
    """Measure each target count and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds per case (default 5)")
    ap.add_argument("--targets", default="1,10,100", help="comma-separated target counts")
    ap.add_argument(
        "--ssh-rounds-100",
        type=int,
        default=2,
        help="OpenSSH rounds for cases of 100+ targets (slow there; default 2)",
    )
    args = ap.parse_args(argv)
    if shutil.which("ssh") is None:
        print("the OpenSSH client (ssh) is needed for the baseline", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bg-cost-") as tmp:
        for n in (int(x) for x in args.targets.split(",") if x):
            ssh_rounds = args.ssh_rounds_100 if n >= 100 else args.rounds
            rows.append(run_case(n, args.rounds, ssh_rounds, tmp))
            print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(
        "CPU seconds per target-round; simulators (the SSH servers) in a child process = server; "
        "same connections for both: 1 fresh guest login per round, readings and status over kept "
        "connections; 2-core machine shared with other work\n"
    )
    head = (
        f"{'targets':>7} | {'rounds bg/ssh':>13} | {'breakglass client':>17} | {'OpenSSH client':>14} | "
        f"{'client ratio':>12} | {'server bg':>9} | {'server ssh':>10} | {'wall s/round bg / ssh':>21}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        bg, ssh = r["bg"], r["ssh"]
        ratio = ssh["client"] / bg["client"] if bg["client"] else float("nan")
        print(
            f"{r['n']:>7} | {r['rounds']:>6}/{r['ssh_rounds']:<6} | "
            f"{bg['client']:>17.4f} | {ssh['client']:>14.4f} | "
            f"{ratio:>11.1f}x | {bg['server']:>9.4f} | {ssh['server']:>10.4f} | "
            f"{bg['wall']:>9.2f} / {ssh['wall']:<9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
