"""The SSH seam: verb allowlist, output cap, status parsing (real SSH tests live below)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from typing import ClassVar

import asyncssh
import asyncssh.logging
import asyncssh.packet
import pytest

from breakglass import remote
from breakglass.config import SshEndpoint
from breakglass.remote import (
    POWER_VERBS,
    CommandResult,
    DevvmShell,
    HostKeyError,
    PveClient,
    RemoteError,
    Verb,
    cap_output,
    parse_status,
    truncation_marker,
)

STATUS_JSON = {
    "vmid": 102,
    "status": "running",
    "uptime_seconds": 1234.5,
    "pid": 4242,
    "qmp": {"ok": True, "status": "running", "error": None},
    "guest_agent": {"ok": True, "error": None},
    "captured_at": "2026-11-28T15:20:00Z",
}


@pytest.fixture
def silent_listener():
    """A TCP port that listens but never accepts: any connect attempt would queue here."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def endpoint_at(port: int, tmp_path) -> SshEndpoint:
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("not a key\n")
    known.write_text("")
    return SshEndpoint(host="127.0.0.1", port=port, user="root", key_file=key, known_hosts=known)


def assert_nothing_connected(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


BAD_VERBS = [
    "status",  # the right text, but not a Verb: free strings never pass
    "status; reboot",
    "$(id)",
    "status\n",
    "cycle 103",
    "",
    "stätus",
    "重启",
    None,
    42,
]


@pytest.mark.parametrize("bad", BAD_VERBS)
def test_pve_client_refuses_anything_but_a_verb_before_connecting(bad, silent_listener, tmp_path):
    port = silent_listener.getsockname()[1]
    client = PveClient(endpoint_at(port, tmp_path), connect_timeout=1, status_timeout=1)
    with pytest.raises(ValueError, match="not a Proxmox verb"):
        asyncio.run(client.run(bad))
    assert_nothing_connected(silent_listener)


def test_the_verbs_are_exactly_the_six_the_forced_command_accepts():
    assert [v.value for v in Verb] == ["status", "forensics", "reset", "stop", "start", "cycle"]
    assert {v.value for v in POWER_VERBS} == {"reset", "stop", "start", "cycle"}
    assert Verb("cycle") is Verb.CYCLE
    with pytest.raises(ValueError, match="is not a valid Verb"):
        Verb("cycle 103")


def test_output_under_the_cap_is_kept_whole():
    assert cap_output(b"hello\n", 1024) == ("hello\n", False)


def test_output_over_the_cap_is_cut_with_a_visible_marker():
    text, truncated = cap_output(b"x" * 5000, 1024)
    assert truncated
    assert text == "x" * 1024 + "\n[... output truncated: 3976 bytes dropped ...]"
    assert text.endswith(truncation_marker(3976))


def test_a_multibyte_character_cut_at_the_cap_does_not_break_decoding():
    text, truncated = cap_output("é".encode() * 600, 1025)
    assert truncated
    assert text.startswith("é" * 512 + "\ufffd")


def test_a_result_is_ok_only_when_it_finished_with_status_zero():
    def result(status, timed_out=False):
        return CommandResult("true", status, "", "", 0.1, timed_out=timed_out)

    assert result(0).ok
    assert not result(1).ok
    assert not result(None, timed_out=True).ok


def test_it_parses_the_status_json():
    st = parse_status(json.dumps(STATUS_JSON))
    assert (st.vm_status, st.qmp_ok, st.qmp_status, st.guest_agent_ok) == (
        "running",
        True,
        "running",
        True,
    )
    assert st.uptime_seconds == 1234.5
    assert st.raw["pid"] == 4242


def test_it_parses_a_stopped_vm_with_qmp_errors():
    data = {
        **STATUS_JSON,
        "status": "stopped",
        "uptime_seconds": None,
        "pid": None,
        "qmp": {"ok": False, "status": None, "error": "VM 102 not running"},
        "guest_agent": {"ok": False, "error": "VM 102 not running"},
    }
    st = parse_status(json.dumps(data))
    assert (st.vm_status, st.qmp_ok, st.qmp_status, st.guest_agent_ok, st.uptime_seconds) == (
        "stopped",
        False,
        None,
        False,
        None,
    )


def test_an_unexpected_vm_status_reads_as_unknown():
    assert parse_status(json.dumps({**STATUS_JSON, "status": "prelaunch"})).vm_status == "unknown"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({k: v for k, v in STATUS_JSON.items() if k != "status"}), "'status'"),
        (json.dumps({**STATUS_JSON, "qmp": None}), "'qmp.ok'"),
        (json.dumps({**STATUS_JSON, "guest_agent": {"ok": "yes"}}), "'guest_agent.ok'"),
    ],
)
def test_bad_status_output_raises_naming_what_is_missing(text, names):
    with pytest.raises(RemoteError, match=names) as info:
        parse_status(text)
    assert info.value.kind == "bad_output"
    assert not info.value.permanent


