"""Probe cost: CPU seconds per target per round, breakglass vs an ssh-per-command script.

The simulators run in a child process (N ``SimServer`` on one ``SimThread``),
so their CPU is excluded from both measurements. The breakglass side runs
``probe_target`` for every target concurrently in this process and reads
``RUSAGE_SELF``; the baseline takes the same readings the way a cron-script
watchdog would, one OpenSSH ``ssh`` process per command (login check, the five
reading commands, ``status`` on the Proxmox host), and reads ``RUSAGE_CHILDREN``.

    .venv/bin/python bench/probe_cost.py [--rounds 5] [--targets 1,10,100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from breakglass.config import ProbeSettings, Target
from breakglass.watchdog.probes import probe_target

# The reading commands of the probe, one ssh process each in the baseline.
DEVVM_COMMANDS = (
    "true",
    "cat /proc/loadavg",
    "nproc",
    "cat /proc/meminfo",
    "df -P /",
    "systemctl --failed --no-legend --plain",
)
PVE_COMMAND = "status"


def serve(count: int, folder: str) -> None:
    """Child mode: serve ``count`` simulators, print their targets as JSON, run until stdin closes."""
    from breakglass.sim.runner import SimThread

    with SimThread() as thread:
        sims = [
            thread.serve(Path(folder) / f"vm{i}", "test", target_name=f"vm{i}", vmid=100 + i)
            for i in range(count)
        ]
        targets = [s.config.targets[0].model_dump(mode="json") for s in sims]  # type: ignore[union-attr]
        probe = sims[0].config.probe.model_dump(mode="json")  # type: ignore[union-attr]
        print(json.dumps({"targets": targets, "probe": probe}), flush=True)
        sys.stdin.read()  # the parent closes stdin to stop us


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def measure_breakglass(targets: list[Target], settings: ProbeSettings, rounds: int) -> tuple[float, float]:
    """CPU s/target/round and wall s/round of ``probe_target`` over all targets concurrently."""

    async def go() -> tuple[float, float, int]:
        await asyncio.gather(*(probe_target(t, settings) for t in targets))  # warm-up round
        cpu0, wall0, bad = _cpu(resource.RUSAGE_SELF), time.monotonic(), 0
        for _ in range(rounds):
            res = await asyncio.gather(*(probe_target(t, settings) for t in targets))
            bad += sum(1 for r in res if not (r.ssh_ok and r.pve_ok))
        return _cpu(resource.RUSAGE_SELF) - cpu0, time.monotonic() - wall0, bad

    cpu, wall, bad = asyncio.run(go())
    if bad:
        print(f"warning: {bad} breakglass readings were not fully green", file=sys.stderr)
    return cpu / len(targets) / rounds, wall / rounds


def _ssh_argv(ep: dict[str, Any], command: str) -> list[str]:
    return [
        "ssh", "-i", str(ep["key_file"]), "-o", f"UserKnownHostsFile={ep['known_hosts']}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
        "-p", str(ep["port"]), f"{ep['user']}@{ep['host']}", command,
    ]  # fmt: skip


def measure_ssh(targets: list[dict[str, Any]], rounds: int) -> tuple[float, float]:
    """CPU s/target/round and wall s/round of one ssh process per reading command."""

    async def one_target(t: dict[str, Any]) -> int:
        failures = 0
        jobs = [(t["devvm"], c) for c in DEVVM_COMMANDS] + [(t["pve"], PVE_COMMAND)]
        for ep, command in jobs:  # a script runs its commands one after another
            proc = await asyncio.create_subprocess_exec(
                *_ssh_argv(ep, command), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            await proc.communicate()
            failures += proc.returncode != 0
        return failures

    async def go() -> tuple[float, float, int]:
        cpu0, wall0, bad = _cpu(resource.RUSAGE_CHILDREN), time.monotonic(), 0
        for _ in range(rounds):
            bad += sum(await asyncio.gather(*(one_target(t) for t in targets)))
        return _cpu(resource.RUSAGE_CHILDREN) - cpu0, time.monotonic() - wall0, bad

    cpu, wall, bad = asyncio.run(go())
    if bad:
        print(f"warning: {bad} ssh baseline commands failed", file=sys.stderr)
    return cpu / len(targets) / rounds, wall / rounds


def run_case(count: int, rounds: int, ssh_rounds: int, tmp: str) -> dict[str, Any]:
    """Start ``count`` simulators in a child process and measure both probers against them."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(count), "--dir", f"{tmp}/n{count}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        targets = [Target.model_validate(t) for t in info["targets"]]
        # The bench's own rounds are bounded by the profile's round timeout like the core's.
        settings = ProbeSettings.model_validate(info["probe"]).model_copy(
            update={"connect_timeout_seconds": 10.0, "command_timeout_seconds": 10.0,
                    "round_timeout_seconds": 30.0}
        )  # fmt: skip
        bg_cpu, bg_wall = measure_breakglass(targets, settings, rounds)
        ssh_cpu, ssh_wall = measure_ssh(info["targets"], ssh_rounds)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return {"n": count, "rounds": rounds, "ssh_rounds": ssh_rounds,
            "bg_cpu": bg_cpu, "bg_wall": bg_wall, "ssh_cpu": ssh_cpu, "ssh_wall": ssh_wall}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Measure each target count and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds per case (default 5)")
    ap.add_argument("--targets", default="1,10,100", help="comma-separated target counts")
    ap.add_argument("--ssh-rounds-100", type=int, default=1,
                    help="baseline rounds for cases of 100+ targets (ssh is slow there; default 1)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.dir)
        return 0
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
    print("simulators in a child process (excluded); breakglass: probe_target for all targets "
          "concurrently, RUSAGE_SELF; baseline: one ssh process per command "
          f"({len(DEVVM_COMMANDS)} devvm + 1 pve), targets concurrently, RUSAGE_CHILDREN\n")
    head = (f"{'targets':>7} | {'rounds bg/ssh':>13} | {'breakglass CPU s/target/round':>29} | "
            f"{'ssh-baseline CPU s/target/round':>31} | {'ratio':>6} | {'wall s/round bg / ssh':>21}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r["ssh_cpu"] / r["bg_cpu"] if r["bg_cpu"] else float("nan")
        print(f"{r['n']:>7} | {r['rounds']:>6}/{r['ssh_rounds']:<6} | {r['bg_cpu']:>29.4f} | "
              f"{r['ssh_cpu']:>31.4f} | {ratio:>5.1f}x | {r['bg_wall']:>9.2f} / {r['ssh_wall']:<9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
