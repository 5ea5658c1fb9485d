"""The run-wide guards catch what they promise: a thread's exception, a ResourceWarning and a
leftover child process each fail a run; a skipped test is named in the closing summary."""

from __future__ import annotations

import http.client
import threading
import tomllib
from pathlib import Path

import pytest
from flask import Flask
from servers import Servers

from breakglass.web.server import WebServer

TESTS = Path(__file__).resolve().parent
PYPROJECT = TESTS.parent / "pyproject.toml"

INNER = '''
import atexit
import gc
import subprocess
import threading

import pytest


def test_a_thread_that_raises():
    t = threading.Thread(target=lambda: 1 / 0, name="doomed")
    t.start()
    t.join()


def test_a_file_left_open():
    f = open(__file__)
    del f
    gc.collect()


@pytest.mark.skip(reason="Debian's prometheus is not installed")
def test_needs_prometheus():
    pass


def test_fine():
    pass


def test_zz_leaves_a_child_running():
    child = subprocess.Popen(["sleep", "60"])
    atexit.register(child.kill)  # the guard must notice it first; then it goes
'''


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_the_guards_fail_thread_exceptions_resource_warnings_leftover_children_and_name_skips(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    # One inner run (a few seconds) with this project's warning filters and tests/suite_guard.py,
    # in one process and spread over xdist workers as `make test` runs the suite: a worker's
    # leftover child still fails the run, and the controller names every worker's skips.
    filters = tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]["filterwarnings"]
    # The child never ends: half a second of grace at the end instead of the run's five.
    ini = "[pytest]\nsuite_guard_grace_seconds = 0.5\nfilterwarnings =\n"
    pytester.makeini(ini + "".join(f"    {f}\n" for f in filters))
    pytester.makeconftest(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from suite_guard import _nothing_left_running, pytest_addoption, pytest_terminal_summary  # noqa\n"
    )
    pytester.makepyfile(test_inner=INNER)
    inner = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *workers, timeout=60)
    lines = inner.stdout.lines
    text = "\n".join(lines)

    # An exception in a thread and a ResourceWarning each fail the test they happened in.
    outcomes = inner.parseoutcomes()
    assert (outcomes.get("failed"), outcomes.get("passed")) == (2, 2), text
    inner.stdout.fnmatch_lines(
        ["FAILED test_inner.py::test_a_thread_that_raises*", "FAILED test_inner.py::test_a_file_left_open*"],
        consecutive=False,
    )

    # A child process still running at the end fails the run, naming it.
    assert outcomes.get("errors") == 1, text
    inner.stdout.fnmatch_lines(["*the test run left these running:*", "*child process * sleep (*)*"])
    assert inner.ret != 0

    # The skipped test is named with its reason after pytest's own short summary.
    block = next(i for i, line in enumerate(lines) if "SKIPPED: these tests did not run" in line)
    assert "!!!" in lines[block]
    assert "SKIPPED 1 test(s) in test_inner.py: Debian's prometheus is not installed" in lines[block + 1]
    assert block > max(i for i, line in enumerate(lines) if "short test summary info" in line), text


def test_a_process_wide_pool_first_used_inside_a_test_is_not_a_servers_leftover(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Apprise's shared executor starts on the first notification of the process; under xdist
    # that can be inside any test that also uses the servers fixture.
    import apprise.apprise as module

    monkeypatch.setattr(module, "_shared_executor", None)
    with Servers():
        pool = module.get_shared_executor()
        pool.submit(lambda: None).result(5)
    pool.shutdown(wait=True)


def test_a_web_servers_threads_are_joined_after_it_stops_even_mid_request() -> None:
    # Its pools shut down without waiting (a stopping service does not wait on a request), so the
    # servers fixture joins them through WebServer.join: a request still in the app runs to its end.
    entered, release = threading.Event(), threading.Event()
    app = Flask(__name__)

    @app.get("/slow")
    def slow() -> str:
        entered.set()
        release.wait(30)
        return "done"

    server = WebServer(app, host="127.0.0.1", port=0, threads=2)
    loop = threading.Thread(target=server.run, name=f"web-loop-{server.effective_port}")
    loop.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=10)
    try:
        conn.request("GET", "/slow")
        assert entered.wait(10)
        server.close()
        loop.join(10)
        assert not loop.is_alive()
        assert server.join(0.05) == ["breakglass-web_0"]  # still in the app
    finally:
        release.set()
        conn.close()
    assert server.join(10) == []
