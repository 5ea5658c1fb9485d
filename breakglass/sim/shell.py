"""The devvm's command interpreter: bash's ``-c`` for the subset a diagnosis needs.

It understands ``;``, ``&&``, ``||`` and ``|``, shell quoting (via shlex),
``2>&1`` and ``>/dev/null``, ``sudo CMD`` and ``bash -c STRING``. Each
command is a function in one of the ``cmd_*`` modules; anything else is
"command not found", as bash says it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from breakglass.sim import catalog as c
from breakglass.sim.guest import Guest


@dataclass(frozen=True)
class ExecResult:
    """What one exec request produced."""

    stdout: str
    stderr: str
    exit_status: int


@dataclass(frozen=True)
class Ctx:
    """Who runs a command, where, and when."""

    guest: Guest
    now: float
    root: bool

    def err(self, text: str) -> str:
        """Prefix a builtin's error the way bash does for ``bash -c``."""
        return f"bash: line 1: {text}\n"


Out = tuple[str, str, int]
Command = Callable[[Ctx, list[str], str], Out]

_OPS = ("&&", "||", ";", "|", "&", "\n")


class ShellSyntaxError(ValueError):
    """The line cannot be parsed (unmatched quote, empty command between operators)."""


def split_line(line: str) -> list[tuple[str, str]]:
    """Cut a command line at unquoted operators: [(operator_before, text), ...]."""
    parts: list[tuple[str, str]] = []
    buf: list[str] = []
    op_before = ""
    quote = ""
    depth = 0  # inside $( ... ), operators belong to the inner command
    i = 0
    while i < len(line):
        ch = line[i]
        if depth and not quote:
            if line.startswith("$(", i):
                depth += 1
            elif ch == ")":
                depth -= 1
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"' and i + 1 < len(line):
                buf.append(line[i + 1])
                i += 1
            i += 1
            continue
        if line.startswith("$(", i) and not depth:
            depth = 1
            buf.append("$(")
            i += 2
            continue
        if depth and not quote and ch not in "'\"":
            buf.append(ch)
            i += 1
            continue
        if ch in "'\"":
            quote = ch
            buf.append(ch)
            i += 1
            continue
        if ch == "\\" and i + 1 < len(line):
            buf.extend(line[i:i + 2])
            i += 2
            continue
        if ch == "#" and (not buf or buf[-1].isspace()):
            break  # a comment runs to the end of the line
        op = next((o for o in _OPS if line.startswith(o, i)), "")
        if op == "&" and (line.startswith(">", i + 1) or (buf and buf[-1] in "<>")):
            op = ""  # &> and 2>&1 are redirections, not background jobs
        if op:
            text = "".join(buf).strip()
            if not text and op != "\n":
                raise ShellSyntaxError(f"syntax error near unexpected token `{op}'")
            if text:
                parts.append((op_before, text))
            op_before = ";" if op in ("&", "\n") else op
            buf = []
            i += len(op)
            continue
        buf.append(ch)
        i += 1
    if quote or depth:
        raise ShellSyntaxError(f"unexpected EOF while looking for matching `{quote or ')'}'")
    text = "".join(buf).strip()
    if text:
        parts.append((op_before, text))
    elif op_before in ("&&", "||", "|"):
        raise ShellSyntaxError("syntax error: unexpected end of file")
    return parts


