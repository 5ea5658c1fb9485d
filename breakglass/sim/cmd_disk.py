"""The filesystem: df, du, rm, ls, and glob expansion over the guest's disk model."""

from __future__ import annotations

import fnmatch
import math
import posixpath
import time

from breakglass.sim import catalog as c
from breakglass.sim import fmt
from breakglass.sim.shell import Command, Ctx, Out

HOME = f"/home/{c.LOGIN_USER}"
# Directories a plain user cannot read (du skips them, as the real one does).
_PRIVATE = ("/root", "/var/lib/docker", "/var/lib/postgresql", "/home/viktor")

# (source, type, mount point, size kB, used kB); the root's numbers come from the guest.
_MOUNTS: tuple[tuple[str, str, str, int, int], ...] = (
    ("udev", "devtmpfs", "/dev", 8_165_680, 0),
    ("tmpfs", "tmpfs", "/run", 1_637_056, 1_040),
    (c.ROOT_DEVICE, "ext4", "/", c.ROOT_BLOCKS_KB, 0),
    ("tmpfs", "tmpfs", "/dev/shm", 8_185_268, 0),
    ("tmpfs", "tmpfs", "/run/lock", 5_120, 0),
    ("tmpfs", "tmpfs", f"/run/user/{1000}", 1_637_052, 24),
)


def absolute(path: str) -> str:
    """Resolve ``path`` against the login user's home; drop trailing slashes."""
    if path == "~" or path.startswith("~/"):
        path = HOME + path[1:]
    return posixpath.normpath(posixpath.join(HOME, path)) if path else HOME


def _children(ctx: Ctx, directory: str) -> list[str]:
    prefix = directory.rstrip("/") + "/"
    names = {p[len(prefix):].split("/", 1)[0] for p in [*ctx.guest.files(), *ctx.guest.dirs()]
             if p.startswith(prefix) and p != prefix}
    return sorted(n for n in names if n)


def is_dir(ctx: Ctx, path: str) -> bool:
    """Whether ``path`` is a directory in the model."""
    return absolute(path) in ctx.guest.dirs()


def _exists(ctx: Ctx, path: str) -> bool:
    p = absolute(path)
    return p in ctx.guest.dirs() or p in ctx.guest.files()


def expand_glob(ctx: Ctx, word: str) -> list[str]:
    """Expand ``*``, ``?`` and ``[...]`` against the model; no match keeps the word (bash)."""
    if not any(ch in word for ch in "*?[") or not word.startswith("/"):
        return [word]
    found = ["/"]
    for part in [p for p in word.split("/") if p]:
        nxt: list[str] = []
        for base in found:
            if any(ch in part for ch in "*?["):
                nxt += [posixpath.join(base, n) for n in _children(ctx, base)
                        if fnmatch.fnmatchcase(n, part) and not n.startswith(".")]
            else:
                cand = posixpath.join(base, part)
                if _exists(ctx, cand):
                    nxt.append(cand)
        found = nxt
    return sorted(found) or [word]


def _mount_of(path: str) -> str:
    best = "/"
    for _, _, mnt, _, _ in _MOUNTS:
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best = mnt
    return best


def _df(ctx: Ctx, args: list[str], stdin: str) -> Out:
    flags = "".join(a[1:] for a in args if a.startswith("-") and not a.startswith("--"))
    human = "h" in flags or "H" in flags or "--human-readable" in args
    posix = "P" in flags or "--portability" in args
    show_type = "T" in flags or "--print-type" in args
    paths = [a for a in args if not a.startswith("-")]
    used_kb = math.ceil(ctx.guest.used_bytes() / 1024)
    mounts = [(s, t, m, size, used_kb if m == "/" else used) for s, t, m, size, used in _MOUNTS]
    err: list[str] = []
    if paths:
        chosen = []
        for p in paths:
            ap = absolute(p)
            if not (_exists(ctx, ap) or ap.startswith(("/proc", "/sys", "/dev", "/run"))):
                err.append(f"df: {p}: No such file or directory\n")
                continue
            mnt = _mount_of(ap)
            chosen += [m for m in mounts if m[2] == mnt]
        mounts = chosen
    size_h = "Size" if human else ("1024-blocks" if posix else "1K-blocks")
    header = ["Filesystem", *(["Type"] if show_type else []), size_h, "Used",
              "Avail" if human else "Available", "Capacity" if posix else "Use%", "Mounted on"]
    rows = [header]
    for src, typ, mnt, size, used in mounts:
        avail = size - used
        pct = "-" if size == 0 else f"{math.ceil(used * 100 / (used + avail))}%"
        nums = ([fmt.human_ceil(v * 1024) for v in (size, used, avail)] if human
                else [str(v) for v in (size, used, avail)])
        rows.append([src, *([typ] if show_type else []), *nums, pct, mnt])
    out = _table(rows, show_type) if len(rows) > 1 else ""
    return out, "".join(err), 1 if err else 0


def _table(rows: list[list[str]], show_type: bool) -> str:
    ncol = len(rows[0])
    mins = [14, *([4] if show_type else []), 5, 5, 5, 4, 0]
    widths = [max(mins[i], *(len(r[i]) for r in rows)) for i in range(ncol)]
    lines = []
    for r in rows:
        cells = []
        for i, cell in enumerate(r):
            left = i == 0 or i == ncol - 1 or (show_type and i == 1)
            if i == ncol - 1:
                cells.append(cell)
            else:
                cells.append(f"{cell:<{widths[i]}}" if left else f"{cell:>{widths[i]}}")
        lines.append(" ".join(cells))
    return "\n".join(lines) + "\n"


