"""``breakglass trigger`` against a running ``breakglass serve``, and serve's refusal of open binds."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import wait_for
from serve_support import CLI
from serve_support import get_json as _get
from web_support import web_config

from breakglass.config import Config
from breakglass.sim.runner import SimHandle
from breakglass.sim.statedir import free_port
from breakglass.web.client import api_base, trigger_command


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def served(sim: SimHandle, tmp_path: Path) -> Iterator[SimHandle]:
    """``breakglass serve`` on the simulator's config, ready to answer."""
    log = (tmp_path / "serve.log").open("ab")
    proc = subprocess.Popen(
        [*CLI, "serve", "-c", str(sim.config_path)], stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        base = api_base(sim.config)
        wait_for(
            lambda: _get(f"{base}/readyz") or proc.poll() is not None, within=30, what="serve to be ready"
        )
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        yield sim
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_trigger_opens_an_incident_then_attaches_to_it(served: SimHandle) -> None:
    cfg = served.config
    first = _run("trigger", "-c", str(served.config_path), "--reason", "the build hangs")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("opened incident ")
    incident_id = int(first.stdout.split()[2])
    second = _run("trigger", "-c", str(served.config_path), "--reason", "still hangs")
    assert second.returncode == 0, second.stderr
    # The first incident may already be over on a healthy VM; then the second opens a new one.
    assert second.stdout.startswith(("attached to incident", "opened incident"))
    inc = _get(f"{api_base(cfg)}/api/v1/incidents/{incident_id}")
    assert inc["trigger"] == "cli"
    assert inc["reason"] == "the build hangs"
    assert inc["who"].startswith("api")


def test_trigger_can_authorize_a_power_verb_and_says_who(served: SimHandle) -> None:
    r = _run("trigger", "-c", str(served.config_path), "--reason", "frozen desktop", "--authorize-power")
    assert r.returncode == 0, r.stderr
    inc = _get(f"{api_base(served.config)}/api/v1/incidents/{int(r.stdout.split()[2])}")
    assert inc["evidence"]["power_authorized_by"].startswith("api")


def test_trigger_with_an_unknown_target_exits_2(served: SimHandle) -> None:
    r = _run("trigger", "-c", str(served.config_path), "--target", "ghost", "--reason", "x")
    assert r.returncode == 2
    assert "ghost" in r.stderr


def test_trigger_exits_1_when_the_service_is_unreachable(tmp_path: Path) -> None:
    token = tmp_path / "api_token"
    token.write_text("t\n")
    cfg = web_config(tmp_path, ("devvm",))
    web = cfg.web.model_copy(update={"port": free_port(), "api_token_file": token})
    assert trigger_command(cfg.model_copy(update={"web": web}), target=None, reason="x") == 1


def test_trigger_needs_a_target_when_several_are_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trigger_command(web_config(tmp_path), target=None, reason="x") == 2
    assert "--target" in capsys.readouterr().err


def test_trigger_without_an_api_token_says_what_to_configure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg: Config = web_config(tmp_path, ("devvm",))
    assert trigger_command(cfg, target=None, reason="x") == 2
    assert "web.api_token_file" in capsys.readouterr().err


def test_serve_refuses_to_bind_all_addresses_without_auth(sim: SimHandle, tmp_path: Path) -> None:
    data = yaml.safe_load(sim.config_path.read_text())
    data.setdefault("web", {})["bind"] = "0.0.0.0"
    config = tmp_path / "open.yaml"
    config.write_text(yaml.safe_dump(data))
    r = _run("serve", "-c", str(config))
    assert r.returncode == 2
    assert "web.auth.mode" in r.stderr
    assert "127.0.0.1" in r.stderr
