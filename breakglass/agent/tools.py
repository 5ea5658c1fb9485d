"""The agent's tools: each one object holding its name, schema, description, run and whether it mutates.

A tool never raises into the loop: every call returns a :class:`ToolResult`
with a status (ok / error / denied) and text the model can read, within the
tool's deadline. The envelope sits in front of ``run``, not in the prompt:

- ``pve``: a power verb is judged by :mod:`breakglass.incidents.policy` on
  evidence the watchdog gathers itself at that moment (an SSH login, the
  host's status and forensics), then by the Governor's budget; at most one
  power verb per model turn;
- ``devvm_shell``: the command line is parsed and judged by
  :mod:`breakglass.agent.guest_commands` (power, sysrq, SSH and network cuts
  refused; unit stops and kills only for ``remediation.hog_allowlist``);
- file tools stay inside the runbooks folder; ``grep`` uses RE2 (linear time)
  in a child process killed at its deadline, ``read_file``/``glob`` run in a
  worker thread, so nothing a model asks can block the core loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from breakglass.agent import diagnose, guest_commands
from breakglass.agent.runbook_files import RunbookFiles, grep_in_subprocess
from breakglass.incidents import policy
from breakglass.incidents.context import RemediationContext
from breakglass.remote import POWER_VERBS, RemoteError, Verb, cap_output

Status = Literal["ok", "error", "denied"]
TOOL_OUTPUT_CAP = 16 * 1024
MAX_SHELL_TIMEOUT = 120.0
MAX_COMMAND_CHARS = 4096
FILE_TOOL_DEADLINE = 10.0


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced, as the model will see it; ``acted`` when it changed something."""

    status: Status
    text: str
    acted: bool = False

    @property
    def is_error(self) -> bool:
        """True for errors and denials, which the model sees as ``is_error``."""
        return self.status != "ok"


@dataclass(frozen=True)
class Tool:
    """One tool: what the model is told, how it runs, whether a call may change the VM."""

    name: str
    description: str
    input_schema: dict[str, Any]
    run: Callable[[Toolbox, dict[str, Any]], Awaitable[ToolResult]]
    mutates: Callable[[dict[str, Any]], bool]
    deadline: Callable[[RemediationContext, dict[str, Any]], float]

    def schema(self) -> dict[str, Any]:
        """The definition sent to the model."""
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


@dataclass
class Sent:
    """A verb or mutating command that ran during the incident, and who asked for it."""

    what: str
    status: str
    by: str = "agent"


@dataclass
class Toolbox:
    """Executes the model's tool calls for one incident and remembers what acted."""

    ctx: RemediationContext
    files: RunbookFiles = field(init=False)
    denied: Any = None  # the last PowerOutcome the budget refused
    acted: list[Sent] = field(default_factory=list)
    verbs_ok: list[Verb] = field(default_factory=list)
    _power_this_turn: int = 0

    def __post_init__(self) -> None:
        self.files = RunbookFiles(self.ctx.config.agent.runbooks_dir)

    def new_turn(self) -> None:
        """A new model turn starts: it may ask for one power verb again."""
        self._power_this_turn = 0

    async def call(self, name: str, args: dict[str, Any]) -> ToolResult:
        """Run one tool call within its deadline; never raise."""
        tool = BY_NAME.get(name)
        if tool is None:
            return ToolResult("error", f"unknown tool {name!r}; the tools are {', '.join(BY_NAME)}")
        try:
            limit = tool.deadline(self.ctx, args)
            # Not wait_for: on Python 3.11 it returns the result when the incident's cancel lands
            # as the tool finishes, and the agent would go on to its next turn.
            async with asyncio.timeout(limit):
                return await tool.run(self, args)
        except TimeoutError:
            return ToolResult("error", f"{name} did not finish within its deadline; try something smaller")
        except PermissionError as exc:
            return ToolResult("denied", str(exc))
        except (ValueError, FileNotFoundError, KeyError, TypeError, UnicodeError) as exc:
            return ToolResult("error", str(exc))
        except RemoteError as exc:
            return ToolResult("error", f"{exc.kind}: {exc}")


# -- devvm_shell ---------------------------------------------------------------


async def _run_shell(box: Toolbox, args: dict[str, Any]) -> ToolResult:
    ctx = box.ctx
    command = _str(args, "command")
    timeout = _shell_timeout(ctx, args)
    if len(command) > MAX_COMMAND_CHARS:
        return ToolResult("denied", f"refused: command over {MAX_COMMAND_CHARS} characters; split it")
    # Parsing is pure Python (about 20 us a character): off the core loop.
    verdict = await asyncio.to_thread(guest_commands.judge, command)
    refusal: str | None = verdict.refused or await _allowlist_refusal(box, verdict)
    if refusal is not None:
        ctx.record("policy", {"command": command, "allowed": False, "reason": refusal})
        return ToolResult("denied", refusal)
    res = await ctx.shell.run(command, timeout=timeout)
    if verdict.mutating:
        how = "timed out" if res.timed_out else f"exit {res.exit_status}"
        box.acted.append(Sent(f"ran `{command[:200]}`", how))
    if res.timed_out:
        text = f"timed out after {timeout} s\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
        return ToolResult("error", _capped(text), acted=verdict.mutating)
    text = f"exit status {res.exit_status}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return ToolResult("ok" if res.exit_status == 0 else "error", _capped(text), acted=verdict.mutating)


