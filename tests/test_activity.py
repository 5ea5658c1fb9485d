"""Say why, always: the page and /api/v1/status tell what the watchdog is doing or waiting for.

A real Core (no scheduler) over a real Store; each probe round is handed to
``Core.process`` through the thread-safe handle, exactly as a scheduled round
would be after its SSH probe.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import make_app
from flask.testing import FlaskClient
from harness import override
from web_support import healthy_readings, web_config

from breakglass.core import Core, CoreHandle, CoreThread
from breakglass.metrics import Metrics
from breakglass.store import Store
from breakglass.watchdog.probes import Readings


@dataclasses.dataclass
class Live:
    """A running core, its store and a test client of the real app over it."""

    core: Core
    handle: CoreHandle
    store: Store
    client: FlaskClient

    def round(self, readings: Readings) -> None:
        """One probe round's readings, processed on the core loop."""
        self.handle.call(self.core.process(readings))

    def status(self) -> dict[str, Any]:
        """The target's entry in /api/v1/status."""
        r = self.client.get("/api/v1/status")
        assert r.status_code == 200
        body = r.get_json()
        return next(t for t in body["targets"] if t["name"] == "devvm")

    def page(self) -> str:
        """The index page's devvm card."""
        html = self.client.get("/").get_data(as_text=True)
        card = re.search(r'<section class="card target[^"]*" id="target-devvm">.*?</section>', html, re.S)
        assert card, "the devvm card is on the page"
        return card.group(0)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    cfg = override(
        web_config(tmp_path, ("devvm",)),
        rules={"ssh_rounds": 3, "pve_rounds": 3, "boot_grace_seconds": 120},
        incidents={"cooldown_seconds": 600},
    )
    store = Store(cfg.store_path)
    core = Core(cfg, store=store, metrics=Metrics())
    thread = CoreThread(core, schedule=False)
    handle = thread.start()
    try:
        yield Live(core, handle, store, make_app(cfg, store, handle).test_client())
    finally:
        thread.stop()
        store.close()


def _closed_incident(store: Store, state: str, ago: float = 30.0) -> int:
    incident_id, _ = store.open_incident("devvm", "rule", "vm stopped", "watchdog", {})
    store.transition(incident_id, state, "for the test")
    store._conn().execute("UPDATE incidents SET closed_at = ? WHERE id = ?", (time.time() - ago, incident_id))
    return incident_id


def stopped(at: float | None = None) -> Readings:
    return dataclasses.replace(
        healthy_readings("devvm", at),
        ssh_ok=False,
        ssh_error="refused",
        ssh_refused=True,
        ssh_login_seconds=None,
        vm_status="stopped",
        qmp_ok=False,
        qmp_status=None,
        guest_agent_ok=False,
    )


def test_a_stopped_vm_in_cooldown_says_so_with_the_end_time_and_is_not_healthy(live: Live) -> None:
    earlier = _closed_incident(live.store, "resolved")
    live.round(stopped())
    assert [i["id"] for i in live.store.list_incidents()] == [earlier]  # no incident opened
    activity = live.status()["activity"]
    assert activity["doing"] == "cooldown"
    assert activity["health"] == "failing"
    assert activity["until"] == pytest.approx(time.time() - 30 + 600, abs=5)
    card = live.page()
    assert f"cooldown after incident #{earlier}" in card
    assert "healthy" not in card
    assert 'data-health="failing"' in card
    assert "QMP not answering" in card  # the failing part stays in the VM row


def test_an_escalation_with_ssh_still_failing_needs_a_person_and_shows_a_banner(live: Live) -> None:
    escalated = _closed_incident(live.store, "escalated")
    live.round(dataclasses.replace(healthy_readings("devvm"), ssh_ok=False, ssh_error="timeout"))
    activity = live.status()["activity"]
    assert activity["needs_person"] is True
    assert activity["health"] == "needs_person"
    assert activity["doing"] == "escalated"
    html = live.client.get("/").get_data(as_text=True)
    assert 'id="needs-person"' in html
    assert f"escalated in incident #{escalated}: waiting for a person" in html
    assert ">healthy<" not in live.page()


