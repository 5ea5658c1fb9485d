"""Real ``breakglass serve`` child processes for end-to-end tests, and reading what they wrote."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from harness import wait_for

CLI = [sys.executable, "-m", "breakglass.cli"]


def serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``breakglass serve -c config`` as a child, its stderr (the JSON log) appended to ``log``."""
    with log.open("ab") as err:
        return subprocess.Popen([*CLI, "serve", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=err)


def get_json(url: str) -> Any:
    """The JSON at ``url``, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def wait_serving(base: str, within: float = 30.0) -> None:
    """Wait until the serve at ``base`` is ready and has stored a first probe round."""
    wait_for(lambda: get_json(f"{base}/readyz"), within=within, what=f"serve at {base} to be ready")
    wait_for(
        lambda: (get_json(f"{base}/api/v1/status") or {}).get("targets", [{}])[0].get("readings"),
        within=10,
        what=f"a first round at {base}",
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM (unless it ended) and wait; SIGKILL if it will not stop. Its exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def db_rows(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on a serve's store; none while the table does not exist yet."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
