"""The agent's tools: JSON schemas for the model and the executors behind them.

A tool never raises into the loop: every call returns a :class:`ToolResult`
with a status (ok / error / denied) and text the model can read. Power verbs
go through the context's ``power`` (the Governor); file tools are confined to
the runbooks folder.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from breakglass.incidents.context import RemediationContext
from breakglass.remote import POWER_VERBS, RemoteError, Verb, cap_output

Status = Literal["ok", "error", "denied"]
TOOL_OUTPUT_CAP = 16 * 1024
MAX_SHELL_TIMEOUT = 120.0
MAX_FILES_LISTED = 200


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced, as the model will see it."""

    status: Status
    text: str

    @property
    def is_error(self) -> bool:
        """True for errors and denials, which the model sees as ``is_error``."""
        return self.status != "ok"


TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "name": "devvm_shell",
        "description": (
            "Run a shell command on the devvm over SSH as the breakglass user (passwordless "
            "sudo: prefix root actions with sudo). Returns exit status, stdout and stderr."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command line to run."},
                "timeout_s": {
                    "type": "number",
                    "description": f"Seconds to wait before giving up (1-{MAX_SHELL_TIMEOUT:.0f}).",
                    "minimum": 1,
                    "maximum": MAX_SHELL_TIMEOUT,
                },
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "name": "pve",
        "description": (
            "Send one bare verb to the Proxmox host's forced command for this VM. status and "
            "forensics only read; reset, stop, start and cycle are power actions limited by a "
            "budget (a refusal says why and when the next one is allowed)."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"verb": {"type": "string", "enum": [v.value for v in Verb]}},
            "required": ["verb"],
            "additionalProperties": False,
        },
    },
    {
        "name": "read_file",
        "description": "Read a file from the runbooks folder (path relative to it).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
            "additionalProperties": False,
        },
    },
    {
        "name": "grep",
        "description": "Search the runbooks folder (or a file or subfolder of it) for a regex.",
        "input_schema": {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}},
            "required": ["pattern"],
            "additionalProperties": False,
        },
    },
    {
        "name": "glob",
        "description": "List files in the runbooks folder matching a glob such as post-mortems/*devvm*.",
        "input_schema": {
            "type": "object",
            "properties": {"pattern": {"type": "string"}},
            "required": ["pattern"],
            "additionalProperties": False,
        },
    },
]


class RunbookFiles:
    """Read-only access to one folder; nothing outside it is reachable."""

    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None else None

    def _inside(self, rel: str) -> Path:
        if self.root is None:
            raise PermissionError("no runbooks folder is configured (agent.runbooks_dir)")
        if not rel or rel.startswith(("/", "~")) or "\x00" in rel:
            raise PermissionError(f"refused {rel!r}: give a path relative to the runbooks folder")
        if ".." in Path(rel).parts:
            raise PermissionError(f"refused {rel!r}: '..' is not allowed")
        path = (self.root / rel).resolve()
        if path != self.root and self.root not in path.parents:
            raise PermissionError(f"refused {rel!r}: it leads outside the runbooks folder")
        return path

    def _files(self, base: Path) -> list[Path]:
        assert self.root is not None
        found = []
        for p in sorted(base.rglob("*") if base.is_dir() else [base]):
            real = p.resolve()
            if real.is_file() and (self.root in real.parents):
                found.append(p)
        return found

    def read(self, rel: str) -> str:
        """Return a file's text."""
        path = self._inside(rel)
        if not path.is_file():
            raise FileNotFoundError(f"no file {rel!r} in the runbooks folder")
        return path.read_text(encoding="utf-8", errors="replace")

    def glob(self, pattern: str) -> list[str]:
        """Return relative paths matching ``pattern``."""
        self._inside(pattern.split("*", 1)[0] or ".")
        assert self.root is not None
        rels = [str(p.relative_to(self.root)) for p in self._files(self.root)]
        return [r for r in rels if fnmatch.fnmatch(r, pattern)][:MAX_FILES_LISTED]

    def grep(self, pattern: str, rel: str | None = None) -> list[str]:
        """Return ``path:line: text`` for each matching line."""
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        base = self._inside(rel or ".")
        root = self.root
        assert root is not None  # _inside refused otherwise
        out = []
        for p in self._files(base):
            for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if rx.search(line):
                    out.append(f"{p.relative_to(root)}:{n}: {line}")
        return out


