"""Choose the remediator for an incident: the model agent when usable, else the runbook."""

from __future__ import annotations

import structlog

# Imported here, not on first use: this runs on the core loop, and importing the SDK takes seconds.
from breakglass.agent.llm import AgentRemediator
from breakglass.agent.runbook import RunbookRemediator
from breakglass.config import Config, Target
from breakglass.incidents.context import Remediator

log = structlog.get_logger("breakglass.agent")


def remediator_for(cfg: Config, target: Target) -> Remediator:
    """Return the model agent when enabled and a key is present, else the runbook."""
    runbook = RunbookRemediator()
    if cfg.agent.enabled == "never":
        return runbook
    try:
        key = cfg.agent.api_key()
    except OSError as exc:
        log.error("api_key_unreadable", path=str(cfg.agent.api_key_file), error=str(exc))
        key = None
    if not key:
        if cfg.agent.enabled == "always":
            log.warning("agent_without_key", target=target.name, fallback="runbook")
        return runbook
    return AgentRemediator(cfg.agent, api_key=key, fallback=runbook)