async def _allowlist_refusal(box: Toolbox, j: guest_commands.Judgement) -> str | None:
    """Stopping a unit or killing a process follows ``remediation.hog_allowlist``, as for the runbook."""
    allow = tuple(box.ctx.config.remediation.hog_allowlist)
    listed = "remediation.hog_allowlist" + (f" ({', '.join(allow)})" if allow else " (empty)")
    for unit in j.units_stopped:
        if diagnose.hog_allowed(allow, diagnose.Process("", 0, 0, 0, ""), unit) is None:
            return f"refused: stopping {unit} needs it on {listed}; a person decides"
    for name in j.names_killed:
        if not any(name in (e, e.rsplit("/", 1)[-1], e.removesuffix(".service")) for e in allow if e.strip()):
            return f"refused: killing {name!r} needs it named on {listed}; a person decides"
    for pid in j.pids_killed:
        proc, owner_unit = await _describe_pid(box, int(pid))
        if proc is None:
            return f"refused: PID {pid} not found on the guest"
        if diagnose.hog_allowed(allow, proc, owner_unit) is None:
            owner = f" of {owner_unit}" if owner_unit else ""
            return f"refused: PID {pid}{owner} ({proc.command[:80]}) is not on {listed}; a person decides"
    return None


async def _describe_pid(box: Toolbox, pid: int) -> tuple[diagnose.Process | None, str | None]:
    ps = await box.ctx.shell.run("ps aux")
    proc = next((p for p in diagnose.parse_ps(ps.stdout) if p.pid == pid), None)
    if proc is None:
        return None, None
    tree = await box.ctx.shell.run(
        f"systemctl status --no-pager {pid} 2>/dev/null || systemctl status --no-pager"
    )
    return proc, diagnose.unit_of_pid(tree.stdout, pid)


def _shell_timeout(ctx: RemediationContext, args: dict[str, Any]) -> float:
    timeout = args.get("timeout_s", ctx.config.probe.command_timeout_seconds)
    number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if not number or not 1 <= timeout <= MAX_SHELL_TIMEOUT:
        raise ValueError(f"timeout_s must be a number from 1 to {MAX_SHELL_TIMEOUT:.0f}")
    return float(timeout)


def _shell_deadline(ctx: RemediationContext, args: dict[str, Any]) -> float:
    p = ctx.config.probe
    return _shell_timeout(ctx, args) + 3 * p.connect_timeout_seconds + 2 * p.command_timeout_seconds + 5


def _shell_mutates(args: dict[str, Any]) -> bool:
    command = args.get("command")
    if not isinstance(command, str) or len(command) > MAX_COMMAND_CHARS:
        return True
    return guest_commands.judge(command).mutating


# -- pve -------------------------------------------------------------------------


async def _run_pve(box: Toolbox, args: dict[str, Any]) -> ToolResult:
    ctx = box.ctx
    raw = _str(args, "verb")
    try:
        verb = Verb(raw)
    except ValueError:
        return ToolResult("denied", f"refused {raw!r}: the only verbs are {', '.join(v.value for v in Verb)}")
    if verb not in POWER_VERBS:
        res = await ctx.pve.run(verb)
        body = res.stdout if res.ok else f"exit {res.exit_status}: {res.stdout}{res.stderr}"
        return ToolResult("ok" if res.ok else "error", _capped(body))
    box._power_this_turn += 1
    if box._power_this_turn > 1:
        why = "refused: one power verb per turn; check the result of the first (pve status) before another"
        ctx.record("policy", {"verb": verb.value, "allowed": False, "reason": why})
        return ToolResult("denied", why)
    ev = await policy.observe(ctx.shell, ctx.pve)
    outcome = await ctx.power(verb, trace={"requested_by": "agent"}, evidence=ev)
    d = outcome.decision
    if outcome.result == "refused":
        return ToolResult(
            "denied",
            f"power action {verb.value} {d.reason}\nevidence observed by the watchdog just now: "
            f"{json.dumps(ev.as_dict())}",
        )
    if outcome.result == "denied":
        box.denied = outcome
        when = f"; next power action allowed at {_iso(d.next_allowed_at)}" if d.next_allowed_at else ""
        return ToolResult("denied", f"power action {verb.value} refused by the budget: {d.reason}{when}")
    box.acted.append(Sent(f"pve {verb.value}", outcome.result))
    if outcome.result == "dry_run":
        return ToolResult("ok", f"dry run: {verb.value} was recorded, not sent", acted=True)
    if outcome.result == "ok":
        box.verbs_ok.append(verb)
    body = json.dumps({"result": outcome.result, "output": outcome.output}, indent=None)
    return ToolResult("ok" if outcome.result == "ok" else "error", _capped(body), acted=True)


