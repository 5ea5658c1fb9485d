"""Shared fixtures: a simulated devvm + Proxmox host over real SSH on loopback."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import Servers
from suite_guard import (  # noqa: F401  (run-wide guards)
    _nothing_left_running,
    pytest_addoption,
    pytest_terminal_summary,
)
from web_fixtures import app, cfg, client, core, metrics  # noqa: F401  (the web app's fixtures)

from breakglass.config import LogSettings
from breakglass.log import configure_logging
from breakglass.sim.runner import SimHandle
from breakglass.store import Store

pytest_plugins = ["pytester"]


class FakeClock:
    """A settable clock for code that takes ``clock=``."""

    def __init__(self, now: float = 2_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at a fixed epoch time."""
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    """A fresh SQLite store in ``tmp_path`` on the fake clock."""
    s = Store(tmp_path / "store.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Configure JSON logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    buf = io.StringIO()
    configure_logging(LogSettings(format="json", level="debug"), stream=buf)
    yield buf
    root.handlers[:] = before[0]
    root.setLevel(before[1])


@pytest.fixture(autouse=True)
def _no_model_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a real model: a key or base URL in the shell is ignored."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Start servers through this; they stop newest first when the test ends (see tests/servers.py)."""
    with Servers() as started:
        yield started


@pytest.fixture
def sim(servers: Servers, tmp_path: Path) -> SimHandle:
    """A running simulator (``test`` profile) in ``tmp_path/sim``.

    Gives ``.devvm_port``, ``.pve_port``, ``.control_url``, ``.config_path``,
    ``.config`` (the loaded Config), ``.vm`` (the SimVM), ``.inject(fault)``,
    ``.clear()`` and ``.state()``.
    """
    return servers.sim(tmp_path / "sim", "test")


@dataclass
class SimProcess:
    """A ``breakglass sim`` child process and the JSON line it printed."""

    proc: subprocess.Popen[str]
    info: dict[str, Any]
    state_dir: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_sim_process(state_dir: Path, profile: str = "test", timeout: float = 20.0) -> SimProcess:
    """Run ``breakglass sim`` as a child and read its one JSON line."""
    state_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = state_dir.parent / f"{state_dir.name}.stderr"
    with stderr_path.open("a") as stderr:
        argv = [sys.executable, "-m", "breakglass.cli", "sim", "--state-dir", str(state_dir)]
        proc = subprocess.Popen(
            [*argv, "--profile", profile],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert proc.stdout is not None
    # readline blocks until the simulator has bound its ports and written the config.
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout)
        raise AssertionError(
            f"breakglass sim exited with {proc.returncode} before printing its JSON line:\n"
            + stderr_path.read_text()
        )
    return SimProcess(proc=proc, info=json.loads(line), state_dir=state_dir)


@pytest.fixture
def launch_sim() -> Iterator[Callable[[Path], SimProcess]]:
    """Start ``breakglass sim --profile test`` processes; any left running are killed afterwards."""
    children: list[SimProcess] = []

    def launch(state_dir: Path) -> SimProcess:
        child = start_sim_process(state_dir)
        children.append(child)
        return child

    yield launch
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(10)
        if child.proc.stdout is not None:
            child.proc.stdout.close()


@pytest.fixture
def sim_process(launch_sim: Callable[[Path], SimProcess], tmp_path: Path) -> SimProcess:
    """The real ``breakglass sim --profile test`` CLI running as a subprocess."""
    return launch_sim(tmp_path / "simproc")
