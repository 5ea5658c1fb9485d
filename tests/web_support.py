"""Helpers for the web tests: a config, readings, and a core handle backed by a real Store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from readings_support import healthy_readings  # noqa: F401  (the one factory, re-exported)

from breakglass.config import Config, SshEndpoint, Target
from breakglass.store import Store


def web_config(tmp_path: Path, names: tuple[str, ...] = ("devvm", "other")) -> Config:
    """A config with the given targets; the key files are never read by the web app."""

    def endpoint(port: int) -> SshEndpoint:
        return SshEndpoint(
            host="127.0.0.1", port=port, user="ops", key_file=tmp_path / "key", known_hosts=tmp_path / "kh"
        )

    targets = tuple(
        Target(name=name, vmid=100 + i, devvm=endpoint(2200 + i), pve=endpoint(2300 + i))
        for i, name in enumerate(names)
    )
    return Config(store_path=tmp_path / "breakglass.db", targets=targets)


class StoreCore:
    """A CoreHandle answering from the store, with a switch to play a dead core loop."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.is_alive = True

    def alive(self) -> bool:
        """True unless a test switched the loop off."""
        return self.is_alive

    def attention(self) -> list[str]:
        """The targets with an active incident; RuntimeError when dead."""
        if not self.is_alive:
            raise RuntimeError("the core did not answer within 1 s")
        active = self.store.active_targets()
        return [t.name for t in self.cfg.targets if t.name in active]

    def status(self) -> dict[str, Any]:
        """Each target's latest stored readings and active incident; RuntimeError when dead."""
        if not self.is_alive:
            raise RuntimeError("the core did not answer within 1 s")
        targets = []
        for t in self.cfg.targets:
            inc = self.store.active_incident(t.name)
            targets.append(
                {
                    "name": t.name,
                    "vmid": t.vmid,
                    "readings": self.store.latest_readings(t.name),
                    "conditions": [],
                    "incident": (
                        {"id": inc["id"], "state": inc["state"], "trigger": inc["trigger"]} if inc else None
                    ),
                    "budget": {
                        "remaining": self.cfg.budget.max_actions,
                        "max_actions": self.cfg.budget.max_actions,
                        "window_seconds": self.cfg.budget.window_seconds,
                        "next_allowed_at": None,
                        "dry_run": self.cfg.budget.dry_run,
                    },
                    "silence": None,
                }
            )
        return {"targets": targets, "generated_at": time.time()}


def record_power_action(store: Store, incident_id: int, target: str, verb: str, result: str | None) -> int:
    """Write a ledger row as the governor does (row first, outcome after); None leaves it in flight."""
    row_id = store.ledger_insert(
        target, incident_id, verb, "runbook", decision={"why": "QMP io-error", "evidence": {"qmp_ok": False}}
    )
    if result is not None:
        assert store.ledger_finish(row_id, result, f"{verb}: {result}")
    return row_id