def _capped(text: str) -> str:
    capped, _ = cap_output(text.encode("utf-8", errors="replace"), TOOL_OUTPUT_CAP)
    return capped


class Toolbox:
    """Executes the model's tool calls for one incident."""

    def __init__(self, ctx: RemediationContext) -> None:
        self.ctx = ctx
        self.files = RunbookFiles(ctx.config.agent.runbooks_dir)
        self.denied: Any = None  # the last PowerOutcome the budget refused

    async def call(self, name: str, args: dict[str, Any]) -> ToolResult:
        """Run one tool call; never raise."""
        try:
            if name == "devvm_shell":
                return await self._shell(args)
            if name == "pve":
                return await self._pve(args)
            if name == "read_file":
                return ToolResult("ok", _capped(self.files.read(_str(args, "path"))))
            if name == "grep":
                hits = self.files.grep(_str(args, "pattern"), args.get("path"))
                return ToolResult("ok", _capped("\n".join(hits) or "(no matches)"))
            if name == "glob":
                return ToolResult("ok", "\n".join(self.files.glob(_str(args, "pattern"))) or "(no files)")
            return ToolResult("error", f"unknown tool {name!r}")
        except PermissionError as exc:
            return ToolResult("denied", str(exc))
        except (ValueError, FileNotFoundError, KeyError, TypeError) as exc:
            return ToolResult("error", str(exc))
        except RemoteError as exc:
            return ToolResult("error", f"{exc.kind}: {exc}")

    async def _shell(self, args: dict[str, Any]) -> ToolResult:
        command = _str(args, "command")
        timeout = args.get("timeout_s", self.ctx.config.probe.command_timeout_seconds)
        if not isinstance(timeout, (int, float)) or not 1 <= timeout <= MAX_SHELL_TIMEOUT:
            raise ValueError(f"timeout_s must be a number from 1 to {MAX_SHELL_TIMEOUT:.0f}")
        res = await self.ctx.shell.run(command, timeout=float(timeout))
        if res.timed_out:
            text = f"timed out after {timeout} s\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
            return ToolResult("error", _capped(text))
        text = f"exit status {res.exit_status}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
        return ToolResult("ok" if res.exit_status == 0 else "error", _capped(text))

    async def _pve(self, args: dict[str, Any]) -> ToolResult:
        raw = _str(args, "verb")
        try:
            verb = Verb(raw)
        except ValueError:
            return ToolResult(
                "denied", f"refused {raw!r}: the only verbs are {', '.join(v.value for v in Verb)}"
            )
        if verb not in POWER_VERBS:
            res = await self.ctx.pve.run(verb)
            body = res.stdout if res.ok else f"exit {res.exit_status}: {res.stdout}{res.stderr}"
            return ToolResult("ok" if res.ok else "error", _capped(body))
        outcome = await self.ctx.power(verb, trace={"requested_by": "agent"})
        d = outcome.decision
        if outcome.result == "denied":
            self.denied = outcome
            when = f"; next power action allowed at {_iso(d.next_allowed_at)}" if d.next_allowed_at else ""
            return ToolResult("denied", f"power action {verb.value} refused by the budget: {d.reason}{when}")
        if outcome.result == "dry_run":
            return ToolResult("ok", f"dry run: {verb.value} was recorded, not sent")
        body = json.dumps({"result": outcome.result, "output": outcome.output}, indent=None)
        return ToolResult("ok" if outcome.result == "ok" else "error", _capped(body))


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    return value


def _iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
