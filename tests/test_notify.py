"""Apprise notifications reach a local HTTP receiver; a failing receiver never blocks or raises."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from harness import override, start_core, wait_for

from breakglass.config import NotifySettings
from breakglass.notify import Notifier, compose, with_timeouts
from breakglass.sim.runner import SimHandle


class Receiver:
    """A local HTTP server recording each JSON body posted to it; answers ``status``."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(delay)
                outer.bodies.append(json.loads(raw))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_opened_and_resolved_reach_the_receiver_with_the_link_and_report(receiver: Receiver) -> None:
    n = Notifier(NotifySettings(urls=(receiver.url,), timeout_seconds=5), "https://bg.example/")
    try:
        n("opened", {"incident": 7, "target": "devvm", "trigger": "manual"})
        n(
            "resolved",
            {"incident": 7, "target": "devvm", "reason": None, "report": "found io stall; did cycle"},
        )
        n("power_action", {"incident": 7, "target": "devvm", "verb": "cycle", "result": "ok"})
        assert n.flush(10)
    finally:
        n.close()
    titles = sorted(b["title"] for b in receiver.bodies)
    assert titles == [
        "breakglass: incident 7 on devvm opened (manual)",
        "breakglass: incident 7 on devvm resolved",
    ]
    resolved = next(b for b in receiver.bodies if b["title"].endswith("resolved"))
    assert "found io stall; did cycle" in resolved["message"]
    assert "https://bg.example/incidents/7" in resolved["message"]


def test_a_failing_or_unreachable_receiver_is_logged_and_never_blocks(receiver: Receiver) -> None:
    receiver.status = 500
    dead = Receiver()
    dead_url = dead.url
    dead.close()
    n = Notifier(NotifySettings(urls=(receiver.url, dead_url), timeout_seconds=2), "http://127.0.0.1:1/")
    try:
        started = time.monotonic()
        n("escalated", {"incident": 3, "target": "devvm", "reason": "budget spent", "report": "r"})
        assert time.monotonic() - started < 0.5
        assert n.flush(10)
    finally:
        n.close()
    assert len(receiver.bodies) == 1
    assert "Why: budget spent" in receiver.bodies[0]["message"]


def test_a_slow_receiver_does_not_delay_the_caller() -> None:
    slow = Receiver(delay=0.5)
    n = Notifier(NotifySettings(urls=(slow.url,), timeout_seconds=5), "http://127.0.0.1/")
    try:
        started = time.monotonic()
        for i in range(3):
            n("opened", {"incident": i, "target": "devvm", "trigger": "rule"})
        assert time.monotonic() - started < 0.5
    finally:
        n.close()
        slow.close()


def test_timeouts_are_added_to_urls_that_do_not_set_them() -> None:
    assert with_timeouts("json://host/", 4) == "json://host/?cto=4&rto=4"
    assert with_timeouts("json://host/?rto=1", 4) == "json://host/?rto=1&cto=4"


def test_the_opened_message_carries_the_reason() -> None:
    title, body = compose(
        "opened", {"incident": 1, "target": "t", "trigger": "cli"}, "http://x/", "slow build"
    )
    assert title == "breakglass: incident 1 on t opened (cli)"
    assert body == "Reason: slow build\n\nIncident: http://x/incidents/1"


def test_the_core_notifies_when_a_manual_incident_opens_and_closes(
    sim: SimHandle, receiver: Receiver
) -> None:
    running = start_core(sim.config)
    n = Notifier(
        NotifySettings(urls=(receiver.url,), timeout_seconds=5), "http://127.0.0.1:8787/", store=running.store
    )
    running.core.observers.add(n)
    try:
        res = running.handle.trigger(running.target, trigger="manual", reason="check it", who="alice")
        assert res.created
        running.wait_closed(res.incident_id or 0)
        wait_for(lambda: len(receiver.bodies) >= 2, within=10, what="two notifications")
    finally:
        running.stop()
        n.close()
    opened, closed = receiver.bodies[0], receiver.bodies[1]
    assert opened["title"].endswith("opened (manual)")
    assert "Reason: check it" in opened["message"]
    assert closed["title"].endswith(("resolved", "escalated"))
    assert f"http://127.0.0.1:8787/incidents/{res.incident_id}" in closed["message"]


def test_an_escalated_incident_reminds_the_receiver_at_the_repeat_interval(
    sim: SimHandle, receiver: Receiver
) -> None:
    interval = 4.0
    cfg = override(sim.config, budget={"max_actions": 0}, incidents={"repeat_interval_seconds": interval})
    running = start_core(cfg)
    n = Notifier(NotifySettings(urls=(receiver.url,), timeout_seconds=5), "http://127.0.0.1:8787/")
    running.core.observers.add(n)
    arrived: list[tuple[float, str]] = []

    def titles() -> list[str]:
        for body in receiver.bodies[len(arrived) :]:
            arrived.append((time.monotonic(), body["title"]))
        return [t for _, t in arrived]

    try:
        wait_for(lambda: running.core.feed.latest(running.target), within=10, what="a first round")
        sim.inject("vm_stopped")  # sick, and no budget to start it: escalated, and it stays so
        wait_for(
            lambda: sum(t.endswith("still escalated") for t in titles()) >= 2,
            within=30,
            what="two reminders",
            every=0.02,
        )
    finally:
        running.stop()
        n.close()
    [incident] = {t.split()[2] for t in titles()}
    escalated = [at for at, t in arrived if t.endswith(" escalated") and not t.endswith("still escalated")]
    reminders = [at for at, t in arrived if t.endswith("still escalated")]
    assert titles()[-1] == f"breakglass: incident {incident} on {running.target} still escalated"
    assert len(escalated) == 1
    reminder = next(b for b in receiver.bodies if b["title"].endswith("still escalated"))
    assert "still escalated (budget) and the target is still sick" in reminder["message"]
    # One per interval after the escalation, never one per probe round (a round a second here).
    gaps = [b - a for a, b in zip([escalated[0], *reminders], reminders, strict=False)]
    assert all(interval - 1.0 <= g <= interval + 3.0 for g in gaps[:2]), gaps
