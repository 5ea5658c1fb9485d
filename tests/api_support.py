"""Helpers for the web write tests: an app with tokens, a core handle that opens incidents in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry
from web_support import StoreCore

from breakglass.config import Config
from breakglass.core import CoreUnavailable
from breakglass.incidents.manager import POWER_AUTHORIZED_BY, TriggerResult
from breakglass.metrics import Metrics
from breakglass.store import Store
from breakglass.web.app import create_app

API_TOKEN = "api-token-0123456789"
WEBHOOK_TOKEN = "webhook-token-0123456789"
LOGIN_TOKEN = "login-token-0123456789"


def with_tokens(cfg: Config, tmp_path: Path, **auth: Any) -> Config:
    """``cfg`` with API, webhook (and login) token files written in ``tmp_path``, and auth settings."""
    files = {}
    for name, token in (("api", API_TOKEN), ("webhook", WEBHOOK_TOKEN), ("login", LOGIN_TOKEN)):
        path = tmp_path / f"{name}_token"
        path.write_text(token + "\n", encoding="utf-8")
        files[name] = path
    if auth.get("mode") == "token":
        auth.setdefault("token_file", files["login"])
    web = cfg.web.model_copy(
        update={
            "api_token_file": files["api"],
            "webhook_token_file": files["webhook"],
            "auth": cfg.web.auth.model_copy(update=auth),
        }
    )
    return cfg.model_copy(update={"web": web})


class TriggerCore(StoreCore):
    """A core handle whose triggers open or attach incidents in the real store (single flight included)."""

    def __init__(self, cfg: Config, store: Store) -> None:
        super().__init__(cfg, store)
        self.grants: list[tuple[str, str, str]] = []
        self.fail_next: Exception | None = None  # raised by the next trigger, once

    def trigger(
        self,
        target: str,
        *,
        trigger: str,
        reason: str,
        who: str,
        evidence: dict[str, Any] | None = None,
        alert: str | None = None,
        authorize_power: bool = False,
    ) -> TriggerResult:
        """Open or attach in the store, as the manager does; CoreUnavailable when switched off."""
        if not self.is_alive:
            raise CoreUnavailable("the core loop is not running")
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if alert is not None:
            incident_id, outcome = self.store.open_incident_for_alert(
                target, alert, trigger, reason, who, evidence or {}
            )
            return TriggerResult(incident_id, outcome == "opened", duplicate=outcome == "duplicate")
        evidence = dict(evidence or {})
        if authorize_power:
            evidence[POWER_AUTHORIZED_BY] = who
        incident_id, created = self.store.open_incident(target, trigger, reason, who, evidence)
        return TriggerResult(incident_id, created)

    def instruct(self, incident_id: int, who: str, text: str) -> int:
        """Record the instruction as the manager does; KeyError/ValueError for unknown/closed."""
        if not self.is_alive:
            raise CoreUnavailable("the core loop is not running")
        inc = self.store.get_incident(incident_id)
        if inc is None:
            raise KeyError(incident_id)
        if inc["closed_at"] is not None:
            raise ValueError(f"incident #{incident_id} is {inc['state']}, no longer active")
        return self.store.add_step(incident_id, "operator_instruction", {"who": who, "text": text})

    def grant(self, target: str, who: str, why: str) -> int:
        """Record the grant in the store's ledger."""
        if not self.is_alive:
            raise CoreUnavailable("the core loop is not running")
        return self.store.add_grant(target, who, why)


def make_app(cfg: Config, store: Store, core: Any) -> Flask:
    """The real app over these parts, with a fresh metrics registry."""
    return create_app(cfg, store=store, metrics=Metrics(CollectorRegistry()), core=core, testing=True)


def counts(store: Store) -> tuple[int, int, int]:
    """Incidents, steps over all incidents, and silences now: what a refused request must not change."""
    incidents = store.list_incidents(limit=10_000)
    steps = sum(len((store.get_incident(i["id"]) or {}).get("steps") or ()) for i in incidents)
    silences = len(store.list_silences(0))
    return len(incidents), steps, silences
