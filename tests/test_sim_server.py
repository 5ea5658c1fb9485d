"""The simulator over real SSH: logins, refusals, hangs, pve verbs, control API and CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest
import yaml

from breakglass.config import SshEndpoint
from breakglass.sim import statedir
from breakglass.sim.runner import SimHandle, SimThread
from breakglass.sim.statedir import free_port

if TYPE_CHECKING:
    from conftest import SimProcess


async def connect(
    ep: SshEndpoint, *, login_within: float = 2.0, **overrides: Any
) -> asyncssh.SSHClientConnection:
    """Log in the way the watchdog does: pinned known_hosts, the generated key, nothing from ~."""
    options: dict[str, Any] = {
        "username": ep.user,
        "client_keys": [str(ep.key_file)],
        "known_hosts": str(ep.known_hosts),
        "config": None,
        "agent_path": None,
        "connect_timeout": login_within,
    }
    options.update(overrides)
    return await asyncssh.connect(ep.host, ep.port, **options)


async def run_one(ep: SshEndpoint, command: str, *, within: float = 5.0) -> asyncssh.SSHCompletedProcess:
    async with await connect(ep) as conn:
        return await conn.run(command, check=False, timeout=within)


def devvm(sim: SimHandle) -> SshEndpoint:
    return sim.config.targets[0].devvm


def pve(sim: SimHandle) -> SshEndpoint:
    return sim.config.targets[0].pve


def wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def poll(predicate: Callable[[], bool], *, within: float = 5.0, what: str = "condition") -> None:
    """Like wait_until, but lets the caller's own event loop keep running."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


