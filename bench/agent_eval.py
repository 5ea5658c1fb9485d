"""Ground-truth evaluation of the model agent, fault by fault: the model's score only.

Each run injects a fault into a fresh simulated VM watched by a real core
whose agent talks to a model, then scores the run from the simulator's ground
truth, not by asking a model. A run is a MODEL success only when the model
finished the incident itself: no hand-over to the runbook (a runbook rescue
is listed, never counted), the incident ended in the state the fault calls
for, the power verbs the Proxmox side received are exactly the least-force
fix, and the report's "State now" line agrees with what the simulator shows.

Per run it prints: model success, final state, recovered, the verbs sent
against the least-force fix, whether forensics came before the model's first
power verb, mutating guest commands, turns, tokens (input, output, prompt
cache reads and writes), hand-over, and whether the report matched.

    ANTHROPIC_API_KEY=... python bench/agent_eval.py [--model M] [--faults io_stall,...] [--runs N]
    python bench/agent_eval.py --fake tests/scenarios            # scripted fake: eval_<fault>.json
    python bench/agent_eval.py --fake tests/scenarios/not_found.json --faults vm_stopped

Without ANTHROPIC_API_KEY and without --fake it prints why and exits 0.
``--fake DIR`` plays ``DIR/eval_<fault>.json`` for each fault that has one
(faults without a script are skipped); ``--fake FILE`` plays FILE for all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from breakglass.core import Core, CoreThread
from breakglass.metrics import Metrics
from breakglass.remote import POWER_VERBS
from breakglass.sim.fake_messages import FakeMessagesServer, Script
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
POWER = {str(v) for v in POWER_VERBS}
HEALTHY_WORDS = ("running", "healthy", "fixed", "back", "answers", "active", "ok")
SICK_WORDS = ("stopped", "down", "hung", "stalled", "unreachable", "not ", "still", "failed", "unknown")


@dataclass(frozen=True)
class Model:
    """Which model to ask: the real API (key from the environment) or a scripted fake."""

    name: str
    script: Path | None = None  # a fake's script; None means the real API


def report_agrees(report: str, healthy: bool) -> bool:
    """Whether the report's "State now" line claims health exactly when the VM is healthy."""
    line = next((ln for ln in report.splitlines() if ln.lower().startswith("state now")), "")
    text = line.lower()
    claims = any(w in text for w in HEALTHY_WORDS) and not any(w in text for w in SICK_WORDS)
    return bool(line) and claims == healthy


def score(
    fault: str, inc: dict[str, Any] | None, verbs: list[str], sim_state: dict[str, Any]
) -> dict[str, Any]:
    """Score one finished run from its incident and the simulator's ground truth."""
    want_verbs, want_state = LEAST_FORCE[fault]
    steps = (inc or {}).get("steps", [])
    state = inc["state"] if inc else ("none" if fault == "load_spike" else "timeout")
    usage = [s["data"] for s in steps if s["kind"] == "usage"]
    calls = [s["data"] for s in steps if s["kind"] == "tool_call"]
    power_at = next(
        (i for i, c in enumerate(calls) if c["name"] == "pve" and c["input"].get("verb") in POWER), None
    )
    forensics_at = next(
        (i for i, c in enumerate(calls) if c["name"] == "pve" and c["input"].get("verb") == "forensics"), None
    )
    fell_back = any(s["kind"] == "fallback" for s in steps)
    healthy = fault not in sim_state["faults"] and sim_state["vm"] == "running"
    report_ok = report_agrees((inc or {}).get("report") or "", state == "resolved" and healthy)
    model_ok = not fell_back and state == want_state and verbs == want_verbs and (inc is None or report_ok)
    return {
        "fault": fault,
        "model_ok": model_ok,
        "state": state,
        "recovered": healthy if want_state == "resolved" else state == want_state,
        "verbs": verbs,
        "least_force": verbs == want_verbs,
        "forensics_first": "-"
        if power_at is None
        else ("yes" if forensics_at is not None and forensics_at < power_at else "no"),
        "mutating": sum(
            1
            for s in steps
            if s["kind"] == "tool_result"
            and s["data"].get("acted")
            and s["data"].get("name") == "devvm_shell"
        ),
        "turns": len(usage),
        "tokens_in": sum(u.get("input_tokens", 0) for u in usage),
        "tokens_out": sum(u.get("output_tokens", 0) for u in usage),
        "cache_read": sum(u.get("cache_read_tokens", 0) for u in usage),
        "cache_write": sum(u.get("cache_write_tokens", 0) for u in usage),
        "fallback": fell_back,
        "report_ok": report_ok,
        "seconds": None,
    }


