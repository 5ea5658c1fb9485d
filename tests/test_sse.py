"""Server-Sent Events through a real waitress server, read with http.client."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import TriggerCore, make_app
from harness import wait_for
from servers import Servers
from web_support import web_config

from breakglass.store import Store


class Stream:
    """An open SSE response, read frame by frame with a deadline."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()

    def frame(self) -> list[str]:
        """The lines of the next frame (up to its blank line); [] when the stream ended."""
        lines: list[str] = []
        while True:
            raw = self.resp.readline()
            if not raw:
                return lines
            line = raw.decode().rstrip("\n")
            if not line:
                if lines:
                    return lines
                continue
            lines.append(line)

    def next_event(self, deadline: float = 5.0) -> tuple[str, str, dict[str, Any]]:
        """The next named event as (name, id, data), skipping comments and retry frames."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            lines = self.frame()
            assert lines, "the stream ended before the next event"
            fields = dict(line.split(": ", 1) for line in lines if not line.startswith(":") and ": " in line)
            if "event" in fields:
                return fields["event"], fields.get("id", ""), json.loads(fields["data"])
        raise AssertionError("no event before the deadline")

    def close(self) -> None:
        """Hang up."""
        self.conn.close()


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path, servers: Servers) -> Iterator[tuple[int, Store]]:
    """A real server on an ephemeral port with a short keepalive interval.

    By default breakglass's server (what ``serve`` runs): streams on its loop, woken by
    the store's commits. With ``@pytest.mark.parametrize("served", ["waitress"], indirect=True)``
    any other WSGI server, where the view polls the store itself.
    """
    store = Store(tmp_path / "breakglass.db")
    core = TriggerCore(web_config(tmp_path), store)
    app = make_app(core.cfg, store, core)
    app.config.update(SSE_KEEPALIVE_SECONDS=0.2, SSE_POLL_SECONDS=0.05)
    if getattr(request, "param", "breakglass") == "waitress":
        port = servers.waitress(app, threads=6).port
    else:
        port = servers.web(app, threads=4, store=store).effective_port
    yield port, store
    servers.close()
    store.close()


# Under waitress a stream holds a worker thread until it ends; this one ends by itself.
@pytest.mark.parametrize("served", ["breakglass", "waitress"], indirect=True)
def test_new_steps_and_transitions_arrive_and_the_stream_ends_when_the_incident_closes(
    served: tuple[int, Store],
) -> None:
    port, store = served
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    store.add_step(incident_id, "note", {"text": "already on the page"})
    stream = Stream(port, f"/incidents/{incident_id}/events")
    assert stream.resp.status == 200
    assert stream.resp.getheader("Content-Type", "").startswith("text/event-stream")
    assert stream.frame() == ["retry: 3000"]
    store.add_step(incident_id, "agent_text", {"text": "<b>looking</b>"})
    name, _, data = stream.next_event()
    assert name == "step"
    assert "&lt;b&gt;looking&lt;/b&gt;" in data["html"]
    store.transition(incident_id, "resolved", "probes green")
    name, _, data = stream.next_event()
    assert (name, data["to_state"]) == ("transition", "resolved")
    name, _, data = stream.next_event()
    assert (name, data["state"]) == ("closed", "resolved")
    # What the page puts in its header in place of "still open", without a reload.
    assert data["closed_text"].endswith(" UTC")
    assert data["duration"].endswith(" s")
    assert stream.frame() == []  # the server ended the stream
    stream.close()


def test_a_quiet_stream_sends_keepalive_comments(served: tuple[int, Store]) -> None:
    port, store = served
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    stream = Stream(port, f"/incidents/{incident_id}/events")
    stream.frame()
    assert stream.frame() == [": keepalive"]
    stream.close()


def test_a_reconnect_with_last_event_id_resumes_after_what_was_seen(served: tuple[int, Store]) -> None:
    port, store = served
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    first = store.add_step(incident_id, "note", {"text": "one"})
    store.add_step(incident_id, "note", {"text": "two"})
    stream = Stream(port, f"/incidents/{incident_id}/events", {"Last-Event-ID": f"{first}.1"})
    name, _, data = stream.next_event()
    assert name == "step"
    assert "two" in data["html"]
    store.transition(incident_id, "escalated", "budget spent")
    assert stream.next_event()[0] == "transition"
    stream.close()


def test_the_index_stream_reports_an_incident_opening(served: tuple[int, Store]) -> None:
    port, store = served
    stream = Stream(port, "/events")
    name, _, first = stream.next_event()
    assert name == "status"
    assert first["devvm"]["incident"] is None
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    name, _, data = stream.next_event()
    assert data["devvm"]["incident"] == incident_id
    stream.close()


def test_an_unknown_incident_has_no_stream(served: tuple[int, Store]) -> None:
    port, _ = served
    stream = Stream(port, "/incidents/404/events")
    assert stream.resp.status == 404
    stream.close()


def test_many_open_pages_hold_no_worker_thread_and_every_endpoint_still_answers(
    served: tuple[int, Store],
) -> None:
    port, store = served  # breakglass's server with 4 worker threads
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    streams = [Stream(port, f"/incidents/{incident_id}/events") for _ in range(32)]
    streams += [Stream(port, "/events") for _ in range(32)]
    try:
        for s in streams:
            assert s.frame() == ["retry: 3000"]
        for path in ("/healthz", "/metrics", "/api/v1/status", "/incidents", f"/incidents/{incident_id}"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            assert conn.getresponse().status == 200, path
            conn.close()
        # Every one of the 32 incident pages still gets the next step.
        store.add_step(incident_id, "note", {"text": "seen by all"})
        for s in streams[:32]:
            name, _, data = s.next_event()
            assert name == "step"
            assert "seen by all" in data["html"]
    finally:
        for s in streams:
            s.close()


@pytest.mark.parametrize("served", ["breakglass", "waitress"], indirect=True)
def test_what_happens_inside_a_tool_call_streams_under_that_call_refresh_after_refresh(
    served: tuple[int, Store],
) -> None:
    port, store = served
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    store.add_step(incident_id, "usage", {"input_tokens": 1, "output_tokens": 1})
    stream = Stream(port, f"/incidents/{incident_id}/events")
    assert stream.frame() == ["retry: 3000"]
    call = store.add_step(incident_id, "tool_call", {"id": "t1", "name": "pve", "input": {"verb": "reset"}})
    assert stream.next_event()[2]["parent"] == 0
    # Each later step is its own refresh: only the new steps are read, the call is remembered.
    store.add_step(incident_id, "policy", {"verb": "reset", "allowed": False, "reason": "SSH answers"})
    assert stream.next_event()[2]["parent"] == call
    store.add_step(
        incident_id, "tool_result", {"id": "t1", "name": "pve", "status": "denied", "output": "no"}
    )
    assert stream.next_event()[2]["parent"] == call
    store.add_step(incident_id, "agent_text", {"text": "Then I escalate."})
    assert stream.next_event()[2]["parent"] == 0
    stream.close()


def test_a_refresh_reads_only_the_steps_after_the_streams_cursor(tmp_path: Path) -> None:
    from breakglass.web.sse import load_incident

    store = Store(tmp_path / "breakglass.db")
    core = TriggerCore(web_config(tmp_path), store)
    app = make_app(core.cfg, store, core)
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    call = store.add_step(
        incident_id, "tool_call", {"id": "t1", "name": "devvm_shell", "input": {"command": "df"}}
    )
    seen = store.add_step(incident_id, "note", {"text": "inside the call"})
    try:
        with app.app_context():
            rendered: dict[Any, Any] = {}
            first = load_incident(incident_id, rendered, after=-1)
            assert first is not None
            assert [s["parent"] for s in first["steps"]] == [0, call]
            done = {"id": "t1", "name": "devvm_shell", "status": "ok", "output": "ok"}
            result = store.add_step(incident_id, "tool_result", done)
            again = load_incident(incident_id, rendered, after=seen)
            assert again is not None
            assert [(s["id"], s["parent"]) for s in again["steps"]] == [(result, call)]
            # A stream further behind (a reconnect) still gets every step it has not seen.
            behind = load_incident(incident_id, rendered, after=call)
            assert behind is not None
            assert [s["id"] for s in behind["steps"]] == [seen, result]
    finally:
        store.close()


def test_a_burst_of_commits_wakes_the_live_loop_once(tmp_path: Path, servers: Servers) -> None:
    import threading

    store = Store(tmp_path / "breakglass.db")
    core = TriggerCore(web_config(tmp_path), store)
    server = servers.web(make_app(core.cfg, store, core), store=store)
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    stream = Stream(server.effective_port, f"/incidents/{incident_id}/events")
    try:
        assert stream.frame() == ["retry: 3000"]
        hub, loop = server.hub, server._loop
        assert loop is not None
        wakes: list[float] = []
        soon = hub._soon
        hub._soon = lambda: (wakes.append(time.monotonic()), soon())[-1]  # type: ignore[method-assign]
        # Quiet first: the incident's own commit has been refreshed, no wake-up is pending.
        quiet = lambda: hub._timer is None and not getattr(hub, "_wake_pending", False)  # noqa: E731
        wait_for(quiet, within=5, what="a quiet hub")
        # Hold the loop while 100 commits land, so none of their wake-ups can run in between.
        entered, release = threading.Event(), threading.Event()
        loop.call_soon_threadsafe(lambda: (entered.set(), release.wait(10)))
        assert entered.wait(5)
        last = 0
        for n in range(100):
            last = store.add_step(incident_id, "note", {"text": f"step {n}"})
        release.set()
        got: list[int] = []
        while last not in got:
            data = stream.next_event()[2]
            got.append(data["id"])
        assert len(got) == 100
        assert len(wakes) == 1, f"{len(wakes)} wake-ups of the loop for 100 commits"
    finally:
        stream.close()
        servers.close()
        store.close()


def test_an_http_1_0_client_gets_the_stream_unframed_and_a_head_request_no_stream(
    served: tuple[int, Store],
) -> None:
    import socket

    port, store = served
    incident_id, _ = store.open_incident("devvm", "manual", "slow", "local", {})
    path = f"/incidents/{incident_id}/events"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding" not in head.lower()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        received = b""
        while b"retry: 3000\n\n" not in received:
            received += sock.recv(65536)
        store.add_step(incident_id, "note", {"text": "for an old client"})
        while b"for an old client" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head.lower()
        # Bare frames, no chunk sizes between them.
        assert body.startswith(b"retry: 3000\n\nid: ")
        store.transition(incident_id, "resolved", "probes green")
        while chunk := sock.recv(65536):
            received += chunk
        assert received.endswith(b"\n\n")  # the server closed the connection after the last frame
