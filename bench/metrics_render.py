"""What a ``/metrics`` scrape costs to render at 100, 300 and 1,000 targets, now and at a baseline revision.

Both sides get the same series: every target initialised (``init_target``),
one probe round and its conditions, as the core does. Timed, in this process,
one after another:

- baseline: ``generate_latest`` on the registry of ``breakglass/metrics.py``
  as of ``--baseline`` (a git revision; by default the last one that kept one
  ``prometheus_client`` object per series), loaded from ``git show``;
- first: the current code's first render (every line formatted);
- after a round: every target's next round observed (new load, memory,
  timestamps, round counters and duration), then a render: what a scrape
  costs when the whole fleet was probed since the previous one;
- unchanged: a render with nothing changed since the previous one.

Each figure is the median of ``--repeat`` renders (the first render once).
Also printed: series and bytes per scrape, and whether the two outputs are
identical (they should be, byte for byte).

    .venv/bin/python bench/metrics_render.py [--targets 100,300,1000] [--repeat 5] [--baseline d46d58c]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import generate_latest

from breakglass.metrics import Metrics
from breakglass.watchdog.probes import Readings

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from readings_support import healthy_readings  # noqa: E402

BASELINE = "d46d58c"  # the last revision that rendered through prometheus_client's objects


def load_baseline(ref: str, folder: Path) -> ModuleType:
    """``breakglass/metrics.py`` as of ``ref``, imported under another name."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:breakglass/metrics.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = folder / "baseline_metrics.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("baseline_metrics", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def round_of(target: str, n: int) -> Readings:
    """Target ``target``'s ``n``th healthy round: values that change from round to round."""
    return healthy_readings(
        target=target,
        at=1_800_000_000.0 + 15 * n,
        duration_seconds=0.2 + (n % 7) / 10,
        load1=0.5 + n / 100,
        mem_available_bytes=5 * 2**30 + n * 4096,
        ssh_login_seconds=0.1 + (n % 5) / 100,
    )


def fill(m: Any, targets: int, n: int) -> None:
    for i in range(targets):
        t = f"vm{i:04d}"
        if n == 0:
            m.init_target(t)
        m.observe_readings(round_of(t, n))
        m.set_conditions(t, [])


def timed(render: Callable[[], bytes], repeat: int, before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        render()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="100,300,1000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = load_baseline(args.baseline, Path(tmp))
        rows = []
        for targets in (int(x) for x in args.targets.split(",")):
            base, cur = old.Metrics(), Metrics()
            fill(base, targets, 0)
            fill(cur, targets, 0)
            base_s = timed(lambda b=base: generate_latest(b.registry), args.repeat)
            started = time.perf_counter()
            body = cur.render()
            first_s = time.perf_counter() - started
            same = body == generate_latest(base.registry)
            rounds = iter(range(1, 10_000))
            after_s = timed(
                cur.render, args.repeat, lambda c=cur, t=targets, r=rounds: fill(c, t, next(r))
            )
            unchanged_s = timed(cur.render, args.repeat)
            series = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
            rows.append((targets, series, len(body), base_s, first_s, after_s, unchanged_s, same))
    print(f"render of one /metrics scrape, this process, median of {args.repeat}; baseline = {args.baseline}")
    print(f"{'targets':>7} {'series':>7} {'MB':>5} {'baseline ms':>11} {'first ms':>9} "
          f"{'after round ms':>14} {'unchanged ms':>12} {'speed-up':>8} {'same text':>9}")
    for targets, series, size, base_s, first_s, after_s, unchanged_s, same in rows:
        print(f"{targets:>7} {series:>7} {size / 1e6:>5.1f} {base_s * 1000:>11.0f} {first_s * 1000:>9.0f} "
              f"{after_s * 1000:>14.0f} {unchanged_s * 1000:>12.1f} {base_s / after_s:>7.0f}x {same!s:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