def run_one(fault: str, model: Model, folder: Path, timeout: float) -> dict[str, Any]:
    """Inject ``fault`` into a fresh simulator watched by a fresh core; score the outcome."""
    folder.mkdir(parents=True, exist_ok=True)
    fake = FakeMessagesServer(Script.load(model.script)).start() if model.script else None
    try:
        with SimThread() as thread:
            sim = thread.serve(folder / "sim", "test")
            cfg = sim.config
            agent: dict[str, Any] = {"enabled": "always", "model": model.name}
            if fake is not None:
                key = folder / "api_key"
                key.write_text("sk-ant-fake-eval\n")
                agent |= {"base_url": fake.base_url, "api_key_file": key}
            cfg = cfg.model_copy(
                update={
                    "agent": cfg.agent.model_copy(update=agent),
                    "remediation": cfg.remediation.model_copy(update={"hog_allowlist": ("leaky-batch",)}),
                }
            )
            store = Store(folder / "eval.db")
            core_thread = CoreThread(Core(cfg, store=store, metrics=Metrics()))
            core_thread.start()
            try:
                inc, injected = _watch(fault, sim, store, cfg, timeout)
                state = sim.state()
            finally:
                core_thread.stop()
                store.close()
    finally:
        if fake is not None:
            fake.stop()
    row = score(fault, inc, [e["verb"] for e in state["power_log"]], state)
    row["seconds"] = (inc["closed_at"] - injected) if inc and inc.get("closed_at") else None
    return row


def _watch(
    fault: str, sim: Any, store: Store, cfg: Any, timeout: float
) -> tuple[dict[str, Any] | None, float]:
    t0 = time.monotonic()
    while not store.latest_readings(cfg.targets[0].name) and time.monotonic() < t0 + 10:
        time.sleep(0.1)  # a first healthy round lands before the VM breaks
    sim.inject(fault)
    injected = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = store.list_incidents(limit=1)
        if rows and rows[0]["state"] in CLOSED:
            return store.get_incident(rows[0]["id"]), injected
        if fault == "load_spike" and "load_spike" not in sim.state()["faults"]:
            time.sleep(cfg.rules.load_for_seconds)
            break
        time.sleep(0.2)
    return None, injected


def _scripts(fake: Path, faults: list[str]) -> dict[str, Path]:
    if fake.is_file():
        return dict.fromkeys(faults, fake)
    return {f: fake / f"eval_{f}.json" for f in faults if (fake / f"eval_{f}.json").is_file()}


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """The per-run table and the model's score."""
    print(title)
    print(
        f"{'fault':<18} {'run':>3} {'model':<5} {'state':<10} {'recov':<5} {'verbs sent':<12} "
        f"{'least':<5} {'fx1st':<5} {'mut':>3} {'turns':>5} {'in':>6} {'out':>5} {'c_rd':>6} {'c_wr':>6} "
        f"{'handover':<8} report"
    )
    for r in rows:
        print(
            f"{r['fault']:<18} {r['run']:>3} {'yes' if r['model_ok'] else 'NO':<5} {r['state']:<10} "
            f"{'yes' if r['recovered'] else 'no':<5} {','.join(r['verbs']) or '-':<12} "
            f"{'yes' if r['least_force'] else 'no':<5} {r['forensics_first']:<5} {r['mutating']:>3} "
            f"{r['turns']:>5} {r['tokens_in']:>6} {r['tokens_out']:>5} {r['cache_read']:>6} "
            f"{r['cache_write']:>6} "
            f"{'RUNBOOK' if r['fallback'] else 'no':<8} {'ok' if r['report_ok'] else 'WRONG'}"
        )
    wins = sum(r["model_ok"] for r in rows)
    rescued = sum(r["fallback"] for r in rows)
    print(
        f"\nmodel successes: {wins}/{len(rows)} runs; the runbook took over in {rescued} "
        "(never counted as a model success)"
    )


def main(argv: list[str] | None = None) -> int:
    """Evaluate and print the table."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="claude-sonnet-5-5")
    p.add_argument("--faults", default=",".join(LEAST_FORCE), help="comma-separated fault names")
    p.add_argument("--runs", type=int, default=1, help="runs per fault")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    p.add_argument(
        "--fake", type=Path, default=None, help="scripted fake: a script, or a folder of eval_<fault>.json"
    )
    args = p.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in LEAST_FORCE]
    if unknown:
        print(f"agent_eval: unknown fault(s) {unknown}; known: {', '.join(LEAST_FORCE)}", file=sys.stderr)
        return 2
    if args.runs < 1:
        print("agent_eval: --runs must be at least 1", file=sys.stderr)
        return 2
    if args.fake is not None:
        scripts = _scripts(args.fake, faults)
        skipped = [f for f in faults if f not in scripts]
        if skipped:
            print(f"agent_eval: no script for {', '.join(skipped)} in {args.fake}; skipped")
        plan = [(f, Model(args.model, scripts[f])) for f in faults if f in scripts]
        title = f"scripted fake ({args.fake}); simulator profile test"
    elif os.environ.get("ANTHROPIC_API_KEY"):
        plan = [(f, Model(args.model)) for f in faults]
        title = f"model {args.model}; simulator profile test (1 s probe interval, 1 s boot)"
    else:
        print("agent_eval: ANTHROPIC_API_KEY is not set and no --fake given; nothing to evaluate (skipped).")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="breakglass-eval-") as tmp:
        for fault, model in plan:
            for n in range(1, args.runs + 1):
                row = run_one(fault, model, Path(tmp) / f"{fault}-{n}", args.timeout)
                rows.append({**row, "run": n})
    print_table(rows, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
