"""The benchmarks' child serve dies with the benchmark, even when it is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import wait_for

from breakglass.sim.runner import SimHandle

BENCH = Path(__file__).resolve().parent.parent / "bench"

# A stand-in benchmark: starts a real serve with start_serve, prints its pid, waits.
PARENT = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import simchild
child = simchild.start_serve(Path(sys.argv[2]), Path(sys.argv[3]))
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


def test_the_serve_of_a_benchmark_killed_with_sigkill_is_stopped_too(sim: SimHandle, tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(BENCH), str(sim.config_path), str(tmp_path / "serve.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    log = tmp_path / "serve.log"
    try:
        wait_for(lambda: '"serving"' in log.read_text(), within=30, what="the benchmark's serve to listen")
        parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can stop the child
        parent.wait()
        wait_for(lambda: not _alive(child), within=30, what="the orphaned serve to get SIGTERM and stop")
        assert '"stopping"' in log.read_text()  # it stopped as SIGTERM stops it, not by dying some other way
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()
