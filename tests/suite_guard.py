"""Guards for the whole run (a pytest plugin loaded by conftest.py).

- The run fails if it leaves a child process or a server/non-daemon thread
  behind: whatever a test starts, it stops (tests/servers.py does it for servers).
- Every skipped test is named, with its reason, in a loud block at the end of
  the run, so a suite that did not run (a Debian tool missing) is never
  mistaken for one that passed.

Thread exceptions, unraisable exceptions and ResourceWarnings are errors through
``filterwarnings`` in pyproject.toml.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Threads our servers start, daemon or not: none may outlive the run.
SERVER_THREADS = ("breakglass-", "waitress", "web-loop-", "fake-messages")
INSTALL_HINT = "scripts/install-debian-deps (run by `make test`) installs the Debian tools as root"


def child_processes() -> list[str]:
    """This process's children (zombies included), as ``pid name (state)``."""
    me = os.getpid()
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone while we looked
            continue
        name_end = text.rindex(")")
        state, ppid = text[name_end + 2 :].split()[:2]
        if int(ppid) == me:
            pid, _, name = text[:name_end].partition(" (")
            found.append(f"{pid} {name} ({state})")
    return sorted(found)


def process_wide_pools() -> set[threading.Thread]:
    """Worker threads of pools a library keeps for the life of the process, by design.

    Apprise sends every notification through two module-level executors that it
    creates on first use and never shuts down; they are not a test's leftovers.
    """
    try:
        import apprise.apprise as module
    except ImportError:
        return set()
    pools = (getattr(module, "_shared_executor", None), getattr(module, "_coordinator_executor", None))
    return {t for pool in pools if pool is not None for t in getattr(pool, "_threads", ())}


def leftover_threads() -> list[threading.Thread]:
    """Threads other than the main one that are not daemons or that belong to a server."""
    main = threading.main_thread()
    allowed = process_wide_pools()
    return [
        t
        for t in threading.enumerate()
        if t is not main
        and t not in allowed
        and t.is_alive()
        and (not t.daemon or t.name.startswith(SERVER_THREADS))
    ]


def leftovers(within: float = 5.0) -> list[str]:
    """What is still running, after waiting up to ``within`` s for it to end."""
    deadline = time.monotonic() + within
    while True:
        threads, children = leftover_threads(), child_processes()
        if not (threads or children) or time.monotonic() >= deadline:
            break
        if threads:
            threads[0].join(min(0.1, max(0.0, deadline - time.monotonic())))
        else:
            time.sleep(0.05)
    return [f"child process {c}" for c in children] + [
        f"thread {t.name!r} ({'daemon' if t.daemon else 'non-daemon'})" for t in threads
    ]


GRACE_INI = "suite_guard_grace_seconds"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``suite_guard_grace_seconds``: how long the end of a run waits for leftovers to end."""
    parser.addini(GRACE_INI, "seconds the run's end waits for threads and children to end", default="5")


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the run if it leaves a child process or a thread behind."""
    yield
    left = leftovers(float(request.config.getini(GRACE_INI)))
    if not left:
        return
    message = "the test run left these running:\n  " + "\n  ".join(left)
    if request.session.shouldstop or request.session.shouldfail:
        # Stopped early (-x): the run has failed already; failing here would crash pytest's exit.
        request.config.get_terminal_writer().line(message, red=True, bold=True)
        return
    pytest.fail(message, pytrace=False)


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """Name every skipped test and why, in red, after everything else (pytest's short summary too)."""
    yield
    skipped: list[pytest.TestReport] = terminalreporter.stats.get("skipped", [])
    by_reason: dict[str, list[str]] = {}
    for report in skipped:
        by_reason.setdefault(_reason(report), []).append(report.nodeid)
    if not by_reason:
        return None
    terminalreporter.section("SKIPPED: these tests did not run", sep="!", red=True, bold=True)
    for reason, ids in sorted(by_reason.items()):
        files = sorted({nodeid.split("::")[0] for nodeid in ids})
        terminalreporter.write_line(
            f"SKIPPED {len(ids)} test(s) in {', '.join(files)}: {reason}", red=True, bold=True
        )
    terminalreporter.write_line(INSTALL_HINT, red=True, bold=True)
    return None
