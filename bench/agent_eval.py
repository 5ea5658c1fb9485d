"""Ground-truth evaluation of the model agent, fault by fault.

Each fault in the simulator's table is injected into a fresh simulated VM
watched by a real core whose agent talks to the configured model. The run is
scored from the simulator's ground truth, not by asking a model: recovered or
not, time to recovery, the power verbs the Proxmox side received against the
least-force fix, turns and tokens.

    ANTHROPIC_API_KEY=... python bench/agent_eval.py [--model claude-sonnet-5-5] [--faults io_stall,...]

Without ANTHROPIC_API_KEY it prints why and exits 0 (nothing to evaluate).
ANTHROPIC_BASE_URL, if set, is honoured (e.g. a scripted fake for a dry run of
this script itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from breakglass.core import Core, CoreThread
from breakglass.metrics import Metrics
from breakglass.sim.runner import SimThread
from breakglass.store import Store

# fault -> (power verbs of the least-force fix, the state a correct run ends in)
LEAST_FORCE: dict[str, tuple[list[str], str]] = {
    "io_stall": (["cycle"], "resolved"),
    "guest_hang": (["reset"], "resolved"),
    "vm_stopped": (["start"], "resolved"),
    "vm_paused": (["cycle"], "resolved"),
    "sshd_dead": (["reset"], "resolved"),
    "unit_failed": ([], "resolved"),
    "disk_full": ([], "resolved"),
    "memory_hog": ([], "resolved"),
    "load_spike": ([], "none"),
    "pve_unreachable": ([], "escalated"),
    "network_partition": ([], "escalated"),
}
CLOSED = ("resolved", "escalated", "failed")


def run_one(fault: str, model: str, folder: Path, timeout: float) -> dict[str, Any]:
    """Inject ``fault`` into a fresh simulator watched by a fresh core; score the outcome."""
    with SimThread() as thread:
        sim = thread.serve(folder / "sim", "test")
        cfg = sim.config
        cfg = cfg.model_copy(
            update={
                "agent": cfg.agent.model_copy(update={"enabled": "always", "model": model}),
                "remediation": cfg.remediation.model_copy(update={"hog_allowlist": ("leaky-batch",)}),
            }
        )
        store = Store(folder / "eval.db")
        core_thread = CoreThread(Core(cfg, store=store, metrics=Metrics()))
        core_thread.start()
        try:
            t0 = time.monotonic()
            deadline = t0 + timeout
            while not store.list_incidents(limit=1) and time.monotonic() < t0 + 5:
                time.sleep(0.1)  # let a first healthy round land before breaking the VM
            sim.inject(fault)
            injected = time.time()
            inc = None
            while time.monotonic() < deadline:
                rows = store.list_incidents(limit=1)
                if rows and rows[0]["state"] in CLOSED:
                    inc = store.get_incident(rows[0]["id"])
                    break
                if fault == "load_spike" and "load_spike" not in sim.state()["faults"]:
                    time.sleep(cfg.rules.load_for_seconds)
                    break
                time.sleep(0.2)
            verbs = [e["verb"] for e in sim.state()["power_log"]]
        finally:
            core_thread.stop()
            store.close()
    want_verbs, want_state = LEAST_FORCE[fault]
    state = inc["state"] if inc else ("none" if fault == "load_spike" else "timeout")
    turns = sum(1 for s in (inc or {}).get("steps", []) if s["kind"] == "usage")
    fell_back = any(s["kind"] == "fallback" for s in (inc or {}).get("steps", []))
    return {
        "fault": fault,
        "state": state,
        "correct": state == want_state and verbs == want_verbs,
        "seconds": (inc["closed_at"] - injected) if inc else None,
        "verbs": verbs,
        "least_force": want_verbs,
        "turns": turns,
        "tokens": ((inc or {}).get("tokens_in") or 0) + ((inc or {}).get("tokens_out") or 0),
        "fallback": fell_back,
    }


def main(argv: list[str] | None = None) -> int:
    """Evaluate and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="claude-sonnet-5-5")
    p.add_argument("--faults", default=",".join(LEAST_FORCE), help="comma-separated fault names")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per fault")
    args = p.parse_args(argv)
    if not os.environ.get("ANTHROPIC_API_KEY"):
        print("agent_eval: ANTHROPIC_API_KEY is not set; nothing to evaluate (skipped).")
        return 0
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in LEAST_FORCE]
    if unknown:
        print(f"agent_eval: unknown fault(s) {unknown}; known: {', '.join(LEAST_FORCE)}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="breakglass-eval-") as tmp:
        for n, fault in enumerate(faults):
            rows.append(run_one(fault, args.model, Path(tmp) / f"{n}-{fault}", args.timeout))
    print(f"model {args.model}; simulator profile test (1 s probe interval, 1 s boot)")
    head = f"{'fault':<18} {'ok':<4} {'state':<10} {'seconds':>8} {'verbs sent':<16} {'least force':<12} "
    print(head + f"{'turns':>5} {'tokens':>7} fallback")
    for r in rows:
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(
            f"{r['fault']:<18} {'yes' if r['correct'] else 'NO':<4} {r['state']:<10} {secs:>8} "
            f"{','.join(r['verbs']) or '-':<16} {','.join(r['least_force']) or '-':<12} "
            f"{r['turns']:>5} {r['tokens']:>7} {'yes' if r['fallback'] else 'no'}"
        )
    done = [r["seconds"] for r in rows if r["seconds"] is not None]
    print(
        f"\n{sum(r['correct'] for r in rows)}/{len(rows)} correct; "
        f"median time to close {statistics.median(done):.1f} s" if done else ""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
