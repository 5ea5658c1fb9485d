"""Read-only access to the operator's runbooks folder for the agent's file tools.

Nothing outside the folder is reachable (no absolute paths, no ``..``, no
symlinks leading out). ``grep`` compiles the model's pattern with RE2, a
linear-time engine: a pattern such as ``(a+)+$`` costs the same as ``a+``,
so a hostile regex cannot stall anything for minutes the way Python's
backtracking ``re`` does. ``grep`` reads files up to :data:`MAX_FILE_BYTES`,
a line at a time.

The tool runs ``grep`` in a child process (:func:`grep_in_subprocess`): a
search over megabytes then competes with the core loop for neither the GIL
nor anything else, and a deadline kills it outright. ``read`` and ``glob``
are small and run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import sys
from collections.abc import Iterator
from pathlib import Path

import re2

MAX_FILES_LISTED = 200
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_READ_BYTES = 256 * 1024
MAX_MATCHES = 500

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the model's error, not a log line


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

    @staticmethod
    def _lines(path: Path) -> Iterator[str]:
        """A file's lines up to MAX_FILE_BYTES, read a buffer at a time.

        Small reads keep each call that holds the GIL short, so the core loop's
        thread gets it back within the interpreter's switch interval.
        """
        seen = 0
        with path.open(encoding="utf-8", errors="replace", newline=None) as f:
            for line in f:
                seen += len(line)
                if seen > MAX_FILE_BYTES:
                    return
                yield line.rstrip("\n")

    def read(self, rel: str) -> str:
        """Return the start of a file's text (at most MAX_READ_BYTES; the tool caps it further)."""
        path = self._inside(rel)
        if not path.is_file():
            raise FileNotFoundError(f"no file {rel!r} in the runbooks folder")
        with path.open("rb") as f:
            return f.read(MAX_READ_BYTES).decode("utf-8", errors="replace")

    def glob(self, pattern: str) -> list[str]:
        """Return relative paths matching ``pattern``."""
        self._inside(pattern.split("*", 1)[0] or ".")
        assert self.root is not None
        rels = [str(p.relative_to(self.root)) for p in self._files(self.root)]
        return [r for r in rels if fnmatch.fnmatch(r, pattern)][:MAX_FILES_LISTED]

    def grep(self, pattern: str, rel: str | None = None) -> list[str]:
        """Return ``path:line: text`` for each matching line (at most MAX_MATCHES)."""
        try:
            rx = re2.compile(pattern, _RE2_OPTIONS)
        except re2.error as exc:
            why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise ValueError(
                f"bad regular expression {pattern!r}: {why} (RE2 syntax: no backreferences or lookaround)"
            ) from None
        base = self._inside(rel or ".")
        root = self.root
        assert root is not None  # _inside refused otherwise
        out: list[str] = []
        for p in self._files(base):
            for n, line in enumerate(self._lines(p), 1):
                if rx.search(line):
                    out.append(f"{p.relative_to(root)}:{n}: {line[:400]}")
                    if len(out) >= MAX_MATCHES:
                        out.append(f"(stopped at {MAX_MATCHES} matches)")
                        return out
        return out


# Exit statuses of ``python -m breakglass.agent.runbook_files grep``.
_EXIT_FOR = {ValueError: 2, PermissionError: 3, FileNotFoundError: 4}
_ERROR_FOR = {code: exc for exc, code in _EXIT_FOR.items()}
MAX_PATTERN_CHARS = 2000


async def grep_in_subprocess(
    root: Path | None, pattern: str, rel: str | None, deadline: float
) -> list[str]:
    """Run :meth:`RunbookFiles.grep` in a child process, killed after ``deadline`` seconds."""
    if root is None:
        raise PermissionError("no runbooks folder is configured (agent.runbooks_dir)")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"pattern longer than {MAX_PATTERN_CHARS} characters")
    argv = [sys.executable, "-m", "breakglass.agent.runbook_files", "grep", str(root), pattern]
    if rel is not None:
        argv.append(rel)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(deadline):  # not wait_for, which can lose a cancel on Python 3.11
            out, err = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        exc = _ERROR_FOR.get(proc.returncode or 0, RuntimeError)
        raise exc(err.decode("utf-8", errors="replace").strip() or f"grep exited {proc.returncode}")
    text = out.decode("utf-8", errors="replace")
    return text.splitlines()


def main(argv: list[str] | None = None) -> int:
    """``grep ROOT PATTERN [REL]``: print matching lines; exit 2/3/4 with the reason on stderr."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4) or args[0] != "grep":
        print("usage: python -m breakglass.agent.runbook_files grep ROOT PATTERN [REL]", file=sys.stderr)
        return 64
    try:
        hits = RunbookFiles(Path(args[1])).grep(args[2], args[3] if len(args) == 4 else None)
    except (ValueError, PermissionError, FileNotFoundError) as exc:
        print(str(exc), file=sys.stderr)
        return _EXIT_FOR.get(type(exc), 2)
    sys.stdout.write("".join(f"{h}\n" for h in hits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