class Session:
    """One ``bash -c`` run as user breakglass inside ``guest`` at time ``now``."""

    def __init__(self, guest: Guest, now: float, *, sudo_password: bool = False,
                 missing: frozenset[str] = frozenset()) -> None:
        self.guest = guest
        self.now = now
        self.status = 0
        # Set-up mistakes: sudo that asks for a password, commands not installed.
        self.sudo_password = sudo_password
        self.missing = missing

    def run(self, line: str) -> ExecResult:
        """Run a whole command line and return its combined result."""
        out, err, code = self.run_line(line, root=False)
        return ExecResult(out, err, code)

    def run_line(self, line: str, *, root: bool) -> Out:
        """Run ``line`` with bash's list semantics: ``;`` always, ``&&``/``||`` by status."""
        try:
            parts = split_line(line)
        except ShellSyntaxError as exc:
            return "", f"bash: -c: line 1: {exc}\n", 2
        outs: list[str] = []
        errs: list[str] = []
        status = 0
        pipeline: list[str] = []
        skip = False
        for idx, (op, text) in enumerate(parts):
            if op == "|":
                pipeline.append(text)
            else:
                if pipeline and not skip:
                    o, e, status = self._pipeline(pipeline, root)
                    self.status = status
                    outs.append(o)
                    errs.append(e)
                if op == "&&":
                    skip = status != 0
                elif op == "||":
                    skip = status == 0
                elif idx:
                    skip = False
                pipeline = [text]
        if pipeline and not skip:
            o, e, status = self._pipeline(pipeline, root)
            self.status = status
            outs.append(o)
            errs.append(e)
        return "".join(outs), "".join(errs), status

    def _pipeline(self, stages: list[str], root: bool) -> Out:
        data = ""
        errs: list[str] = []
        status = 0
        for text in stages:
            out, err, status = self._simple(text, data, root)
            errs.append(err)
            data = out
        return data, "".join(errs), status

    def _simple(self, text: str, stdin: str, root: bool) -> Out:
        text, sub_err = self._expand(text, root)
        try:
            words = shlex.split(text)
        except ValueError as exc:
            return "", f"bash: -c: line 1: {exc}\n", 2
        from breakglass.sim.cmd_disk import expand_glob

        ctx = Ctx(self.guest, self.now, root)
        words = [w for word in words for w in expand_glob(ctx, word)]
        words, redirect, bad = _redirections(words)
        if bad:
            return "", f"bash: line 1: {bad}: Permission denied\n", 1
        out, err, code = self.call(words, stdin, root=root)
        err = sub_err + err
        if redirect.get("merge"):
            out, err = out + err, ""
        if redirect.get("no_out"):
            out = ""
        if redirect.get("no_err"):
            err = ""
        return out, err, code

    def _expand(self, text: str, root: bool) -> tuple[str, str]:
        """Expand ``$(...)``, ``$?`` and a few variables; single quotes protect."""
        env = {"?": str(self.status), "HOME": "/root" if root else f"/home/{c.LOGIN_USER}",
               "USER": "root" if root else c.LOGIN_USER, "HOSTNAME": c.HOSTNAME,
               "PATH": "/usr/local/bin:/usr/bin:/bin"}
        out: list[str] = []
        errs: list[str] = []
        quote = ""
        i = 0
        while i < len(text):
            ch = text[i]
            if ch in "'\"" and (not quote or quote == ch):
                quote = "" if quote else ch
            if quote != "'" and text.startswith("$(", i):
                depth, j = 1, i + 2
                while j < len(text) and depth:
                    depth += {"(": 1, ")": -1}.get(text[j], 0)
                    j += 1
                o, e, _ = self.run_line(text[i + 2:j - 1], root=root)
                errs.append(e)
                o = o.rstrip("\n")
                out.append(o if quote else " ".join(shlex.quote(w) for w in o.split()))
                i = j
                continue
            m = re.match(r"\$(\?|\w+|\{\w+\})", text[i:]) if quote != "'" and ch == "$" else None
            if m:
                out.append(env.get(m[1].strip("{}"), ""))
                i += len(m[0])
                continue
            out.append(ch)
            i += 1
        return "".join(out), "".join(errs)

    def call(self, words: list[str], stdin: str, *, root: bool, via_sudo: bool = False) -> Out:
        """Run one command given as words."""
        if not words:
            return "", "", 0
        name, args = words[0], words[1:]
        ctx = Ctx(self.guest, self.now, root)
        if name == "sudo":
            return self._sudo(args, stdin)
        if name in ("bash", "sh") and len(args) >= 2 and args[0] == "-c":
            return self.run_line(args[1], root=root)
        if name == "command" and args[:1] == ["-v"]:
            return self._command_v(args[1:])
        base = name.rsplit("/", 1)[-1] if name.startswith("/") else name
        fn = None if base in self.missing else _commands().get(base)
        if fn is None:
            if via_sudo:
                return "", f"sudo: {name}: command not found\n", 1
            return "", f"bash: line 1: {name}: command not found\n", 127
        try:
            return fn(ctx, args, stdin)
        except (ValueError, IndexError, KeyError) as exc:
            # An argument shape the model does not cover: say so rather than kill the session.
            return "", f"{name}: unsupported arguments in this simulator ({exc})\n", 2

    def _command_v(self, names: list[str]) -> Out:
        """bash's ``command -v``: the path of each name found; status 1 when the last is not."""
        table = _commands()
        found = [n for n in names
                 if n not in self.missing and (n in table or n in _BUILTINS or n == "sudo")]
        out = "".join((n if n in _BUILTINS else f"/usr/bin/{n}") + "\n" for n in found)
        return out, "", 0 if names and names[-1] in found else 1

    def _sudo(self, args: list[str], stdin: str) -> Out:
        if "sudo" in self.missing:
            return "", "bash: line 1: sudo: command not found\n", 127
        rest = list(args)
        while rest and rest[0].startswith("-"):
            flag = rest.pop(0)
            if flag == "--":
                break
            if flag == "-n" and self.sudo_password:
                return "", "sudo: a password is required\n", 1
            if flag in ("-u", "-g") and rest:
                rest.pop(0)
            elif flag in ("-i", "-s") and not rest:
                return "", "sudo: a terminal is required to read the password; either use the -S "\
                           "option to read from standard input or configure an askpass helper\n", 1
        if not rest:
            return "", ("usage: sudo -h | -K | -k | -V\nusage: sudo -v [-ABkNnS] [-g group] "
                        "[-h host] [-p prompt] [-u user]\n"), 1
        return self.call(rest, stdin, root=True, via_sudo=True)


