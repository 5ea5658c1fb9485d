"""Small tools: true, false, echo, hostname, nproc, whoami, id, uname, cat, head, tail, grep, wc."""

from __future__ import annotations

import re

from breakglass.sim import catalog as c
from breakglass.sim.cmd_proc import virtual_file
from breakglass.sim.shell import Command, Ctx, Out


def _true(ctx: Ctx, args: list[str], stdin: str) -> Out:
    return "", "", 0


def _false(ctx: Ctx, args: list[str], stdin: str) -> Out:
    return "", "", 1


def _echo(ctx: Ctx, args: list[str], stdin: str) -> Out:
    newline = "\n"
    if args and args[0] == "-n":
        args, newline = args[1:], ""
    return " ".join(args) + newline, "", 0


def _hostname(ctx: Ctx, args: list[str], stdin: str) -> Out:
    if args and args[0] in ("-I", "-i"):
        return "10.20.30.102 172.17.0.1 \n" if args[0] == "-I" else "127.0.1.1\n", "", 0
    return f"{c.HOSTNAME}\n", "", 0


def _nproc(ctx: Ctx, args: list[str], stdin: str) -> Out:
    return f"{c.CPUS}\n", "", 0


def _whoami(ctx: Ctx, args: list[str], stdin: str) -> Out:
    return ("root" if ctx.root else c.LOGIN_USER) + "\n", "", 0


def _id(ctx: Ctx, args: list[str], stdin: str) -> Out:
    if ctx.root:
        return "uid=0(root) gid=0(root) groups=0(root)\n", "", 0
    return ("uid=1000(breakglass) gid=1000(breakglass) groups=1000(breakglass),4(adm),27(sudo),"
            "100(users),995(docker)\n", "", 0)


def _uname(ctx: Ctx, args: list[str], stdin: str) -> Out:
    if "-a" in args:
        return (f"Linux {c.HOSTNAME} {c.KERNEL} {c.KERNEL_BUILD} x86_64 GNU/Linux\n", "", 0)
    if "-r" in args:
        return f"{c.KERNEL}\n", "", 0
    return "Linux\n", "", 0


def _cat(ctx: Ctx, args: list[str], stdin: str) -> Out:
    paths = [a for a in args if not a.startswith("-") or a == "-"]
    if not paths:
        return stdin, "", 0
    out: list[str] = []
    err: list[str] = []
    for path in paths:
        if path == "-":
            out.append(stdin)
            continue
        text = virtual_file(ctx, path)
        if text is None:
            from breakglass.sim.cmd_disk import is_dir

            why = "Is a directory" if is_dir(ctx, path) else "No such file or directory"
            err.append(f"cat: {path}: {why}\n")
        else:
            out.append(text)
    return "".join(out), "".join(err), 1 if err else 0


def _count_arg(name: str, args: list[str]) -> tuple[int | None, list[str], str]:
    """Read -n N, -nN, --lines=N or -N; return (count, other args, error)."""
    count: int | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        value: str | None = None
        if a == "-n" and i + 1 < len(args):
            value = args[i + 1]
            i += 1
        elif a.startswith("-n") and len(a) > 2:
            value = a[2:]
        elif a.startswith("--lines="):
            value = a.split("=", 1)[1]
        elif re.fullmatch(r"-\d+", a):
            value = a[1:]
        elif a.startswith("-") and a != "-":
            return None, rest, f"{name}: invalid option -- '{a.lstrip('-')[:1]}'\n"
        else:
            rest.append(a)
        if value is not None:
            if not value.lstrip("+-").isdigit():
                return None, rest, f"{name}: invalid number of lines: ‘{value}’\n"
            count = int(value.lstrip("+-"))
        i += 1
    return count, rest, ""


def _lines_of(ctx: Ctx, name: str, files: list[str], stdin: str) -> tuple[list[str], str]:
    if not files:
        return stdin.splitlines(keepends=True), ""
    text = virtual_file(ctx, files[0])
    if text is None:
        return [], f"{name}: cannot open '{files[0]}' for reading: No such file or directory\n"
    return text.splitlines(keepends=True), ""


def _head(ctx: Ctx, args: list[str], stdin: str) -> Out:
    count, files, err = _count_arg("head", args)
    if err:
        return "", err, 1
    lines, err = _lines_of(ctx, "head", files, stdin)
    return "".join(lines[: 10 if count is None else count]), err, 1 if err else 0


def _tail(ctx: Ctx, args: list[str], stdin: str) -> Out:
    count, files, err = _count_arg("tail", args)
    if err:
        return "", err, 1
    lines, err = _lines_of(ctx, "tail", files, stdin)
    n = 10 if count is None else count
    return "".join(lines[-n:] if n else []), err, 1 if err else 0


def _grep(ctx: Ctx, args: list[str], stdin: str) -> Out:
    flags = 0
    invert = count = False
    rest: list[str] = []
    patterns: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-e" and i + 1 < len(args):
            patterns.append(args[i + 1])
            i += 2
            continue
        if a.startswith("-") and len(a) > 1 and not rest and not patterns:
            for ch in a[1:]:
                if ch == "i":
                    flags |= re.IGNORECASE
                elif ch == "v":
                    invert = True
                elif ch == "c":
                    count = True
                elif ch not in "EFsqw":
                    return "", f"grep: invalid option -- '{ch}'\n", 2
        else:
            rest.append(a)
        i += 1
    if not patterns:
        if not rest:
            return "", "Usage: grep [OPTION]... PATTERNS [FILE]...\n", 2
        patterns.append(rest.pop(0))
    try:
        regex = re.compile("|".join(f"(?:{p})" for p in patterns), flags)
    except re.error:
        regex = re.compile("|".join(re.escape(p) for p in patterns), flags)
    lines, err = _lines_of(ctx, "grep", rest, stdin)
    if err:
        return "", err.replace("cannot open", "").replace(" for reading", ""), 2
    hits = [ln for ln in lines if bool(regex.search(ln)) != invert]
    if count:
        return f"{len(hits)}\n", "", 0 if hits else 1
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in hits), "", 0 if hits else 1


def _wc(ctx: Ctx, args: list[str], stdin: str) -> Out:
    lines = stdin.count("\n")
    if "-l" in args:
        return f"{lines}\n", "", 0
    return f"{lines:7d} {len(stdin.split()):7d} {len(stdin.encode()):7d}\n", "", 0


COMMANDS: dict[str, Command] = {
    "true": _true, "false": _false, "echo": _echo, "hostname": _hostname, "nproc": _nproc,
    "whoami": _whoami, "id": _id, "uname": _uname, "cat": _cat, "head": _head, "tail": _tail,
    "grep": _grep, "wc": _wc,
}