def _du_size(ctx: Ctx, path: str) -> tuple[int, list[str]]:
    """Bytes under ``path`` the caller can read, and the directories it could not."""
    denied = [] if ctx.root else [d for d in _PRIVATE
                                  if d == path or d.startswith(path.rstrip("/") + "/")
                                  or path.startswith(d + "/")]
    total = 0
    prefix = path.rstrip("/") + "/"
    for p, size in ctx.guest.files().items():
        if (p == path or p.startswith(prefix)) and not any(
                p == d or p.startswith(d + "/") for d in denied):
            total += size
    return total, denied


def _du(ctx: Ctx, args: list[str], stdin: str) -> Out:
    flags = "".join(a[1:] for a in args if a.startswith("-") and not a.startswith("--"))
    human = "h" in flags or "--human-readable" in args
    summary = "s" in flags or "--summarize" in args
    total = "c" in flags or "--total" in args
    depth: int | None = 0 if summary else None
    paths: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        value = a.split("=", 1)[1] if a.startswith("--max-depth=") else None
        if a == "-d" and i + 1 < len(args):
            value = args[i + 1]
            i += 1
        if value is not None:
            if not value.isdigit():
                return "", f"du: invalid maximum depth ‘{value}’\n", 1
            depth = int(value)
        elif not a.startswith("-"):
            paths.append(a)
        i += 1
    paths = paths or ["."]
    out: list[str] = []
    err: list[str] = []
    grand = 0

    def show(n: int) -> str:
        n = max(n, 4096)
        return fmt.human_ceil(n) if human else str(math.ceil(n / 1024))

    for p in paths:
        ap = absolute(p)
        if not _exists(ctx, ap):
            err.append(f"du: cannot access '{p}': No such file or directory\n")
            continue
        size, denied = _du_size(ctx, ap)
        err += [f"du: cannot read directory '{d}': Permission denied\n" for d in denied]
        if depth != 0 and ap in ctx.guest.dirs():
            subdirs = sorted((d for d in ctx.guest.dirs() if d.startswith(ap.rstrip("/") + "/")
                              and (depth is None or d[len(ap):].count("/") <= depth)),
                             reverse=True)
            for d in subdirs:
                shown = p.rstrip("/") + d[len(ap.rstrip("/")):]
                out.append(f"{show(_du_size(ctx, d)[0])}\t{shown}\n")
        out.append(f"{show(size)}\t{p}\n")
        grand += size
    if total:
        out.append(f"{show(grand)}\ttotal\n")
    return "".join(out), "".join(err), 1 if err else 0


def _rm(ctx: Ctx, args: list[str], stdin: str) -> Out:
    recursive = force = False
    paths: list[str] = []
    for a in args:
        if a.startswith("--"):
            recursive |= a == "--recursive"
            force |= a == "--force"
        elif a.startswith("-") and len(a) > 1 and not paths:
            recursive |= "r" in a or "R" in a
            force |= "f" in a
        else:
            paths.append(a)
    if not paths:
        return "", "rm: missing operand\nTry 'rm --help' for more information.\n", 1 - force
    err: list[str] = []
    g = ctx.guest
    for p in paths:
        ap = absolute(p)
        if ap == "/":
            err.append("rm: it is dangerous to operate recursively on '/'\n"
                       "rm: use --no-preserve-root to override this failure-safe\n")
            continue
        if not _exists(ctx, ap):
            if not force:
                err.append(f"rm: cannot remove '{p}': No such file or directory\n")
            continue
        if ap in g.dirs() and not recursive:
            err.append(f"rm: cannot remove '{p}': Is a directory\n")
            continue
        mine = ap == c.CLEANUP_DIR or ap.startswith(c.CLEANUP_DIR + "/")
        if not (mine or ctx.root):
            err.append(f"rm: cannot remove '{p}': Permission denied\n")
            continue
        g.remove(ap)
    return "", "".join(err), 1 if err else 0


def _ls(ctx: Ctx, args: list[str], stdin: str) -> Out:
    flags = "".join(a[1:] for a in args if a.startswith("-") and not a.startswith("--"))
    long = "l" in flags
    human = "h" in flags
    paths = [a for a in args if not a.startswith("-")] or ["."]
    out: list[str] = []
    err: list[str] = []
    files = ctx.guest.files()
    for p in paths:
        ap = absolute(p)
        if not _exists(ctx, ap):
            err.append(f"ls: cannot access '{p}': No such file or directory\n")
            continue
        if not ctx.root and any(ap == d or ap.startswith(d + "/") for d in _PRIVATE):
            err.append(f"ls: cannot open directory '{p}': Permission denied\n")
            continue
        names = _children(ctx, ap) if ap in ctx.guest.dirs() else [posixpath.basename(ap)]
        if len(paths) > 1:
            out.append(f"{p}:\n")
        if not long:
            out += [n + "\n" for n in names]
            continue
        stamp = time.strftime("%b %d %H:%M", time.gmtime(ctx.now - 3600))
        for n in names:
            full = posixpath.join(ap, n) if ap in ctx.guest.dirs() else ap
            is_d = full in ctx.guest.dirs()
            size = 4096 if is_d else files.get(full, 0)
            owner = c.LOGIN_USER if full.startswith((HOME, c.CLEANUP_DIR)) else "root"
            mode = "drwxr-xr-x" if is_d else "-rw-r-----"
            shown = fmt.human_ceil(size) if human else str(size)
            out.append(f"{mode} 2 {owner} {owner} {shown:>5} {stamp} {n}\n")
    return "".join(out), "".join(err), 2 if err else 0


COMMANDS: dict[str, Command] = {"df": _df, "du": _du, "rm": _rm, "ls": _ls}
