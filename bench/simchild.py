"""Simulated VMs in a child process for the benchmarks, a process's CPU from /proc, older serves.

with simulators(100, folder) as (pid, targets):   # targets: config ``targets[]`` items
    ...
start_serve(config, log, env={**os.environ, "PYTHONPATH": str(source_tree("d46d58c", tmp))})
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
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


def source_tree(ref: str, tmp: Path) -> Path:
    """The package tree of git revision ``ref``, extracted under ``tmp``: put it on PYTHONPATH."""
    dest = tmp / f"src-{ref}"
    if not dest.exists():
        dest.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref, "breakglass"], check=True, capture_output=True
        ).stdout
        tar = dest / "src.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as tf:
            tf.extractall(dest, filter="data")
    return dest


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark dies, however it dies (Linux)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_serve(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``breakglass serve -c config`` as a child process, its output in ``log``, started in its folder.

    It is stopped when the benchmark stops, even by a signal its ``finally`` never sees.
    """
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
            preexec_fn=_die_with_parent,
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
