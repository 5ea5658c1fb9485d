"""Read-only access to the operator's runbooks folder for the agent's file tools.

Nothing outside the folder is reachable (no absolute paths, no ``..``, no
symlinks leading out). ``grep`` compiles the model's pattern with RE2, a
linear-time engine: a pattern such as ``(a+)+$`` costs the same as ``a+``,
so a hostile regex cannot stall a thread for minutes the way Python's
backtracking ``re`` does. Files are read up to :data:`MAX_FILE_BYTES`.
These methods block on disk; the tool runs them in a worker thread.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import re2

MAX_FILES_LISTED = 200
MAX_FILE_BYTES = 8 * 1024 * 1024
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
    def _text(path: Path) -> str:
        with path.open("rb") as f:
            return f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")

    def read(self, rel: str) -> str:
        """Return a file's text (its first MAX_FILE_BYTES)."""
        path = self._inside(rel)
        if not path.is_file():
            raise FileNotFoundError(f"no file {rel!r} in the runbooks folder")
        return self._text(path)

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
            for n, line in enumerate(self._text(p).splitlines(), 1):
                if rx.search(line):
                    out.append(f"{p.relative_to(root)}:{n}: {line[:400]}")
                    if len(out) >= MAX_MATCHES:
                        out.append(f"(stopped at {MAX_MATCHES} matches)")
                        return out
        return out
