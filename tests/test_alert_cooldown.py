"""A firing alert that arrives inside the cooldown after a close is deferred, never dropped.

The real core and incident manager on a fake clock, the real webhook in front of
them, the simulator's VM behind them: Alertmanager re-sends a still-firing alert
only at its ``repeat_interval`` (4 h in the example), so an alert answered
"suppressed" in the cooldown would be ignored for hours. It is kept in the store
and delivered on the first probe round after the cooldown ends, unless its
``resolved`` arrives first or a person silences the target.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import with_tokens
from conftest import FakeClock
from flask.testing import FlaskClient
from harness import override, wait_for
from prometheus_client import CollectorRegistry
from test_webhook import alert, payload, post
from web_support import healthy_readings

from breakglass.core import Core, CoreHandle, CoreThread
from breakglass.metrics import Metrics
from breakglass.sim.runner import SimHandle
from breakglass.store import Store
from breakglass.web.app import create_app

COOLDOWN = 600.0


@dataclass
class Stack:
    """The real core on a fake clock, its store, and the real app's test client in front."""

    clock: FakeClock
    core: Core
    handle: CoreHandle
    store: Store
    client: FlaskClient
    target: str

    def round(self, seconds: float = 1.0) -> None:
        """Advance the clock and process one green probe round of the target on the core loop."""
        self.clock.now += seconds
        self.handle.call(self.core.process(healthy_readings(self.target, self.clock.now)))

    def incidents(self) -> list[dict[str, Any]]:
        return sorted(self.store.list_incidents(target=self.target), key=lambda i: i["id"])

    def resolve(self, incident_id: int) -> dict[str, Any]:
        """Green rounds until the incident's one verification path resolves it."""

        def resolved() -> dict[str, Any] | None:
            self.round()
            inc = self.store.get_incident(incident_id)
            return inc if inc is not None and inc["state"] == "resolved" else None

        return wait_for(resolved, within=30, what=f"incident {incident_id} to resolve", every=0.05)


@pytest.fixture
def stack(sim: SimHandle, tmp_path: Path) -> Iterator[Stack]:
    cfg = with_tokens(override(sim.config, incidents={"cooldown_seconds": COOLDOWN}), tmp_path)
    clock = FakeClock()
    store = Store(tmp_path / "c.db", clock=clock)
    metrics = Metrics(CollectorRegistry())
    core = Core(cfg, store=store, metrics=metrics, clock=clock)
    thread = CoreThread(core, schedule=False)
    handle = thread.start()
    app = create_app(cfg, store=store, metrics=metrics, core=handle, testing=True)
    s = Stack(clock, core, handle, store, app.test_client(), cfg.targets[0].name)
    try:
        s.round()
        yield s
    finally:
        thread.stop()
        store.close()


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _fp(target: str) -> dict[str, Any]:
    return alert(target=target)


def _closed_then_refired(s: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fire, resolve the incident, fire again 10 s later; the first incident and the answer."""
    [first] = post(s.client, payload(_fp(s.target))).json["opened"]
    inc = s.resolve(first)
    s.clock.now += 10
    again = post(s.client, payload(_fp(s.target)))
    assert again.status_code == 200
    return inc, again.json


def test_a_re_fire_inside_the_cooldown_is_deferred_and_opens_an_incident_when_it_ends(
    stack: Stack, captured: io.StringIO
) -> None:
    s = stack
    first, answer = _closed_then_refired(s)
    until = first["closed_at"] + COOLDOWN
    [entry] = answer["alerts"]
    assert entry["outcome"] == "deferred"
    assert entry["why"] == "cooldown"
    assert entry["until"] == pytest.approx(until)
    assert answer["deferred"] == 1
    assert answer["opened"] == []
    assert [i["id"] for i in s.incidents()] == [first["id"]]
    # A copy while it waits changes nothing: still one deferral, the same time.
    assert post(s.client, payload(_fp(s.target))).json["alerts"][0]["until"] == pytest.approx(until)
    assert len(s.store.deferred_alerts(s.target)) == 1
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.startswith("{")]
    deferred = [entry for entry in lines if entry.get("event") == "alert_deferred"]
    assert [(d["why"], d["until"]) for d in deferred] == [("cooldown", _utc(until))] * 2
    # Rounds inside the cooldown open nothing.
    s.round(COOLDOWN / 2)
    assert [i["id"] for i in s.incidents()] == [first["id"]]
    # The first round after the cooldown delivers it: a new incident, from the alert.
    s.clock.now = until
    s.round()
    incidents = s.incidents()
    assert len(incidents) == 2
    second = incidents[-1]
    assert second["trigger"] == "alertmanager"
    assert second["reason"] == "DevvmDown: devvm stopped answering"
    assert second["evidence"]["alert"]["fingerprint"] == "fp1"
    assert second["evidence"]["deferred"]["until"] == pytest.approx(until)
    assert s.store.deferred_alerts() == []
    # Delivered: a copy now is a duplicate of the new incident's alert.
    assert post(s.client, payload(_fp(s.target))).json["duplicates"] == 1


def test_a_resolve_that_arrives_during_the_cooldown_cancels_the_deferral(stack: Stack) -> None:
    s = stack
    first, answer = _closed_then_refired(s)
    assert answer["alerts"][0]["outcome"] == "deferred"
    resolved = post(s.client, payload(alert("resolved", target=s.target), status="resolved"))
    assert resolved.json["alerts"][0]["outcome"] == "deferral_cancelled"
    s.clock.now = first["closed_at"] + COOLDOWN
    for _ in range(3):
        s.round()
    assert [i["id"] for i in s.incidents()] == [first["id"]]


def test_a_silence_suppresses_and_drops_a_deferral_instead_of_deferring(stack: Stack) -> None:
    s = stack
    first, answer = _closed_then_refired(s)
    assert answer["alerts"][0]["outcome"] == "deferred"
    # A person silences the target while the alert waits: it opens nothing when the cooldown ends.
    s.store.add_silence(s.target, "maintenance", "viktor", s.clock.now + 2 * COOLDOWN)
    again = post(s.client, payload(_fp(s.target))).json["alerts"][0]
    assert (again["outcome"], again["why"]) == ("suppressed", "silenced")
    s.clock.now = first["closed_at"] + COOLDOWN
    s.round()
    assert s.store.deferred_alerts() == []
    s.clock.now += 2 * COOLDOWN  # the silence is over: nothing was kept for it
    s.round()
    assert [i["id"] for i in s.incidents()] == [first["id"]]