def test_both_hosts_unreachable_is_never_healthy_and_says_the_condition_is_building(live: Live) -> None:
    live.round(
        dataclasses.replace(
            healthy_readings("devvm"),
            ssh_ok=False,
            ssh_error="timeout",
            ssh_login_seconds=None,
            pve_ok=False,
            pve_error="timeout",
            vm_status=None,
            qmp_ok=None,
            qmp_status=None,
            guest_agent_ok=None,
        )
    )
    activity = live.status()["activity"]
    assert activity["health"] == "degraded"
    texts = [r["text"] for r in activity["reasons"]]
    assert "condition building: ssh login failed (timeout): 1 of 3 rounds" in texts
    assert any(t.startswith("condition building: proxmox host unreachable") and "1 of 3" in t for t in texts)
    card = live.page()
    assert 'data-health="degraded"' in card
    assert "host unreachable" in card
    assert card.count('class="breach"') >= 2  # SSH and the VM row


def test_a_silence_names_who_why_and_until(live: Live) -> None:
    until = time.time() + 3600
    live.store.add_silence("devvm", "kernel upgrade", "bob", until)
    live.round(stopped())
    activity = live.status()["activity"]
    assert activity["doing"] == "silenced"
    assert activity["text"] == "silenced by bob: kernel upgrade"
    assert activity["until"] == pytest.approx(until)
    assert "silenced by bob: kernel upgrade until" in live.page()


def test_a_fresh_boot_is_in_grace_until_a_time(live: Live) -> None:
    now = time.time()
    live.round(dataclasses.replace(healthy_readings("devvm", now), uptime_seconds=20.0))
    activity = live.status()["activity"]
    booting = next(r for r in activity["reasons"] if r["code"] == "booting")
    assert booting["until"] == pytest.approx(now - 20 + 120, abs=1)
    assert activity["health"] == "degraded"
    assert "booting: conditions wait for the grace period until" in live.page()


def test_a_spent_budget_says_until_when(live: Live) -> None:
    for verb in ("cycle", "reset", "start"):
        row = live.store.ledger_insert("devvm", None, verb, "runbook", decision={})
        live.store.ledger_finish(row, "ok")
    live.round(healthy_readings("devvm"))
    activity = live.status()["activity"]
    spent = next(r for r in activity["reasons"] if r["code"] == "budget_spent")
    assert spent["until"] is not None
    assert spent["until"] > time.time()
    assert "power budget spent" in live.page()


def test_a_breached_reading_is_marked_before_its_condition_fires(live: Live) -> None:
    live.round(dataclasses.replace(healthy_readings("devvm"), disk_used_ratio=0.995))
    activity = live.status()["activity"]
    assert "disk_full" in activity["breached"]
    card = live.page()
    assert re.search(r'<tr class="breach"><td>Disk used</td>', card)


def test_a_healthy_target_says_it_is_probing(live: Live) -> None:
    live.round(healthy_readings("devvm"))
    activity = live.status()["activity"]
    assert (activity["health"], activity["doing"]) == ("healthy", "probing")
    assert 'data-health="healthy"' in live.page()


def test_the_status_with_its_activity_matches_the_openapi_document(live: Live) -> None:
    from importlib import resources

    import yaml
    from test_openapi import check_against_doc

    doc = yaml.safe_load((resources.files("breakglass.web") / "openapi.yaml").read_text(encoding="utf-8"))
    _closed_incident(live.store, "escalated")
    live.round(stopped())
    body = live.client.get("/api/v1/status").get_json()
    assert body["targets"][0]["activity"]["reasons"]
    check_against_doc(doc, "get", "/api/v1/status", 200, body)
    # Every reason code the core can give is in the document's enum.
    codes = set(doc["components"]["schemas"]["ReasonCode"]["enum"])
    assert {r["code"] for r in body["targets"][0]["activity"]["reasons"]} <= codes


def test_the_budget_line_names_its_window_and_gap_and_warns_when_spent(live: Live) -> None:
    live.round(healthy_readings("devvm"))
    text = re.sub(r"<[^>]+>", "", live.page())
    assert "3 of 3 left in any 6 h, at least 10 min apart" in text
    for verb in ("cycle", "reset", "start"):
        row = live.store.ledger_insert("devvm", None, verb, "runbook", decision={})
        live.store.ledger_finish(row, "ok")
    text = re.sub(r"<[^>]+>", "", live.page())
    assert "0 of 3 left in any 6 h" in text
    assert "spent: the watchdog cannot power-cycle this VM until then" in text