def loop_task_count(sim: SimHandle) -> int:
    # Called through the loop, so the helper coroutine itself is one of the tasks.
    return sim.call(lambda: len(asyncio.all_tasks()))


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def breakglass(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "breakglass.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- devvm over SSH ------------------------------------------------------------------------


def test_the_devvm_answers_true_and_uptime_over_ssh(sim: SimHandle) -> None:
    async def main() -> tuple[asyncssh.SSHCompletedProcess, asyncssh.SSHCompletedProcess]:
        async with await connect(devvm(sim)) as conn:
            return await conn.run("true", check=False), await conn.run("uptime", check=False)

    true, uptime = asyncio.run(main())
    assert true.exit_status == 0
    assert uptime.exit_status == 0
    assert "load average" in str(uptime.stdout)


def test_an_unknown_command_exits_127_like_bash(sim: SimHandle) -> None:
    result = asyncio.run(run_one(devvm(sim), "frobnicate --now"))
    assert result.exit_status == 127
    assert "command not found" in str(result.stderr)


def test_a_shell_without_a_command_is_turned_away_with_exit_1(sim: SimHandle) -> None:
    async def main() -> asyncssh.SSHCompletedProcess:
        async with await connect(devvm(sim)) as conn:
            return await conn.run(check=False, timeout=5)

    result = asyncio.run(main())
    assert result.exit_status == 1
    assert "single commands only" in str(result.stderr)


def test_a_stopped_vm_refuses_the_connection_and_listens_again_on_the_same_port(sim: SimHandle) -> None:
    sim.inject("vm_stopped")
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(run_one(devvm(sim), "true"))

    sim.clear()
    assert asyncio.run(run_one(devvm(sim), "true")).exit_status == 0
    assert devvm(sim).port == sim.devvm_port


def test_an_io_stall_makes_login_hang_until_the_connect_timeout_without_leaking(sim: SimHandle) -> None:
    baseline = loop_task_count(sim)
    sim.inject("io_stall")
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(connect(devvm(sim), login_within=0.5))
    assert time.monotonic() - started >= 0.45
    # The held socket is let go once the client has gone.
    wait_until(lambda: loop_task_count(sim) == baseline, what="the held connection to be released")


def test_a_hung_command_ends_when_the_client_closes_the_connection(sim: SimHandle) -> None:
    baseline = loop_task_count(sim)

    async def main() -> None:
        async with await connect(devvm(sim)) as conn:
            sim.inject("io_stall")
            with pytest.raises(asyncssh.TimeoutError):
                await conn.run("uptime", check=False, timeout=0.3)

    asyncio.run(main())
    wait_until(lambda: loop_task_count(sim) == baseline, what="the hung command to be cancelled")
    assert "io_stall" in sim.state()["faults"]


def test_a_hung_command_ends_when_the_client_closes_only_its_channel(sim: SimHandle) -> None:
    async def main() -> None:
        async with await connect(devvm(sim)) as conn:
            idle = await asyncio.to_thread(loop_task_count, sim)
            sim.inject("io_stall")
            process = await conn.create_process("uptime")
            await poll(lambda: loop_task_count(sim) > idle, what="the command to start")
            process.close()
            await process.wait_closed()
            await poll(lambda: loop_task_count(sim) == idle, what="the hung command to be cancelled")
            assert process.exit_status is None

    asyncio.run(main())


def test_memory_pressure_delays_the_login_banner(sim: SimHandle) -> None:
    sim.inject("memory_hog")
    started = time.monotonic()
    result = asyncio.run(run_one(devvm(sim), "true"))
    assert result.exit_status == 0
    assert time.monotonic() - started >= sim.server.timing.slow_latency_seconds


def test_only_the_breakglass_user_with_the_generated_key_may_log_in(sim: SimHandle, tmp_path: Path) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(connect(devvm(sim), username="root"))
    other = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(connect(devvm(sim), client_keys=[other]))


def test_a_client_pinned_to_another_host_key_refuses_the_server(sim: SimHandle, tmp_path: Path) -> None:
    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    known = tmp_path / "wrong_known_hosts"
    known.write_text(f"[127.0.0.1]:{sim.devvm_port} {wrong}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(connect(devvm(sim), known_hosts=str(known)))


# --- Proxmox host over SSH -----------------------------------------------------------------


def test_pve_status_prints_json_of_a_running_vm(sim: SimHandle) -> None:
    result = asyncio.run(run_one(pve(sim), "status"))
    assert result.exit_status == 0
    status = json.loads(str(result.stdout))
    assert status["vmid"] == 102
    assert status["status"] == "running"


def test_pve_rejects_a_chained_command_and_changes_nothing(sim: SimHandle) -> None:
    result = asyncio.run(run_one(pve(sim), "status; reboot"))
    assert result.exit_status == 1
    assert "rejected" in str(result.stderr)
    state = sim.state()
    assert state["power_log"] == []
    assert state["vm"] == "running"


def test_cycle_over_ssh_clears_an_io_stall_and_is_in_the_power_log(sim: SimHandle) -> None:
    sim.inject("io_stall")
    result = asyncio.run(run_one(pve(sim), "cycle", within=10))
    assert result.exit_status == 0
    assert json.loads(str(result.stdout))["ok"] is True
    state = sim.state()
    assert [entry["verb"] for entry in state["power_log"]] == ["cycle"]
    assert "io_stall" not in state["faults"]

    # While it boots the devvm refuses; once booted it answers again.
    def logs_in() -> bool:
        try:
            return asyncio.run(run_one(devvm(sim), "true")).exit_status == 0
        except OSError:
            return False

    wait_until(logs_in, timeout=sim.server.timing.boot_seconds + 3, what="the devvm to boot")


def test_an_unreachable_proxmox_host_refuses_while_the_devvm_still_works(sim: SimHandle) -> None:
    sim.inject("pve_unreachable")
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(run_one(pve(sim), "status"))
    assert asyncio.run(run_one(devvm(sim), "true")).exit_status == 0


def test_a_network_partition_hangs_both_logins(sim: SimHandle) -> None:
    sim.inject("network_partition")
    for ep in (devvm(sim), pve(sim)):
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(connect(ep, login_within=0.3))


# --- control API ---------------------------------------------------------------------------


def test_the_control_api_injects_reports_and_clears_faults(sim: SimHandle) -> None:
    status, state = http("POST", sim.control_url + "/faults", json.dumps({"fault": "disk_full"}).encode())
    assert status == 200
    assert state["faults"] == ["disk_full"]
    assert http("GET", sim.control_url + "/state")[1]["faults"] == ["disk_full"]
    status, state = http("DELETE", sim.control_url + "/faults")
    assert status == 200
    assert state["faults"] == []


def test_the_control_api_answers_400_naming_an_unknown_fault(sim: SimHandle) -> None:
    status, body = http("POST", sim.control_url + "/faults", b'{"fault": "gremlins"}')
    assert status == 400
    assert "gremlins" in body["error"]
    assert sim.state()["faults"] == []


def test_the_control_api_answers_400_to_a_body_that_is_not_json(sim: SimHandle) -> None:
    status, body = http("POST", sim.control_url + "/faults", b"fault=io_stall")
    assert status == 400
    assert "not JSON" in body["error"]
    status, body = http("POST", sim.control_url + "/faults", b'["io_stall"]')
    assert status == 400
    assert '{"fault": NAME}' in body["error"]


def test_the_control_api_answers_404_and_405_for_wrong_paths_and_methods(sim: SimHandle) -> None:
    assert http("GET", sim.control_url + "/nope")[0] == 404
    assert http("PUT", sim.control_url + "/state", b"{}")[0] == 405


# --- state folder --------------------------------------------------------------------------


def test_the_generated_config_passes_check_config(sim: SimHandle) -> None:
    result = breakglass("check-config", str(sim.config_path))
    assert result.returncode == 0, result.stderr
    assert sim.config.sim_control_url == sim.control_url
    assert sim.config.probe.interval_seconds == 1.0
    assert sim.config.budget.max_actions == 3
    assert sim.config.demo is False
    assert (sim.state_dir / "client_ed25519").stat().st_mode & 0o777 == 0o600


def test_a_restart_on_the_same_state_dir_keeps_keys_and_ports(tmp_path: Path) -> None:
    with SimThread() as thread:
        first = thread.serve(tmp_path / "s", "demo")
        known_hosts = (tmp_path / "s" / "known_hosts").read_text()
        ports = (first.devvm_port, first.pve_port, first.control_url, first.config.web.port)
        assert first.config.demo is True
    with SimThread() as thread:
        second = thread.serve(tmp_path / "s", "demo")
        assert (second.devvm_port, second.pve_port, second.control_url, second.config.web.port) == ports
        assert (tmp_path / "s" / "known_hosts").read_text() == known_hosts


def test_a_taken_port_falls_back_to_a_new_one(tmp_path: Path) -> None:
    with SimThread() as thread:
        first = thread.serve(tmp_path / "s", "test")
        old_port = first.devvm_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        with SimThread() as thread:
            second = thread.serve(tmp_path / "s", "test")
            assert second.devvm_port != old_port
            assert asyncio.run(run_one(devvm(second), "true")).exit_status == 0


def test_one_loop_serves_several_simulated_vms(tmp_path: Path) -> None:
    with SimThread() as thread:
        sims = [
            thread.serve(tmp_path / f"vm{i}", "test", target_name=f"vm{i}", vmid=200 + i) for i in range(3)
        ]
        sims[1].inject("vm_stopped")

        async def main() -> list[str]:
            async def one(h: SimHandle) -> str:
                try:
                    return str((await run_one(devvm(h), "true")).exit_status)
                except ConnectionRefusedError:
                    return "refused"

            return list(await asyncio.gather(*(one(h) for h in sims)))

        assert asyncio.run(main()) == ["0", "refused", "0"]
        assert [h.config.targets[0].vmid for h in sims] == [200, 201, 202]


# --- the CLI as a process ------------------------------------------------------------------


def test_the_sim_cli_prints_one_json_line_and_exits_0_on_sigterm(sim_process: SimProcess) -> None:
    info = sim_process.info
    assert set(info) == {
        "devvm_port",
        "pve_port",
        "control_url",
        "web_port",
        "config",
        "client_key",
        "known_hosts",
        "webhook_token",
    }
    # The port `breakglass serve` will use with this config, printed for the two-terminal setup.
    assert yaml.safe_load(Path(info["config"]).read_text())["web"]["port"] == info["web_port"] > 0
    assert Path(info["config"]).is_file()
    assert Path(info["config"]).is_absolute()
    assert info["webhook_token"] == (sim_process.state_dir / "webhook_token").read_text().strip()
    assert breakglass("check-config", info["config"]).returncode == 0
    assert sim_process.stop(signal.SIGTERM) == 0
    assert sim_process.proc.stdout is not None
    assert sim_process.proc.stdout.read() == ""  # nothing after the one line


def test_sim_inject_and_clear_drive_a_running_simulator(sim_process: SimProcess) -> None:
    url = sim_process.info["control_url"]
    injected = breakglass("sim", "inject", "sshd_dead", "--control", url)
    assert injected.returncode == 0, injected.stderr
    assert json.loads(injected.stdout)["faults"] == ["sshd_dead"]

    unknown = breakglass("sim", "inject", "gremlins", "--control", url)
    assert unknown.returncode == 2
    assert "gremlins" in unknown.stderr

    cleared = breakglass("sim", "clear", "--control", url)
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout)["faults"] == []
    assert sim_process.stop(signal.SIGINT) == 0


def test_sim_inject_exits_1_without_a_traceback_when_nothing_listens(tmp_path: Path) -> None:
    port = free_port()
    result = breakglass("sim", "inject", "io_stall", "--control", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert "cannot reach the simulator" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_sim_cli_keeps_its_ports_across_a_restart(
    launch_sim: Callable[[Path], SimProcess], tmp_path: Path
) -> None:
    first = launch_sim(tmp_path / "d")
    assert first.stop() == 0
    second = launch_sim(tmp_path / "d")
    assert (second.info["devvm_port"], second.info["pve_port"]) == (
        first.info["devvm_port"],
        first.info["pve_port"],
    )
    assert second.stop() == 0


def _ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_a_picked_port_is_one_no_outgoing_connection_or_port_0_bind_can_take() -> None:
    # A web port is picked here and bound later by another process (serve). Ports from the
    # kernel's ephemeral range are what every outgoing connection's local end takes meanwhile:
    # a loaded machine's SSH probes took one and serve exited "port already in use".
    low, _high = _ephemeral_range()
    if low - statedir.PICK_LOW < 1000:
        pytest.skip(f"SKIPPED LOUDLY: the ephemeral range starts at {low}, leaving no room below it")
    picks = [free_port() for _ in range(50)]
    assert all(statedir.PICK_LOW <= p < low for p in picks), picks
    assert len(set(picks)) == len(picks)  # one process never hands out the same port twice in a row
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", picks[-1] + 1 if picks[-1] + 1 < low else statedir.PICK_LOW))
        listener.listen()
        taken = listener.getsockname()[1]
        assert all(free_port() != taken for _ in range(200))  # a port in use is skipped


def test_a_preferred_free_port_is_kept() -> None:
    port = free_port()
    assert free_port(preferred=port) == port
