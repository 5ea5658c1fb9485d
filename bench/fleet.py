"""A fleet on one box: ``breakglass serve`` watching N healthy simulated VMs, measured from outside.

For each N the simulators run in a child process (N ``SimServer`` on one
loop, polling their own state once a second instead of 20 times) and
``breakglass serve`` runs as another child with a config watching all of
them at ``--interval``. After a warm-up of one interval plus 10 s, a window
of ``--duration`` seconds is measured:

- serve CPU: utime + stime of the serve process over the window (/proc),
  as a percentage of one core; RSS at the end of the window;
- rounds: every stored round that started in the window, less its last 5 s
  (a round started then may be cut off by serve's stop; the store is read
  directly): p50/p99 of their wall time, rounds per target against the
  ``(duration - 5) / interval`` the grid promises (missed = fewer than that),
  and late starts (more than 1 s after their slot) from
  ``breakglass_probe_round_lateness_seconds``;
- false incidents: every incident opened in the window (the VMs are healthy);
- ``GET /`` every 5 s (a person reloading) and ``GET /metrics`` every 15 s (a
  Prometheus scrape) during the window: wall time p50 / max;
- failed rounds: the commonest errors of rounds that were not fully green.

``--baseline REF`` runs the same fleet a second time with the serve of git
revision REF (extracted with ``git archive``), in the same run.

    .venv/bin/python bench/fleet.py [--targets 100,300,1000] [--interval 15] [--duration 180]
                                    [--baseline 3585b16]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from simchild import proc_cpu, simulators, source_tree, start_serve

from breakglass.sim.statedir import free_port

REPO = Path(__file__).resolve().parent.parent
SETTLE_SECONDS = 5.0  # rounds that started this close to the end of the window are not counted
PAGE_EVERY_SECONDS = 5.0  # a person reloading the page
SCRAPE_EVERY_SECONDS = 15.0  # Prometheus scraping /metrics


def _get(url: str, timeout: float = 60.0) -> tuple[float, bytes]:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    return time.monotonic() - started, body


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _metric(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Sum of the samples called ``name`` whose labels include ``labels``; None when absent."""
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
                found = True
    return total if found else None


