"""Detection latency and time to recovery per fault class, against the simulator.

Each run injects one fault into a fresh simulated VM watched by a fresh core
(``test`` profile time constants, the model agent off, so the runbook acts).
Latencies come from the store: ``opened_at`` and ``closed_at`` minus the
inject time. The floor is what the config implies: interval x the rule's
rounds (+ the probe timeout where the probe hangs; + boot and verify rounds
for power fixes).

    .venv/bin/python bench/detection.py [--runs 3] [--faults io_stall,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from breakglass.config import Config
from breakglass.core import Core, CoreThread
from breakglass.metrics import Metrics
from breakglass.sim.runner import SimThread
from breakglass.sim.vm import SimTiming
from breakglass.store import Store

CLOSED = ("resolved", "escalated", "failed")
# fault -> (rule setting holding its rounds, the probe hangs until a timeout, power fix)
FAULTS: dict[str, tuple[str, bool, bool]] = {
    "io_stall": ("ssh_rounds", True, True),
    "guest_hang": ("ssh_rounds", True, True),
    "vm_stopped": ("vm_not_running_rounds", False, True),
    "vm_paused": ("vm_not_running_rounds", False, True),
    "sshd_dead": ("ssh_rounds", False, True),
    "unit_failed": ("failed_units_rounds", False, False),
    "disk_full": ("disk_rounds", False, False),
    "memory_hog": ("memory_for_seconds", False, False),
    "network_partition": ("ssh_rounds", True, False),
    "pve_unreachable": ("pve_rounds", False, False),
}


def floors(cfg: Config, fault: str) -> tuple[float, float]:
    """The detection and recovery floors the config implies for ``fault``."""
    rule, hangs, power = FAULTS[fault]
    interval = cfg.probe.interval_seconds
    value = getattr(cfg.rules, rule)
    detect = float(value) if rule.endswith("_seconds") else interval * value
    if hangs:
        detect += cfg.probe.connect_timeout_seconds
    recover = detect
    if power:
        recover += SimTiming.profile("test").boot_seconds
    if fault not in ("network_partition", "pve_unreachable"):
        recover += interval * cfg.incidents.verify_rounds  # green rounds before resolved
    return detect, recover


def run_one(fault: str, folder: Path, timeout: float) -> dict[str, Any]:
    """Inject ``fault`` into a fresh simulator + core; return the latencies from the store."""
    with SimThread() as thread:
        sim = thread.serve(folder / "sim", "test")
        cfg = sim.config
        assert cfg is not None
        cfg = cfg.model_copy(
            update={
                "agent": cfg.agent.model_copy(update={"enabled": "never"}),
                "remediation": cfg.remediation.model_copy(update={"hog_allowlist": ("leaky-batch",)}),
            }
        )
        store = Store(folder / "bench.db")
        core_thread = CoreThread(Core(cfg, store=store, metrics=Metrics()))
        core_thread.start()
        inc: dict[str, Any] | None = None
        try:
            # one healthy interval first, so the inject lands on a core that has seen a green round
            time.sleep(cfg.probe.interval_seconds * 1.5)
            sim.inject(fault)
            injected = time.time()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                rows = store.list_incidents(limit=1)
                if rows and rows[0]["state"] in CLOSED:
                    inc = store.get_incident(rows[0]["id"])
                    break
                time.sleep(0.05)
            verbs = [e["verb"] for e in sim.state()["power_log"]]
        finally:
            core_thread.stop()
            store.close()
    return {
        "fault": fault,
        "cfg": cfg,
        "state": inc["state"] if inc else "timeout",
        "detect": (inc["opened_at"] - injected) if inc else None,
        "recover": (inc["closed_at"] - injected) if inc else None,
        "verbs": verbs,
    }


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):5.2f} / {max(values):5.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run every fault ``--runs`` times and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per fault (default 3)")
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated faults")
    ap.add_argument("--timeout", type=float, default=45.0, help="seconds to wait for a close")
    args = ap.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        ap.error(f"unknown faults: {', '.join(unknown)}")
    results: dict[str, list[dict[str, Any]]] = {f: [] for f in faults}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bg-bench-") as tmp:
        for fault in faults:
            for i in range(args.runs):
                results[fault].append(run_one(fault, Path(tmp) / f"{fault}-{i}", args.timeout))
                print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    cfg = next(r["cfg"] for rs in results.values() for r in rs)
    p, r, inc = cfg.probe, cfg.rules, cfg.incidents
    print(
        f"profile test: interval {p.interval_seconds:g}s, jitter {p.jitter_seconds:g}s, "
        f"connect timeout {p.connect_timeout_seconds:g}s, command timeout {p.command_timeout_seconds:g}s, "
        f"status timeout {p.status_timeout_seconds:g}s; "
        f"ssh_rounds {r.ssh_rounds}, vm_not_running_rounds {r.vm_not_running_rounds}, "
        f"failed_units_rounds {r.failed_units_rounds}, disk_rounds {r.disk_rounds}, "
        f"pve_rounds {r.pve_rounds}, memory_for {r.memory_for_seconds:g}s; "
        f"boot {SimTiming.profile('test').boot_seconds:g}s, verify_rounds {inc.verify_rounds}; "
        f"agent off (runbook); fresh simulator + core per run, so no cooldown applies"
    )
    print(f"runs per fault: {args.runs}; seconds from inject, median / max\n")
    head = (
        f"{'fault':<18} {'end state':<12} {'verbs':<8} "
        f"{'detect':>14} {'floor':>6} {'recover':>14} {'floor':>6}"
    )
    print(head)
    print("-" * len(head))
    for fault, rs in results.items():
        det_floor, rec_floor = floors(cfg, fault)
        states = sorted({x["state"] for x in rs})
        verbs = sorted({",".join(x["verbs"]) or "-" for x in rs})
        print(
            f"{fault:<18} {'/'.join(states):<12} {'/'.join(verbs):<8} "
            f"{_cell([x['detect'] for x in rs if x['detect'] is not None]):>14} {det_floor:6.2f} "
            f"{_cell([x['recover'] for x in rs if x['recover'] is not None]):>14} {rec_floor:6.2f}"
        )
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
