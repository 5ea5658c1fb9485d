"""One vm_stopped fault detected two ways in one run: the watchdog's rules vs Prometheus -> Alertmanager.

Each run starts a fresh stack on loopback (tests/promstack.py): the simulator,
``breakglass serve`` with the ``test`` profile's own rules, a real Prometheus
scraping it with the shipped alert rules, and a real Alertmanager routing
with the shipped example to serve's webhook. serve runs in dry-run, so no
power verb brings the VM back and both paths see the same stopped VM.

Both paths run at the same time scale: the test profile probes every 1 s
instead of the default 10 s, so by default Prometheus scrapes and evaluates
every 1 s instead of the example's 10 s, and the shipped ``for:`` and
``group_wait`` shrink by the same 1/10.

Latencies are seconds from the inject to: the incident the watchdog's rules
open (``opened_at``), the Prometheus alert seen firing, and Alertmanager's
notification counted by the webhook (``breakglass_alerts_received_total``),
each polled every 50 ms.

    .venv/bin/python bench/detection_paths.py [--runs 3] [--scale 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from promstack import ALERTMANAGER_EXAMPLE, ALERTS, Stack, duration, seconds

ALERT = "BreakglassVmDown"
POLL_SECONDS = 0.05


def shipped_for(alert: str) -> float:
    """The shipped ``for:`` of ``alert``, in seconds."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert]
    return seconds(rule["for"])


def shipped_group_wait() -> float:
    """The example Alertmanager route's ``group_wait``, in seconds."""
    return seconds(yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))["route"]["group_wait"])


def run_one(folder: Path, *, scale: float, interval: str, timeout: float) -> dict[str, Any]:
    """Inject vm_stopped into a fresh stack; return when each path noticed it."""
    with Stack(folder) as s:
        s.start_all(
            quiet_watchdog=False,
            dry_run=True,
            for_scale=scale,
            scrape_interval=interval,
            evaluation_interval=interval,
            group_wait=duration(shipped_group_wait() * scale),
            group_interval=duration(max(1.0, 60 * scale)),
        )
        # Healthy and scraped before the fault, as in production.
        s.wait(lambda: s.query('count_over_time(up{job="breakglass"}[10s]) >= 2'), 20, "two scrapes")
        s.inject("vm_stopped")
        injected = time.time()
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < 3 and time.monotonic() < deadline:
            now = time.time()
            if "rule" not in seen:
                rule = [i for i in s.incidents() if i["trigger"] == "rule"]
                if rule:
                    seen["rule"] = rule[-1]["opened_at"]
            if "firing" not in seen and s.firing(ALERT):
                seen["firing"] = now
            if "delivered" not in seen and s.metric("breakglass_alerts_received_total", status="firing") >= 1:
                seen["delivered"] = now
            time.sleep(POLL_SECONDS)
        return {k: v - injected for k, v in seen.items()}


# --defaults: the stock pipeline as issue 13 measured it, beside breakglass at its shipped defaults.
STOCK_INTERVAL = "15s"  # scrape and evaluation
STOCK_FOR = 60.0  # for: 1m on the SSH alert
STOCK_GROUP_WAIT = "30s"
SSH_ALERT = "BreakglassSshFailing"
DEFAULTS_FAULTS = ("sshd_dead", "io_stall")


def run_defaults(folder: Path, fault: str, timeout: float) -> dict[str, Any]:
    """Inject ``fault`` into a fresh stack: breakglass at shipped defaults vs the stock alert path."""
    with Stack(folder) as s:
        s.start_all(
            quiet_watchdog=False,
            dry_run=True,
            shipped_defaults=True,
            for_scale=STOCK_FOR / shipped_for(SSH_ALERT),
            scrape_interval=STOCK_INTERVAL,
            evaluation_interval=STOCK_INTERVAL,
            group_wait=STOCK_GROUP_WAIT,
            group_interval="5m",
        )
        # Healthy and scraped (twice) before the fault, as in production.
        s.wait(lambda: s.query('count_over_time(up{job="breakglass"}[40s]) >= 2'), 60, "two scrapes")
        s.inject(fault)
        injected = time.time()
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < 2 and time.monotonic() < deadline:
            now = time.time()
            if "rule" not in seen:
                rule = [i for i in s.incidents() if i["trigger"] == "rule"]
                if rule:
                    seen["rule"] = rule[-1]["opened_at"]
            if "delivered" not in seen and s.metric("breakglass_alerts_received_total", status="firing") >= 1:
                seen["delivered"] = now
            time.sleep(0.25)
        return {k: v - injected for k, v in seen.items()}