def _pve_deadline(ctx: RemediationContext, args: dict[str, Any]) -> float:
    p, b = ctx.config.probe, ctx.config.budget
    # evidence (login and `true`, status, forensics), the Governor's forensics, then the verb itself
    reads = 3 * p.status_timeout_seconds
    return 6 * p.connect_timeout_seconds + reads + b.verb_timeout_seconds + 10


def _pve_mutates(args: dict[str, Any]) -> bool:
    return args.get("verb") in {v.value for v in POWER_VERBS}


# -- runbook files -----------------------------------------------------------------


async def _run_read(box: Toolbox, args: dict[str, Any]) -> ToolResult:
    text = await asyncio.to_thread(box.files.read, _str(args, "path"))
    return ToolResult("ok", _capped(text))


async def _run_grep(box: Toolbox, args: dict[str, Any]) -> ToolResult:
    path = args.get("path")
    if path is not None and not isinstance(path, str):
        raise ValueError("'path' must be a string")
    limit = FILE_TOOL_DEADLINE - 1
    hits = await grep_in_subprocess(box.files.root, _str(args, "pattern"), path, limit)
    return ToolResult("ok", _capped("\n".join(hits) or "(no matches)"))


async def _run_glob(box: Toolbox, args: dict[str, Any]) -> ToolResult:
    found = await asyncio.to_thread(box.files.glob, _str(args, "pattern"))
    return ToolResult("ok", "\n".join(found) or "(no files)")


def _never(args: dict[str, Any]) -> bool:
    return False


def _file_deadline(ctx: RemediationContext, args: dict[str, Any]) -> float:
    return FILE_TOOL_DEADLINE


def _path_schema(**props: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": [next(iter(props))],
        "additionalProperties": False,
    }


TOOLS: tuple[Tool, ...] = (
    Tool(
        name="devvm_shell",
        description=(
            "Run a shell command on the devvm over SSH as the breakglass user (passwordless "
            "sudo: prefix root actions with sudo). Returns exit status, stdout and stderr. Commands "
            "that power off, reboot, halt or kexec the guest, write to sysrq, or stop the SSH daemon "
            "or the network are refused (use pve); stopping a unit or killing a process is allowed "
            "only for what the operator's allowlist names."
        ),
        input_schema={
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
        run=_run_shell,
        mutates=_shell_mutates,
        deadline=_shell_deadline,
    ),
    Tool(
        name="pve",
        description=(
            "Send one bare verb to the Proxmox host's forced command for this VM. status and "
            "forensics only read; reset, stop, start and cycle are power actions, at most one per "
            "turn, each judged on the watchdog's own evidence (a refusal says why and which verb "
            "fits) and limited by a budget (a refusal says when the next one is allowed)."
        ),
        input_schema={
            "type": "object",
            "properties": {"verb": {"type": "string", "enum": [v.value for v in Verb]}},
            "required": ["verb"],
            "additionalProperties": False,
        },
        run=_run_pve,
        mutates=_pve_mutates,
        deadline=_pve_deadline,
    ),
    Tool(
        name="read_file",
        description="Read a file from the runbooks folder (path relative to it).",
        input_schema=_path_schema(path={"type": "string"}),
        run=_run_read,
        mutates=_never,
        deadline=_file_deadline,
    ),
    Tool(
        name="grep",
        description=(
            "Search the runbooks folder (or a file or subfolder of it) for a regular expression "
            "(RE2 syntax: no backreferences or lookaround)."
        ),
        input_schema=_path_schema(pattern={"type": "string"}, path={"type": "string"}),
        run=_run_grep,
        mutates=_never,
        deadline=_file_deadline,
    ),
    Tool(
        name="glob",
        description="List files in the runbooks folder matching a glob such as post-mortems/*devvm*.",
        input_schema=_path_schema(pattern={"type": "string"}),
        run=_run_glob,
        mutates=_never,
        deadline=_file_deadline,
    ),
)
BY_NAME: dict[str, Tool] = {t.name: t for t in TOOLS}
TOOL_SCHEMAS: list[dict[str, Any]] = [t.schema() for t in TOOLS]


def _capped(text: str) -> str:
    capped, _ = cap_output(text.encode("utf-8", errors="replace"), TOOL_OUTPUT_CAP)
    return capped


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    return value


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

