"""The service keeps serving and probing with more than 1024 descriptors open (no select())."""

from __future__ import annotations

import os
import resource
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
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
