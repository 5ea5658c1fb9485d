"""Simulated VMs in a child process for the benchmarks, and a process's CPU from /proc.

with simulators(100, folder) as (pid, targets):   # targets: config ``targets[]`` items
    ...
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
# Healthy VMs change only when told: they look at their own state once a second, not 20 times.
RECONCILE_SECONDS = 1.0


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


@contextlib.contextmanager
def simulators(count: int, folder: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``count`` simulated VMs served by one child process; yields its pid and their targets."""
    child = subprocess.Popen(
        [sys.executable, __file__, str(count), str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.pid, json.loads(child.stdout.readline())
    finally:
        assert child.stdin is not None
        child.stdin.close()  # the child stops when its stdin closes
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def start_serve(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``breakglass serve -c config`` as a child process, its output in ``log``, started in its folder."""
    with log.open("w") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from breakglass.cli import main; sys.exit(main())",
                "serve",
                "-c",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or dict(os.environ),
            cwd=str(config.parent),
        )


def _serve(count: int, folder: str) -> None:
    from breakglass.sim.runner import SimThread

    with SimThread() as thread:
        entries = [
            thread.serve(
                Path(folder) / f"vm{i}",
                "test",
                target_name=f"vm{i:04d}",
                vmid=100 + i,
                reconcile_seconds=RECONCILE_SECONDS,
            ).server.target_entry()
            for i in range(count)
        ]
        print(json.dumps(entries), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
