"""The Flask app: health, readiness, metrics and the JSON API, over a real Store in tmp_path."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from servers import Servers
from web_support import StoreCore, healthy_readings, record_power_action

from breakglass.config import Config
from breakglass.core import Core, CoreThread
from breakglass.metrics import Metrics
from breakglass.store import Store
from breakglass.web.app import create_app

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
}


def open_incident(
    store: Store, target: str = "devvm", trigger: str = "rule", reason: str = "ssh down"
) -> int:
    incident_id, created = store.open_incident(target, trigger, reason, "watchdog", {"conditions": ["ssh"]})
    assert created
    return incident_id


def resolve(store: Store, incident_id: int) -> None:
    for state in ("diagnosing", "remediating", "verifying", "resolved"):
        assert store.transition(incident_id, state, f"moving to {state}")


# -- health, readiness, metrics ---------------------------------------------


def test_healthz_answers_ok_while_the_process_serves(client: FlaskClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}


def test_readyz_is_200_when_the_core_and_the_store_answer(client: FlaskClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok", "checks": {"core": True, "store": True}, "failed": []}


def test_readyz_is_503_naming_the_core_when_its_loop_is_dead(client: FlaskClient, core: StoreCore) -> None:
    core.is_alive = False
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json() == {
        "status": "unavailable",
        "checks": {"core": False, "store": True},
        "failed": ["core"],
    }


def test_readyz_is_503_naming_the_store_when_it_does_not_answer(client: FlaskClient, store: Store) -> None:
    # A file that is no longer a database: every new connection fails on its first statement.
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink(missing_ok=True)
    store.path.write_bytes(b"this is not a database\n" * 512)
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["failed"] == ["store"]
    assert body["checks"] == {"core": True, "store": False}


def test_metrics_exposes_breakglass_series_from_the_injected_registry(
    client: FlaskClient, metrics: Metrics
) -> None:
    metrics.init_target("devvm")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    text = r.get_data(as_text=True)
    assert "# TYPE breakglass_" in text
    assert 'target="devvm"' in text
    # Only the injected registry: the process-wide default one has python_/process_ series.
    assert "python_gc_objects_collected_total" not in text


def test_metrics_speaks_openmetrics_when_the_scraper_asks_for_it(
    client: FlaskClient, metrics: Metrics
) -> None:
    metrics.init_target("devvm")
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.content_type.startswith("application/openmetrics-text")
    assert r.get_data(as_text=True).rstrip().endswith("# EOF")


# -- status -------------------------------------------------------------------


def test_status_shows_each_targets_latest_readings_and_active_incident(
    client: FlaskClient, store: Store
) -> None:
    store.add_readings(healthy_readings("devvm", at=1000.0))
    store.add_readings(healthy_readings("devvm", at=1030.0))
    incident_id = open_incident(store, "devvm")
    r = client.get("/api/v1/status")
    assert r.status_code == 200
    body = r.get_json()
    by_name = {t["name"]: t for t in body["targets"]}
    assert set(by_name) == {"devvm", "other"}
    assert by_name["devvm"]["readings"]["at"] == 1030.0
    assert by_name["devvm"]["readings"]["ssh_ok"] is True
    assert by_name["devvm"]["incident"] == {"id": incident_id, "state": "open", "trigger": "rule"}
    assert by_name["other"]["readings"] is None
    assert by_name["other"]["incident"] is None
    assert isinstance(body["generated_at"], float)


def test_status_is_a_503_json_error_when_the_core_does_not_answer(
    client: FlaskClient, core: StoreCore
) -> None:
    core.is_alive = False
    r = client.get("/api/v1/status")
    assert r.status_code == 503
    assert r.get_json()["error"] == "core_unavailable"
    assert "did not answer" in r.get_json()["detail"]


class BrokenCore(StoreCore):
    """A core whose status has a bug: it raises something that is not 'unavailable'."""

    def status(self) -> dict[str, Any]:
        raise ValueError("secret internals")


def test_a_bug_behind_the_api_is_a_500_json_error_without_internals(
    cfg: Config, store: Store, metrics: Metrics
) -> None:
    app = create_app(cfg, store=store, metrics=metrics, core=BrokenCore(cfg, store), testing=True)
    r = app.test_client().get("/api/v1/status")
    assert r.status_code == 500
    assert r.get_json()["error"] == "internal_error"
    assert "secret" not in r.get_data(as_text=True)


# -- incidents ----------------------------------------------------------------


def test_incidents_are_listed_newest_first_with_steps_and_power_actions(
    client: FlaskClient, store: Store
) -> None:
    first = open_incident(store, "devvm", reason="guest agent silent")
    store.add_step(first, "evidence", {"text": "ssh timed out"})
    record_power_action(store, first, "devvm", "cycle", "ok")
    store.set_report(first, "Found: io stall\nDid: cycle\nState now: healthy")
    resolve(store, first)
    second = open_incident(store, "other", trigger="manual", reason="looks slow")

    r = client.get("/api/v1/incidents")
    assert r.status_code == 200
    incidents = r.get_json()["incidents"]
    assert [i["id"] for i in incidents] == [second, first]
    done = incidents[1]
    for key in (
        "id",
        "target",
        "trigger",
        "state",
        "opened_at",
        "closed_at",
        "report",
        "steps",
        "power_actions",
    ):
        assert key in done
    assert done["state"] == "resolved"
    assert done["active"] is False
    assert isinstance(done["opened_at"], float)
    assert done["closed_at"] >= done["opened_at"]
    assert done["report"].startswith("Found: io stall")
    assert any(s["kind"] == "evidence" and s["data"] == {"text": "ssh timed out"} for s in done["steps"])
    assert [(p["verb"], p["result"]) for p in done["power_actions"]] == [("cycle", "ok")]
    assert isinstance(done["power_actions"][0]["at"], float)
    assert [t["to"] for t in done["transitions"]][-1] == "resolved"
    assert incidents[0]["closed_at"] is None
    assert incidents[0]["active"] is True


def test_incidents_can_be_filtered_by_target(client: FlaskClient, store: Store) -> None:
    mine = open_incident(store, "devvm")
    open_incident(store, "other")
    r = client.get("/api/v1/incidents?target=devvm")
    assert [i["id"] for i in r.get_json()["incidents"]] == [mine]
    assert client.get("/api/v1/incidents?target=nobody").get_json() == {"incidents": []}


@pytest.mark.parametrize(
    "query", ["state=resolved&state=failed", "state=resolved,failed", "state=resolved, failed"]
)
def test_incidents_can_be_filtered_by_state_repeated_or_comma_separated(
    client: FlaskClient, store: Store, query: str
) -> None:
    done = open_incident(store, "devvm")
    resolve(store, done)
    active = open_incident(store, "other")
    ids = [i["id"] for i in client.get(f"/api/v1/incidents?{query}").get_json()["incidents"]]
    assert ids == [done]
    assert active not in ids


def test_incidents_are_capped_by_limit(client: FlaskClient, store: Store) -> None:
    ids = []
    for _ in range(3):
        incident_id = open_incident(store, "devvm")
        resolve(store, incident_id)
        ids.append(incident_id)
    r = client.get("/api/v1/incidents?limit=2")
    assert [i["id"] for i in r.get_json()["incidents"]] == ids[::-1][:2]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("limit=%EF%BC%93", "limit"),  # a fullwidth digit is a digit to Python, not to the API
        ("state=bogus", "state"),
        ("state=resolved,", "state"),
        ("target=../etc", "target"),
        ("target=", "target"),
        ("target=devvm&target=other", "target"),
    ],
)
def test_bad_query_parameters_get_a_400_json_error_naming_the_parameter(
    client: FlaskClient, query: str, param: str
) -> None:
    r = client.get(f"/api/v1/incidents?{query}")
    assert r.status_code == 400
    body = r.get_json()
    assert body["error"] == "bad_request"
    assert [p["param"] for p in body["detail"]] == [param]


def test_an_incident_is_shown_by_id_with_its_steps(client: FlaskClient, store: Store) -> None:
    incident_id = open_incident(store, "devvm", reason="vm stopped")
    store.add_step(incident_id, "decision", {"decision": "start", "evidence": {"vm_status": "stopped"}})
    r = client.get(f"/api/v1/incidents/{incident_id}")
    assert r.status_code == 200
    body = r.get_json()
    assert body["id"] == incident_id
    assert body["target"] == "devvm"
    assert body["reason"] == "vm stopped"
    assert body["who"] == "watchdog"
    assert body["steps"][-1]["data"]["decision"] == "start"
    assert body["power_actions"] == []


@pytest.mark.parametrize("path", ["/api/v1/incidents/999", "/api/v1/incidents/99999999999999999999999"])
def test_a_missing_incident_is_a_404_json_error(client: FlaskClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.get_json()["error"] == "not_found"


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing", "/api/v1/incidents/abc", "/api/v1/incidents/-1", "/api/v2/status"]
)
def test_unknown_api_routes_are_404_json_errors(client: FlaskClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.is_json
    assert set(r.get_json()) == {"error", "detail"}


def test_a_wrong_method_on_the_api_is_a_405_json_error_that_says_what_is_allowed(client: FlaskClient) -> None:
    r = client.delete("/api/v1/incidents")
    assert r.status_code == 405
    assert r.get_json()["error"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


# -- headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/metrics", "/api/v1/status", "/api/v1/incidents", "/api/v1/nope", "/nope"],
)
def test_every_response_carries_the_security_headers(client: FlaskClient, path: str) -> None:
    r = client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name


# -- under the real server ----------------------------------------------------


def test_waitress_threads_serve_the_api_while_another_thread_writes_the_store(
    app: Flask, store: Store, servers: Servers
) -> None:
    base = servers.waitress(app, threads=4, ident="breakglass").url

    def get(path: str) -> tuple[int, dict[str, Any], str]:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers["X-Frame-Options"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = [pool.submit(get, p) for p in ("/api/v1/incidents", "/api/v1/status", "/readyz") * 20]
        for i in range(20):
            store.add_readings(healthy_readings("devvm", at=2000.0 + i))
            resolve(store, open_incident(store, "devvm"))
        results = [a.result() for a in answers]
    assert {status for status, _, _ in results} == {200}
    assert {frame for _, _, frame in results} == {"DENY"}
    _, body, _ = get("/api/v1/incidents?limit=500")
    assert len(body["incidents"]) == 20
    assert get("/api/v1/status")[1]["targets"][0]["readings"]["at"] == 2019.0


# -- with the real core -------------------------------------------------------


def test_the_real_core_handle_answers_status_and_readiness_until_its_loop_stops(
    cfg: Config, store: Store, metrics: Metrics
) -> None:
    thread = CoreThread(Core(cfg, store=store, metrics=metrics), schedule=False)
    handle = thread.start()
    try:
        handle.call(handle.core.process(healthy_readings("devvm", at=3000.0)))
        client = create_app(cfg, store=store, metrics=metrics, core=handle, testing=True).test_client()
        assert client.get("/readyz").status_code == 200
        body = client.get("/api/v1/status").get_json()
        assert body["targets"][0]["name"] == "devvm"
        assert body["targets"][0]["readings"]["at"] == 3000.0
        assert body["targets"][0]["budget"]["remaining"] == cfg.budget.max_actions
    finally:
        thread.stop()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["failed"] == ["core"]
    r = client.get("/api/v1/status")
    assert r.status_code == 503
    assert r.get_json()["error"] == "core_unavailable"
