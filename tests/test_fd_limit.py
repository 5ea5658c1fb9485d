"""The service keeps serving and probing with more than 1024 descriptors open (no select())."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
from harness import wait_for
from servers import Servers

from breakglass.service import make_server, raise_fd_limit
from breakglass.sim.runner import SimHandle
from breakglass.web.app import create_app

SELECT_LIMIT = 1024


@pytest.fixture
def many_fds() -> Iterator[list[int]]:
    """Raise the limit as serve does, then hold 1100 descriptors so every new one is above 1024."""
    limit = raise_fd_limit()
    assert limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert limit > SELECT_LIMIT + 1200, f"the hard limit here ({limit}) is too low for this test"
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def test_the_limit_in_force_is_logged_and_a_limit_too_low_for_the_fleet_is_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        limit = raise_fd_limit(targets=10)
    assert next(e for e in logs if e["event"] == "fd_limit")["open_files_limit"] == limit
    assert not [e for e in logs if e["event"] == "fd_limit_low"]
    # A child whose hard limit is 512 cannot hold 1000 targets' connections: it says so, and how to fix it.
    code = (
        "import json, structlog\n"
        "from breakglass.service import raise_fd_limit\n"
        "with structlog.testing.capture_logs() as logs:\n"
        "    raise_fd_limit(targets=1000)\n"
        "print(json.dumps(logs))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)),
    )
    low = [e for e in json.loads(out.stdout) if e["event"] == "fd_limit_low"]
    assert len(low) == 1, out.stdout
    assert (low[0]["open_files_limit"], low[0]["needed"]) == (512, 3256)
    assert "LimitNOFILE" in low[0]["fix"]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def test_serve_answers_and_probes_with_descriptors_above_1024(
    many_fds: list[int], sim: SimHandle, tmp_path: Path, servers: Servers
) -> None:
    cfg = sim.config.model_copy(update={"store_path": tmp_path / "fd.db"})
    running = servers.core(cfg)
    app = create_app(cfg, store=running.store, metrics=running.metrics, core=running.handle)
    server = servers.run_web(make_server(app, cfg.web.model_copy(update={"port": 0})))
    assert server.socket.fileno() > SELECT_LIMIT
    base = f"http://127.0.0.1:{server.effective_port}"
    # Probe rounds over SSH sockets numbered above 1024 keep arriving.
    first = wait_for(lambda: running.core.feed.latest("devvm"), within=15, what="a probe round")
    later = wait_for(
        lambda: (r := running.core.feed.latest("devvm")) is not None and r.at > first.at and r,
        within=15,
        what="a second probe round",
    )
    assert later.ssh_ok
    assert later.pve_ok
    for path in ("/healthz", "/metrics", "/api/v1/status", "/"):
        status, _body = get(base + path)
        assert status == 200, path
    assert b"breakglass_probe_success" in get(base + "/metrics")[1]