def main_defaults(runs: int, timeout: float) -> int:
    """``--defaults``: each fault ``runs`` times; print both paths and the ratio of the medians."""
    from breakglass.config import ProbeSettings, RuleSettings

    started = time.monotonic()
    results: dict[str, list[dict[str, float]]] = {f: [] for f in DEFAULTS_FAULTS}
    with tempfile.TemporaryDirectory(prefix="breakglass-paths-") as tmp:
        for i in range(runs):
            for fault in DEFAULTS_FAULTS:
                r = run_defaults(Path(tmp) / f"{fault}{i}", fault, timeout)
                results[fault].append(r)
                print(
                    f"{fault} run {i + 1}/{runs}: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.items()),
                    file=sys.stderr,
                    flush=True,
                )
    p, rules = ProbeSettings(), RuleSettings()
    print(
        f"breakglass at its shipped defaults: interval {p.interval_seconds:g}s, connect timeout "
        f"{p.connect_timeout_seconds:g}s, ssh_rounds {rules.ssh_rounds}"
    )
    print(
        f"stock path: scrape and evaluation {STOCK_INTERVAL}, {SSH_ALERT} for: {duration(STOCK_FOR)}, "
        f"group_wait {STOCK_GROUP_WAIT}, Alertmanager -> webhook"
    )
    print(f"runs: {runs} per fault, a fresh stack each; serve in dry run, so the fault stays for both paths")
    print("seconds from inject, median / max\n")
    print(f"{'fault':12} {'breakglass':>15} {'stock path':>15} {'ratio':>7}")
    print("-" * 52)
    missing = 0
    for fault, rs in results.items():
        rule = [r["rule"] for r in rs if "rule" in r]
        stock = [r["delivered"] for r in rs if "delivered" in r]
        missing += sum(1 for r in rs if len(r) < 2)
        ratio = statistics.median(rule) / statistics.median(stock) if rule and stock else float("nan")
        print(f"{fault:12} {_cell(rule):>15} {_cell(stock):>15} {ratio:6.2f}x")
    print(f"\ntotal {time.monotonic() - started:.0f}s" + (f"; {missing} run(s) timed out" if missing else ""))
    return 1 if missing else 0


def _cell(values: list[float]) -> str:
    if not values:
        return "      -       "
    return f"{statistics.median(values):5.2f} / {max(values):5.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run ``--runs`` times and print both paths' latencies and their ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh stacks to run (default 3)")
    ap.add_argument(
        "--scale",
        type=float,
        default=1 / 10,
        help="multiplier for the shipped for: and group_wait (default 1/10: 10 s -> 1 s probes)",
    )
    ap.add_argument("--interval", default="1s", help="Prometheus scrape and evaluation interval (default 1s)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for both paths per run")
    ap.add_argument(
        "--defaults",
        action="store_true",
        help="breakglass at its shipped defaults beside the stock path (15 s, for: 1m, "
        "group_wait 30 s) on sshd_dead and io_stall",
    )
    args = ap.parse_args(argv)
    if args.defaults:
        return main_defaults(args.runs, max(args.timeout, 240.0))

    started = time.monotonic()
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="breakglass-paths-") as tmp:
        for i in range(args.runs):
            results.append(
                run_one(Path(tmp) / f"run{i}", scale=args.scale, interval=args.interval, timeout=args.timeout)
            )
            print(
                f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v:.2f}s" for k, v in results[-1].items()),
                file=sys.stderr,
                flush=True,
            )

    probe = 1.0  # the test profile's probe.interval_seconds; vm_not_running_rounds is 1
    scrape = seconds(args.interval)
    for_s = shipped_for(ALERT) * args.scale
    wait_s = shipped_group_wait() * args.scale
    print(f"watchdog rules: probe interval {probe:g}s, vm_not_running_rounds 1 (profile test)")
    print(
        f"alert path: scrape {args.interval}, evaluation {args.interval}, {ALERT} for {duration(for_s)} "
        f"(shipped {duration(shipped_for(ALERT))} x {args.scale:.4g}), group_wait {duration(wait_s)} "
        f"(shipped {duration(shipped_group_wait())} x {args.scale:.4g})"
    )
    print(f"runs: {args.runs}; serve in dry-run, so the VM stays down for both paths")
    print("seconds from inject, median / max; floor: the stated intervals added up (worst phase)")
    print()
    rows = [
        ("watchdog rules: incident opened", "rule", probe * 1),
        ("Prometheus: alert firing", "firing", scrape + scrape + for_s),
        ("Alertmanager -> webhook: delivered", "delivered", scrape + scrape + for_s + wait_s),
    ]
    print(f"{'path':36} {'detect':>15}  {'floor':>6}")
    print("-" * 60)
    for label, key, floor in rows:
        print(f"{label:36} {_cell([r[key] for r in results if key in r]):>15}  {floor:6.2f}")
    print("-" * 60)
    rule = [r["rule"] for r in results if "rule" in r]
    delivered = [r["delivered"] for r in results if "delivered" in r]
    if rule and delivered:
        ratio = statistics.median(delivered) / statistics.median(rule)
        print(f"{'ratio webhook path / watchdog rules':36} {ratio:14.1f}x  (of the medians)")
    missing = sum(1 for r in results if len(r) < 3)
    print(f"\ntotal {time.monotonic() - started:.0f}s" + (f"; {missing} run(s) timed out" if missing else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
