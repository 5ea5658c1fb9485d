"""The SSH seam: verb allowlist, output cap, status parsing (real SSH tests live below)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from breakglass.config import SshEndpoint
from breakglass.remote import (
    POWER_VERBS,
    CommandResult,
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
    client = PveClient(endpoint_at(port, tmp_path), connect_timeout=1, command_timeout=1)
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
