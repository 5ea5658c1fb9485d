"""Core-loop lag while the agent's grep runs a hostile regex over a big file.

A timer task on an asyncio loop (the same ``watch_loop_lag`` the core runs,
every 10 ms) records how late each wake-up is while one search runs, four ways:

- idle: no search (the machine's own noise, the baseline);
- re on the loop: Python's backtracking ``re`` called on the loop, as the old
  grep tool did; kept to ONE line of 24 characters (2**24 steps), because on
  the real 41-character lines it would not finish for days;
- RE2 in a thread: the linear-time engine in a worker thread (shares the GIL);
- RE2 in a child process: what the grep tool does now.

    python bench/loop_lag.py [--mb 8]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from breakglass.agent.runbook_files import RunbookFiles, grep_in_subprocess
from breakglass.core import watch_loop_lag
from breakglass.metrics import LOOP_LAG_BUCKETS, Metrics

HOSTILE = "(a+)+$"


async def measure(work: Callable[[], Awaitable[object]]) -> tuple[float, list[float], float]:
    """Run ``work`` with the lag probe ticking; (seconds taken, bucket counts, count)."""
    metrics = Metrics()
    lag = asyncio.create_task(watch_loop_lag(metrics, every=0.01))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await work()
    took = time.monotonic() - started
    await asyncio.sleep(0.05)  # let the probe record the wake-up the work delayed
    lag.cancel()
    reg = metrics.registry
    buckets = [
        reg.get_sample_value("breakglass_core_loop_lag_seconds_bucket", {"le": str(b)}) or 0.0
        for b in LOOP_LAG_BUCKETS
    ]
    return took, buckets, reg.get_sample_value("breakglass_core_loop_lag_seconds_count") or 0.0


def worst(buckets: list[float], count: float) -> str:
    """The smallest bucket bound that holds every wake-up."""
    for bound, n in zip(LOOP_LAG_BUCKETS, buckets, strict=True):
        if n >= count:
            return f"<= {bound * 1000:g} ms"
    return f"> {LOOP_LAG_BUCKETS[-1]:g} s"


def main() -> int:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=8.0, help="size of the file searched")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="breakglass-lag-") as tmp:
        root = Path(tmp)
        line = "a" * 40 + "!\n"
        (root / "big.log").write_text(line * int(args.mb * 1024 * 1024 / len(line)))
        files = RunbookFiles(root)

        async def idle() -> None:
            await asyncio.sleep(2.0)

        async def re_on_loop() -> None:
            await asyncio.sleep(0)
            re.search(HOSTILE, "a" * 24 + "!")

        async def re2_thread() -> None:
            await asyncio.to_thread(files.grep, HOSTILE)

        async def re2_child() -> None:
            await grep_in_subprocess(root, HOSTILE, None, 60.0)

        cases = [
            ("idle (baseline)", idle),
            ("re on the loop, 1 line x 24 chars", re_on_loop),
            (f"RE2 in a thread, {args.mb:g} MB", re2_thread),
            (f"RE2 in a child process, {args.mb:g} MB", re2_child),
        ]
        print(f"{'search':<36} {'took s':>7} {'wake-ups':>8} {'<=10ms':>7} {'<=100ms':>8} worst")
        for name, work in cases:
            took, buckets, count = asyncio.run(measure(work))
            le10 = buckets[LOOP_LAG_BUCKETS.index(0.01)]
            le100 = buckets[LOOP_LAG_BUCKETS.index(0.1)]
            print(f"{name:<36} {took:>7.2f} {count:>8.0f} {le10:>7.0f} {le100:>8.0f} {worst(buckets, count)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
