"""The benchmarks' child serve dies with the benchmark, even when it is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import wait_for

BENCH = Path(__file__).resolve().parent.parent / "bench"

# A stand-in benchmark: starts a long-lived child the way start_serve does, prints its pid, waits.
PARENT = """
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import simchild
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         preexec_fn=simchild._die_with_parent)
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_child_of_a_benchmark_killed_with_sigkill_is_stopped_too() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(BENCH)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can stop the child
        parent.wait()
        wait_for(lambda: not _alive(child), within=10, what="the orphaned child to get SIGTERM")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()