# ---- over real SSH, against the simulator -------------------------------------------------

MARGIN = 0.5  # scheduling slack on a loaded 2-core machine


def wait_until(predicate, *, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def shell(ep: SshEndpoint, **kw) -> DevvmShell:
    opts = {"connect_timeout": 1.0, "command_timeout": 2.0, **kw}
    return DevvmShell(ep, **opts)


def pve_client(ep: SshEndpoint, **kw) -> PveClient:
    opts = {"connect_timeout": 1.0, "status_timeout": 2.0, **kw}
    return PveClient(ep, **opts)


def open_devvm_connections(sim) -> int:
    # The simulated sshd's own list of live connections: the ground truth for "closed".
    return sim.call(lambda: len(sim.server._devvm._conns))


def with_known_hosts(ep: SshEndpoint, path) -> SshEndpoint:
    return ep.model_copy(update={"known_hosts": path})


def pin_another_key(ep: SshEndpoint, tmp_path, alg: str = "ssh-ed25519") -> SshEndpoint:
    """A known_hosts that pins a different key for the same host and port."""
    other = asyncssh.generate_private_key(alg).export_public_key().decode().strip()
    path = tmp_path / "known_hosts.changed"
    path.write_text(f"[{ep.host}]:{ep.port} {other}\n")
    return with_known_hosts(ep, path)


def test_it_runs_a_command_on_the_guest_and_returns_its_output(sim):
    result = asyncio.run(shell(sim.config.targets[0].devvm).run("nproc"))
    assert result.ok
    assert result.stdout.strip().isdigit()
    assert not result.truncated
    assert result.duration_seconds < 2


def test_it_reports_a_failing_command_by_its_exit_status(sim):
    result = asyncio.run(shell(sim.config.targets[0].devvm).run("no-such-tool --now"))
    assert result.exit_status == 127
    assert "command not found" in result.stderr
    assert not result.ok


def test_login_measures_connect_authenticate_and_true(sim):
    seconds = asyncio.run(shell(sim.config.targets[0].devvm).login())
    assert 0 < seconds < 1.0


# A pinned key of another algorithm than the host's fails in the key check too, never in the
# key exchange (where the server's disconnect can race the client and read as a lost connection).
@pytest.mark.parametrize("alg", ["ssh-ed25519", "ecdsa-sha2-nistp256"])
def test_it_refuses_a_changed_host_key(alg, sim, tmp_path):
    ep = pin_another_key(sim.config.targets[0].devvm, tmp_path, alg)
    with pytest.raises(HostKeyError, match="not the pinned key") as info:
        asyncio.run(shell(ep).run("true"))
    assert "Host key is not trusted" in str(info.value)
    assert info.value.permanent
    assert info.value.kind == "host_key"
    assert f"port {ep.port}" in str(info.value)
    assert "changed" in info.value.short


def test_it_refuses_an_unknown_host_key(sim, tmp_path):
    empty = tmp_path / "known_hosts.empty"
    empty.write_text("")
    ep = with_known_hosts(sim.config.targets[0].devvm, empty)
    with pytest.raises(HostKeyError, match="unknown: no key pinned"):
        asyncio.run(shell(ep).run("true"))


def test_the_pve_client_sends_nothing_to_a_host_with_a_changed_key(sim, tmp_path):
    ep = pin_another_key(sim.config.targets[0].pve, tmp_path)
    with pytest.raises(HostKeyError):
        asyncio.run(pve_client(ep).run(Verb.STATUS))
    assert sim.state()["verb_counts"].get("status", 0) == 0


def test_a_stopped_vm_refuses_the_connection_as_a_transient_error(sim):
    sim.inject("vm_stopped")
    with pytest.raises(RemoteError) as info:
        asyncio.run(shell(sim.config.targets[0].devvm).run("true"))
    assert info.value.kind == "refused"
    assert not info.value.permanent
    assert info.value.short == "refused"


def test_a_login_that_never_gets_a_banner_times_out_at_the_connect_timeout(sim):
    sim.inject("io_stall")
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        asyncio.run(shell(sim.config.targets[0].devvm, connect_timeout=0.5).run("true"))
    elapsed = time.monotonic() - started
    assert info.value.kind == "timeout"
    assert 0.45 <= elapsed < 0.5 + MARGIN


def test_a_hung_command_times_out_and_its_connection_is_closed(sim):
    ep = sim.config.targets[0].devvm

    async def main() -> tuple[CommandResult, float]:
        async with shell(ep).session() as s:
            assert (await s.run("true")).ok
            assert open_devvm_connections(sim) == 1
            sim.inject("io_stall")  # the guest wedges with our session open
            started = time.monotonic()
            hung = await s.run("uptime", timeout=0.3)
            elapsed = time.monotonic() - started
            with pytest.raises(RemoteError, match="session closed"):
                await s.run("uptime")
        return hung, elapsed

    hung, elapsed = asyncio.run(main())
    assert hung.timed_out
    assert hung.exit_status is None
    assert not hung.ok
    assert 0.3 <= elapsed < 0.3 + MARGIN
    wait_until(lambda: open_devvm_connections(sim) == 0, what="the sshd to see the connection go")


def test_a_one_shot_run_closes_its_connection(sim):
    result = asyncio.run(shell(sim.config.targets[0].devvm).run("uptime"))
    assert result.ok
    wait_until(lambda: open_devvm_connections(sim) == 0, what="the connection to close")


def test_big_output_is_capped_with_a_visible_marker(sim):
    # `ps aux` on the simulated guest prints several KiB.
    result = asyncio.run(shell(sim.config.targets[0].devvm, output_cap=1024).run("sudo ps aux"))
    assert result.ok
    assert result.truncated
    assert result.stdout.startswith("USER ")
    kept, marker = result.stdout.rsplit("\n[... output truncated: ", 1)
    assert len(kept.encode()) == 1024
    assert re.fullmatch(r"\d+ bytes dropped \.\.\.\]", marker)
    assert int(marker.split()[0]) > 0


def test_the_pve_client_reads_the_status_of_a_running_vm(sim):
    st = asyncio.run(pve_client(sim.config.targets[0].pve).status())
    assert (st.vm_status, st.qmp_ok, st.qmp_status, st.guest_agent_ok) == (
        "running",
        True,
        "running",
        True,
    )
    assert st.raw["vmid"] == sim.config.targets[0].vmid
    assert sim.state()["verb_counts"]["status"] == 1


def test_the_pve_client_reads_a_stopped_vm(sim):
    sim.inject("vm_stopped")
    st = asyncio.run(pve_client(sim.config.targets[0].pve).status())
    assert (st.vm_status, st.qmp_ok, st.guest_agent_ok) == ("stopped", False, False)


def test_the_pve_client_fetches_forensics(sim):
    data = asyncio.run(pve_client(sim.config.targets[0].pve).forensics())
    assert data["status"] == "running"
    assert {"config", "blockstats", "qmp_raw"} <= data.keys()


def test_a_power_verb_reaches_the_host_and_is_logged_there(sim):
    result = asyncio.run(pve_client(sim.config.targets[0].pve).run(Verb.RESET))
    assert result.ok
    assert json.loads(result.stdout)["verb"] == "reset"
    assert [e["verb"] for e in sim.state()["power_log"]] == ["reset"]


@pytest.mark.parametrize("bad", BAD_VERBS)
def test_no_bad_verb_ever_reaches_the_simulated_host(bad, sim):
    client = pve_client(sim.config.targets[0].pve)
    with pytest.raises(ValueError, match="not a Proxmox verb"):
        asyncio.run(client.run(bad))
    state = sim.state()
    assert state["verb_counts"] == {}
    assert state["power_log"] == []


def test_an_unreachable_host_is_a_transient_remote_error_not_a_hang(sim):
    sim.inject("pve_unreachable")
    with pytest.raises(RemoteError) as info:
        asyncio.run(pve_client(sim.config.targets[0].pve).status())
    assert info.value.kind == "refused"


# Connect options are built once per endpoint and set of parsed credentials, not per login.


def test_logins_to_one_endpoint_build_its_connect_options_once(sim, monkeypatch):
    built: list[object] = []

    class Counted(asyncssh.SSHClientConnectionOptions):
        def prepare(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            built.append(self)
            return super().prepare(*args, **kwargs)

    monkeypatch.setattr(asyncssh, "SSHClientConnectionOptions", Counted)
    ep = sim.config.targets[0].devvm
    for _ in range(3):
        assert asyncio.run(shell(ep, connect_timeout=1.5).run("true")).ok
    assert len(built) == 1


def test_logins_to_one_endpoint_at_once_each_get_their_own_options(sim):
    # asyncssh keeps a connection's login waiter on its options: shared, one login would wait forever.
    ep = sim.config.targets[0].devvm

    async def main() -> list[float]:
        return await asyncio.gather(*(shell(ep, connect_timeout=1.7).login() for _ in range(4)))

    assert all(0 < s < 1.7 for s in asyncio.run(main()))


def test_a_known_hosts_file_rewritten_in_place_is_read_again(sim, tmp_path, monkeypatch):
    # The files are looked at once a second; here on every use, so no test has to wait.
    monkeypatch.setattr(remote, "STAMP_MAX_AGE_SECONDS", 0.0)
    real = sim.config.targets[0].devvm
    known = tmp_path / "known_hosts.live"
    known.write_text(real.known_hosts.read_text())
    ep = with_known_hosts(real, known)
    pinned_elsewhere = pin_another_key(real, tmp_path).known_hosts.read_text()
    assert asyncio.run(shell(ep).run("true")).ok
    known.write_text(pinned_elsewhere)
    with pytest.raises(HostKeyError, match="not the pinned key"):
        asyncio.run(shell(ep).run("true"))
    known.write_text(real.known_hosts.read_text())
    assert asyncio.run(shell(ep).run("true")).ok


def test_a_client_key_file_replaced_in_place_is_read_again(sim, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "STAMP_MAX_AGE_SECONDS", 0.0)
    real = sim.config.targets[0].devvm
    key = tmp_path / "id_live"
    key.write_bytes(real.key_file.read_bytes())
    key.chmod(0o600)
    ep = real.model_copy(update={"key_file": key})
    assert asyncio.run(shell(ep).run("true")).ok
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    with pytest.raises(RemoteError) as info:
        asyncio.run(shell(ep).run("true"))
    assert info.value.kind == "auth"
    key.write_bytes(real.key_file.read_bytes())
    assert asyncio.run(shell(ep).run("true")).ok


def test_a_login_is_one_signed_request_and_a_refused_key_is_still_refused(sim, tmp_path, monkeypatch):
    # asyncssh first sent "none" and then an unsigned "would this key do?": three requests
    # and two more round trips on every login, and a probe round logs in once per target.
    sent: list[tuple[bytes, bool]] = []
    real_send = asyncssh.connection.SSHClientConnection.send_userauth_request

    async def send(self, method, *args, key=None, trivial=True):
        sent.append((method, key is not None))
        await real_send(self, method, *args, key=key, trivial=trivial)

    monkeypatch.setattr(asyncssh.connection.SSHClientConnection, "send_userauth_request", send)
    real = sim.config.targets[0].devvm
    assert asyncio.run(shell(real).run("true")).ok
    assert sent == [(b"publickey", True)]

    sent.clear()
    other = tmp_path / "id_other"
    other.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    other.chmod(0o600)
    with pytest.raises(RemoteError) as info:
        asyncio.run(shell(real.model_copy(update={"key_file": other})).run("true"))
    assert info.value.kind == "auth"
    assert sent == [(b"publickey", True)]


# asyncssh's log lines: formatted only when a logger wants them, written as before when it does.


class _Noted:
    """An argument that notes when it is turned into text."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def __str__(self) -> str:
        self.seen.append("str")
        return "noted"


class _Payload(bytes):
    """A packet that notes when its size is taken (the packet summary's first step)."""

    seen: ClassVar[list[str]] = []

    def __len__(self) -> int:
        self.seen.append("len")
        return super().__len__()


class _Handler(asyncssh.packet.SSHPacketLogger):
    _handler_names: ClassVar[dict[int, str]] = {20: "MSG_KEXINIT"}

    @property
    def logger(self) -> asyncssh.logging.SSHLogger:
        return asyncssh.logging.logger


@pytest.fixture
def asyncssh_level(monkeypatch):
    """Set the asyncssh logger's level (and asyncssh's debug level) for one test."""
    pkg = logging.getLogger("asyncssh")
    before = pkg.level

    def set_level(level: int, debug_level: int = 1) -> None:
        pkg.setLevel(level)
        monkeypatch.setattr(asyncssh.logging.SSHLogger, "_debug_level", debug_level)

    yield set_level
    pkg.setLevel(before)


def test_an_asyncssh_line_below_the_level_is_not_formatted(asyncssh_level):
    asyncssh_level(logging.WARNING, debug_level=3)
    seen: list[str] = []
    asyncssh.logging.logger.info("opening %s", [_Noted(seen)])
    _Payload.seen = seen
    _Handler().log_sent_packet(20, None, _Payload(b"abc"))
    assert seen == []


def test_a_packet_is_not_summarised_below_debug_level_three(asyncssh_level):
    asyncssh_level(logging.DEBUG, debug_level=2)
    seen: list[str] = []
    _Payload.seen = seen
    _Handler().log_sent_packet(20, None, _Payload(b"abc"))
    assert seen == []


def test_wanted_asyncssh_lines_are_written_as_before(sim, asyncssh_level, caplog):
    asyncssh_level(logging.DEBUG, debug_level=3)
    ep = sim.config.targets[0].devvm
    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        assert asyncio.run(shell(ep).run("true")).ok
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"Opening SSH connection to {ep.host}, port {ep.port}" in text
    assert re.search(r"Sent MSG_KEXINIT \(20\), \d+ bytes", text)
    assert re.search(r"Received MSG_USERAUTH_SUCCESS \(52\), 1 byte", text)


def test_a_connection_lost_mid_command_ends_the_command_at_once_not_at_its_timeout(sim):
    ep = sim.config.targets[0].devvm

    async def main() -> tuple[CommandResult, float]:
        async with shell(ep).session() as s:
            assert (await s.run("true")).ok
            sim.inject("io_stall")  # the next command hangs on the open connection
            running = asyncio.create_task(s.run("uptime", timeout=5.0))
            await asyncio.sleep(0.2)
            assert not running.done()
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: sim._thread.run(sim.server._devvm.close_connections())
            )
            return await running, time.monotonic() - started

    result, elapsed = asyncio.run(main())
    # The host hung up: no exit status, as ssh(1) says it (255), and not a timeout.
    assert (result.exit_status, result.timed_out, result.stdout) == (255, False, "")
    assert elapsed < 1.0


def test_a_command_runs_without_reader_tasks(sim):
    # Output goes straight from the channel into the capped buffers: no task per stream
    # (asyncssh's own channel reader is the only one).
    ep = sim.config.targets[0].devvm

    async def main() -> list[str]:
        ours: list[str] = []
        loop = asyncio.get_running_loop()

        def counting(loop: asyncio.AbstractEventLoop, coro, **kw):  # type: ignore[no-untyped-def]
            if "asyncssh" not in coro.cr_code.co_filename:
                ours.append(coro.__qualname__)
            return asyncio.Task(coro, loop=loop, **kw)

        async with shell(ep).session() as s:
            assert (await s.run("true")).ok
            loop.set_task_factory(counting)
            result = await s.run("cat /proc/loadavg && no-such-tool")
            loop.set_task_factory(None)
        assert result.exit_status == 127
        assert result.stdout.count(" ") >= 4
        assert "command not found" in result.stderr
        return ours

    assert asyncio.run(main()) == []
