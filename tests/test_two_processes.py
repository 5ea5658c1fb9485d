"""Two real ``breakglass serve`` processes on one store and one sick VM, the power budget at 1.

They share the SQLite file (and so the ledger, the incidents and the budget) and
watch the same simulated VM; each has its own web port. Whatever they race for,
the host gets one power verb, the ledger has one row that was sent, the target
one incident, and only one process works it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from harness import wait_for
from serve_support import db_rows, serve, stop, wait_serving

from breakglass.sim.runner import SimHandle
from breakglass.sim.statedir import free_port


def _config(sim: SimHandle, path: Path, **budget: Any) -> tuple[Path, str]:
    """The simulator's config with a web port of its own and ``budget`` settings; (file, base URL)."""
    doc = yaml.safe_load(sim.config_path.read_text(encoding="utf-8"))
    doc["web"]["port"] = free_port()
    doc["budget"].update(budget)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path, f"http://127.0.0.1:{doc['web']['port']}"


def test_two_serve_processes_on_one_store_with_the_budget_at_1_send_one_verb(
    sim: SimHandle, tmp_path: Path
) -> None:
    db = sim.config.store_path
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        for name in ("a", "b"):
            config, base = _config(sim, tmp_path / f"{name}.yaml", max_actions=1)
            procs.append(serve(config, tmp_path / f"{name}.log"))
            bases.append(base)
        for base in bases:
            wait_serving(base)
        sim.inject("sshd_dead")  # SSH refuses, the guest agent answers: the remedy is reset
        done = wait_for(
            lambda: db_rows(db, "SELECT id, state FROM incidents WHERE closed_at IS NOT NULL"),
            within=60,
            what="the incident to close",
        )
        assert [state for _, state in done] == ["resolved"]
        for base in bases:  # both still serving once it is over
            wait_serving(base, within=5)
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0]
    assert [e["verb"] for e in sim.state()["power_log"]] == ["reset"]
    ledger = db_rows(db, "SELECT verb, result, json_extract(decision, '$.decision.reason') FROM ledger")
    assert [(verb, result) for verb, result, _ in ledger if result != "denied"] == [("reset", "ok")]
    assert all("budget" in reason for _, result, reason in ledger if result == "denied"), ledger
    [(incident,)] = db_rows(db, "SELECT id FROM incidents")
    # One process worked it: one diagnosis, never a second run of a remediator.
    moves = db_rows(db, "SELECT to_state FROM transitions WHERE incident_id = ?", (incident,))
    assert moves.count(("diagnosing",)) == 1, moves
