"""A cancel is never lost: a stop, or an incident lost to another process, always gets through.

On Python 3.11, ``asyncio.wait_for`` returns the awaited result instead of raising
when the cancel lands in the loop turn the awaited work finishes in (a core stop
hung on it once). Bounded waits in breakglass use ``asyncio.timeout`` instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from web_support import web_config

from breakglass.agent import tools
from breakglass.agent.tools import Toolbox, ToolResult
from breakglass.incidents.context import RemediationContext
from breakglass.remote import DevvmShell, PveClient

PACKAGE = Path(__file__).resolve().parent.parent / "breakglass"


async def _no_power(verb: Any, *, trace: Any, evidence: Any) -> Any:
    raise AssertionError("no power verb in this test")


def _context(tmp_path: Path) -> RemediationContext:
    cfg = web_config(tmp_path, ("devvm",))
    target = cfg.targets[0]
    return RemediationContext(
        incident_id=1,
        target=target,
        config=cfg,
        shell=DevvmShell(target.devvm, connect_timeout=1, command_timeout=1),
        pve=PveClient(target.pve, connect_timeout=1, status_timeout=1),
        power=_no_power,
        record=lambda kind, data: None,
        latest=None,
        conditions=(),
    )


def test_an_incident_cancelled_as_its_tool_call_finishes_stops_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's task is cancelled (a stop, or the incident taken over) in the very turn a
    tool call's work ends: the cancel stops the agent; it does not get the result and go on."""

    async def main() -> None:
        started = asyncio.Event()
        finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def run(box: Toolbox, args: dict[str, Any]) -> ToolResult:
            started.set()
            return ToolResult("ok", await finished)

        held = dataclasses.replace(tools.BY_NAME["read_file"], name="held", run=run)
        monkeypatch.setitem(tools.BY_NAME, "held", held)
        call = asyncio.create_task(Toolbox(_context(tmp_path)).call("held", {}))
        await started.wait()  # the tool is waiting for its work
        finished.set_result("the tool's output")
        call.cancel()  # in the same turn
        await asyncio.wait({call})
        assert call.cancelled(), f"the cancel was lost: the call returned {call.result()}"

    asyncio.run(main())


def test_no_bounded_wait_in_breakglass_can_swallow_a_cancel() -> None:
    """Every bounded wait is ``asyncio.timeout``; ``asyncio.wait_for`` may lose a cancel on 3.11."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\basyncio\.wait_for\(|\bfrom asyncio import .*\bwait_for\b", line)
    ]
    assert not found, "\n".join(found)