# Names bash answers itself; ``command -v`` prints them bare.
_BUILTINS = frozenset({"true", "false", "echo", "kill", "command"})

_REDIRECT = re.compile(r"(?P<fd>[12&]?)(?P<op>>>?)(?P<rest>.*)")


def _redirections(words: list[str]) -> tuple[list[str], dict[str, bool], str]:
    """Strip ``2>&1`` and ``>/dev/null`` style redirections; name a file we cannot write."""
    kept: list[str] = []
    flags: dict[str, bool] = {}
    i = 0
    while i < len(words):
        m = _REDIRECT.fullmatch(words[i])
        if m is None:
            kept.append(words[i])
            i += 1
            continue
        fd, rest = m["fd"], m["rest"]
        i += 1
        if rest in ("&1", "&2"):
            if fd == "2" and rest == "&1":
                flags["merge"] = True
            continue
        if not rest and i < len(words):
            rest = words[i]
            i += 1
        if rest != "/dev/null":
            return kept, flags, rest or "newline"
        if fd in ("", "1"):
            flags["no_out"] = True
        elif fd == "2":
            flags["no_err"] = True
        else:
            flags["no_out"] = flags["no_err"] = True
    return kept, flags, ""


def _commands() -> dict[str, Command]:
    # Imported here: the command modules use Ctx from this module.
    from breakglass.sim import cmd_basic, cmd_disk, cmd_proc, cmd_systemd

    table: dict[str, Command] = {}
    for module in (cmd_basic, cmd_disk, cmd_proc, cmd_systemd):
        table.update(module.COMMANDS)
    return table


__all__ = ["Command", "Ctx", "ExecResult", "Out", "Session", "ShellSyntaxError", "split_line"]
