"""Helpers for end-to-end tests: run the real core against the simulator, wait on conditions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from breakglass.config import Config
from breakglass.core import Core, CoreHandle, CoreThread
from breakglass.metrics import Metrics
from breakglass.store import Store

T = TypeVar("T")
CLOSED = ("resolved", "escalated", "failed")


def wait_for(fn: Callable[[], T], *, within: float, what: str, every: float = 0.05) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}; last value: {last!r}")
        time.sleep(every)
        last = fn()
    return last


def override(cfg: Config, **sections: dict[str, Any]) -> Config:
    """Return ``cfg`` with some settings of some sections replaced."""
    update = {name: getattr(cfg, name).model_copy(update=values) for name, values in sections.items()}
    return cfg.model_copy(update=update)


@dataclass
class Running:
    """A core running on its own loop thread, with its store and metrics."""

    cfg: Config
    core: Core
    handle: CoreHandle
    store: Store
    metrics: Metrics
    thread: CoreThread

    @property
    def target(self) -> str:
        """The first (usually only) target's name."""
        return self.cfg.targets[0].name

    def incidents(self) -> list[dict[str, Any]]:
        """Every incident of the first target, oldest first."""
        return sorted(self.store.list_incidents(target=self.target, limit=500), key=lambda i: i["id"])

    def wait_opened(self, within: float = 20.0, count: int = 1) -> dict[str, Any]:
        """Wait until ``count`` incidents exist; return the newest."""
        found = wait_for(
            lambda: len(self.incidents()) >= count and self.incidents(),
            within=within,
            what=f"{count} incident(s)",
        )
        return found[-1]

    def wait_closed(self, incident_id: int, within: float = 40.0) -> dict[str, Any]:
        """Wait until an incident is resolved, escalated or failed; return it in full."""

        def closed() -> dict[str, Any] | None:
            inc = self.store.get_incident(incident_id)
            return inc if inc and inc["state"] in CLOSED else None

        return wait_for(closed, within=within, what=f"incident {incident_id} to close")

    def stop(self) -> None:
        """Stop the core and close the store."""
        self.thread.stop()
        self.store.close()


def start_core(cfg: Config, store_path: Path | None = None) -> Running:
    """Start a real core (scheduler on) for ``cfg``."""
    store = Store(store_path or cfg.store_path)
    metrics = Metrics()
    core = Core(cfg, store=store, metrics=metrics)
    thread = CoreThread(core)
    handle = thread.start()
    return Running(cfg=cfg, core=core, handle=handle, store=store, metrics=metrics, thread=thread)


def power_verbs(state: dict[str, Any]) -> list[str]:
    """The power verbs the simulated Proxmox host received, in order."""
    return [entry["verb"] for entry in state["power_log"]]
