"""`serve`, `check-config` and `demo` at start and exit: the same checks, one-line refusals, no leftovers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from breakglass.sim.runner import SimHandle
from breakglass.sim.statedir import free_port

CLI = [sys.executable, "-m", "breakglass.cli"]


def _run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False, **kw)  # type: ignore[call-overload]


def _variant(sim: SimHandle, tmp_path: Path, **web: object) -> Path:
    data = yaml.safe_load(sim.config_path.read_text())
    data.setdefault("web", {}).update(web)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_check_config_refuses_an_open_bind_without_auth_as_serve_does(sim: SimHandle, tmp_path: Path) -> None:
    config = _variant(sim, tmp_path, bind="0.0.0.0")
    checked = _run("check-config", str(config))
    assert checked.returncode == 2
    assert "web.auth.mode" in checked.stderr
    served = _run("serve", "-c", str(config))
    assert served.returncode == 2
    assert "web.auth.mode" in served.stderr


def test_check_config_reports_a_port_in_use(sim: SimHandle, tmp_path: Path, taken_port: int) -> None:
    checked = _run("check-config", str(_variant(sim, tmp_path, port=taken_port)))
    assert checked.returncode == 2
    assert f"127.0.0.1:{taken_port} is already in use" in checked.stderr


def test_check_config_reports_an_empty_login_token_file(sim: SimHandle, tmp_path: Path) -> None:
    empty = tmp_path / "login_token"
    empty.write_text("\n")
    config = _variant(sim, tmp_path, auth={"mode": "token", "token_file": str(empty)})
    checked = _run("check-config", str(config))
    assert checked.returncode == 2
    assert "web.auth.token_file" in checked.stderr


def test_serve_on_a_taken_port_exits_2_with_one_line(sim: SimHandle, tmp_path: Path, taken_port: int) -> None:
    served = _run("serve", "-c", str(_variant(sim, tmp_path, port=taken_port)))
    assert served.returncode == 2
    assert "Traceback" not in served.stderr
    lines = [line for line in served.stderr.splitlines() if line.startswith("breakglass:")]
    assert lines == [
        f"breakglass: web.port: 127.0.0.1:{taken_port} is already in use (another breakglass or "
        "another service); stop it or choose another web.port"
    ]


def test_the_demo_config_reaches_the_demo_and_its_temp_folder_is_gone_after_exit(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["url"] == f"http://127.0.0.1:{port}/"
        config = Path(info["config"])
        assert config.is_relative_to(tmp)
        assert yaml.safe_load(config.read_text())["web"]["port"] == port
        # `trigger -c <the demo's config>` reaches the demo it describes.
        triggered = _run("trigger", "-c", str(config), "--reason", "checking the demo")
        assert triggered.returncode == 0, triggered.stderr
        assert triggered.stdout.startswith("opened incident ")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert list(tmp.glob("breakglass-demo-*")) == []


def test_serve_prints_no_library_warning_at_import() -> None:
    """cryptography 51 warns about DSA when asyncssh imports it: not an operator's business.

    With warnings as errors the import fails outright, as the suite's collection did.
    """
    imports = "import breakglass.cli, breakglass.remote, breakglass.sim.server"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", imports],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