class Sampler(threading.Thread):
    """Times GET / and GET /metrics every few seconds until stopped."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.page: list[float] = []
        self.metrics: list[float] = []
        self.errors = 0
        self.stop_at = threading.Event()

    def run(self) -> None:
        ticks = 0
        while not self.stop_at.wait(PAGE_EVERY_SECONDS):
            ticks += 1
            paths = [("/", self.page)]
            if ticks % round(SCRAPE_EVERY_SECONDS / PAGE_EVERY_SECONDS) == 0:
                paths.append(("/metrics", self.metrics))
            for path, into in paths:
                try:
                    into.append(_get(self.base + path)[0])
                except OSError:
                    self.errors += 1


def run_case(
    n: int, args: argparse.Namespace, tmp: Path, entries: list[dict[str, Any]], code: str, sims: int
) -> dict[str, Any]:
    """Run one serve over ``entries`` and measure it; ``code`` is "HEAD" or a git revision."""
    folder = tmp / f"{code}-n{n}"
    folder.mkdir()
    port = free_port()
    cfg = {
        "store_path": str(folder / "breakglass.db"),
        "targets": entries,
        "probe": {"interval_seconds": args.interval},
        "budget": {"dry_run": True},
        "web": {"port": port},
        "log": {"format": "json", "level": "warning"},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if code != "HEAD":
        env["PYTHONPATH"] = str(source_tree(code, tmp))
    proc = start_serve(folder / "config.yaml", folder / "serve.log", env)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"code": code, "n": n, "interval": args.interval}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(base + "/healthz", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out["died"] = f"serve did not start (exit {proc.poll()})"
                    return out
                time.sleep(0.5)
        time.sleep(args.interval + 10)  # every target has had its first round
        metrics0 = _get(base + "/metrics")[1].decode()
        cpu0, sim0, t0, wall0 = proc_cpu(proc.pid), proc_cpu(sims), time.time(), time.monotonic()
        sampler = Sampler(base)
        sampler.start()
        while time.monotonic() - wall0 < args.duration and proc.poll() is None:
            time.sleep(1)
        sampler.stop_at.set()
        sampler.join(120)
        if proc.poll() is not None:
            out["died"] = f"serve exited {proc.returncode} during the window"
            return out
        cpu1, sim1, t1, wall1 = proc_cpu(proc.pid), proc_cpu(sims), time.time(), time.monotonic()
        out["rss"] = _rss_mib(proc.pid)
        metrics1 = _get(base + "/metrics")[1].decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out["cpu"] = 100 * (cpu1 - cpu0) / (wall1 - wall0)
    out["sim_cpu"] = 100 * (sim1 - sim0) / (wall1 - wall0)
    db = sqlite3.connect(f"file:{folder / 'breakglass.db'}?mode=ro", uri=True)
    # Rounds are counted up to a few seconds before serve is stopped: one that started just
    # before the stop was cut off by it (serve cancels rounds in flight), not missed.
    counted_until = t1 - SETTLE_SECONDS
    rows = db.execute(
        "SELECT target, json_extract(data, '$.duration_seconds') FROM readings WHERE at >= ? AND at < ?",
        (t0, counted_until),
    ).fetchall()
    out["errors"] = db.execute(
        "SELECT COALESCE(json_extract(data, '$.ssh_error'), '') || ' | ' || "
        "COALESCE(json_extract(data, '$.pve_error'), '') AS e, COUNT(*) FROM readings "
        "WHERE at >= ? AND at < ? "
        "AND NOT (json_extract(data, '$.ssh_ok') AND json_extract(data, '$.pve_ok')) "
        "GROUP BY e ORDER BY 2 DESC LIMIT 3",
        (t0, counted_until),
    ).fetchall()
    out["false_incidents"] = db.execute(
        "SELECT COUNT(*) FROM incidents WHERE opened_at >= ?", (t0,)
    ).fetchone()[0]
    db.close()
    durations = sorted(d for _, d in rows if d is not None)
    per_target: dict[str, int] = {e["name"]: 0 for e in entries}
    for target, _ in rows:
        per_target[target] = per_target.get(target, 0) + 1
    promised = int((counted_until - t0) // args.interval)
    out["rounds"] = len(rows)
    out["missed"] = sum(max(0, promised - got) for got in per_target.values())
    if durations:
        out["p50"] = statistics.median(durations)
        out["p99"] = durations[min(len(durations) - 1, int(0.99 * len(durations)))]
    late = [_metric(m, "breakglass_probe_round_lateness_seconds_count") for m in (metrics0, metrics1)]
    within = [
        _metric(m, "breakglass_probe_round_lateness_seconds_bucket", {"le": "1.0"})
        for m in (metrics0, metrics1)
    ]
    if None not in late and None not in within:
        out["late"] = int((late[1] - late[0]) - (within[1] - within[0]))  # type: ignore[operator]
    out["page"], out["metrics"], out["http_errors"] = sampler.page, sampler.metrics, sampler.errors
    return out


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f}"


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The table, one row per (code, N)."""
    print(
        f"interval {args.interval:g} s, window {args.duration:g} s after a warm-up; simulators in a "
        "separate process; serve in dry run; 2-core machine shared with other work"
    )
    head = (
        f"{'code':8} {'targets':>7} {'serve CPU %':>11} {'RSS MiB':>8} {'round p50 s':>11} "
        f"{'round p99 s':>11} {'rounds':>7} {'missed':>6} {'late>1s':>7} {'false inc':>9} "
        f"{'/ ms p50/max':>14} {'/metrics ms p50/max':>19} {'sim CPU %':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if "cpu" not in r:
            print(f"{r['code']:8} {r['n']:>7}  {r.get('died', 'no result')}")
            continue
        print(
            f"{r['code']:8} {r['n']:>7} {r['cpu']:>11.1f} {r['rss']:>8.0f} "
            f"{r.get('p50', float('nan')):>11.3f} {r.get('p99', float('nan')):>11.3f} "
            f"{r['rounds']:>7} {r['missed']:>6} {r.get('late', '-')!s:>7} "
            f"{r['false_incidents']:>9} {_ms(r['page']):>14} {_ms(r['metrics']):>19} {r['sim_cpu']:>9.1f}"
            + (f"  ({r['http_errors']} HTTP errors)" if r["http_errors"] else "")
        )
        for error, count in r["errors"]:
            print(f"{'':17}failed rounds: {count} x {error}")


def main(argv: list[str] | None = None) -> int:
    """Run each fleet size (and the baseline, if asked) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="100,300,1000", help="comma-separated fleet sizes")
    ap.add_argument("--interval", type=float, default=15.0, help="probe interval (default 15 s)")
    ap.add_argument("--duration", type=float, default=180.0, help="measured window per case (default 180 s)")
    ap.add_argument("--baseline", help="also run the serve of this git revision (e.g. 3585b16)")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bg-fleet-") as name:
        tmp = Path(name)
        for n in (int(x) for x in args.targets.split(",") if x):
            with simulators(n, tmp / f"sims{n}") as (sims, entries):
                for code in ["HEAD", *([args.baseline] if args.baseline else [])]:
                    results.append(run_case(n, args, tmp, entries, code, sims))
                    print(f"{code} n={n}: done", file=sys.stderr, flush=True)
    print_table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
