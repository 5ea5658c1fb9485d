"""The Alertmanager webhook: token, size cap, schema, dedupe, target mapping and core outages."""

from __future__ import annotations

import http.client
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from api_support import WEBHOOK_TOKEN, TriggerCore, counts
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Servers

from breakglass.config import Config
from breakglass.store import Store
from breakglass.web import body
from breakglass.web.context import ApiError

AUTH = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
FIRING_ENDS = "0001-01-01T00:00:00Z"


def alert(status: str = "firing", fingerprint: str = "fp1", **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager sends it."""
    return {
        "status": status,
        "labels": {"alertname": "DevvmDown", "target": "devvm", **labels},
        "annotations": {"summary": "devvm stopped answering"},
        "startsAt": "2026-11-28T10:00:00Z",
        "endsAt": FIRING_ENDS if status == "firing" else "2026-11-28T10:05:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    """A version 4 notification."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="DevvmDown"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "breakglass",
        "groupLabels": {"alertname": "DevvmDown"},
        "commonLabels": {"alertname": "DevvmDown"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def post(client: FlaskClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post("/api/v1/alertmanager", json=body, headers=AUTH if headers is None else headers)


def test_a_firing_alert_opens_an_incident_with_the_alert_as_evidence(
    client: FlaskClient, store: Store
) -> None:
    r = post(client, payload(alert()))
    assert r.status_code == 200
    assert r.json["received"] == 1
    [inc_id] = r.json["opened"]
    inc = store.get_incident(inc_id)
    assert inc is not None
    assert inc["trigger"] == "alertmanager"
    assert inc["who"] == "alertmanager"
    assert inc["reason"] == "DevvmDown: devvm stopped answering"
    assert inc["evidence"]["alert"]["fingerprint"] == "fp1"
    assert inc["evidence"]["alert"]["generatorURL"] == "http://prometheus:9090/graph"


def test_repeats_of_the_same_fingerprint_and_status_are_recorded_once(
    client: FlaskClient, store: Store
) -> None:
    first = post(client, payload(alert()))
    again = post(client, payload(alert(), alert()))
    assert first.json["opened"]
    assert again.json["duplicates"] == 2
    assert again.json["opened"] == []
    assert again.json["attached"] == []
    resolved = payload(alert("resolved"), status="resolved")
    assert post(client, resolved).json["alerts"][0]["outcome"] == "recorded"
    assert post(client, resolved).json["alerts"][0]["outcome"] == "duplicate"
    inc = store.get_incident(first.json["opened"][0])
    assert inc is not None
    assert [s["kind"] for s in inc["steps"]].count("alert_resolved") == 1


def test_an_alert_that_fires_again_after_resolving_counts_again(client: FlaskClient) -> None:
    assert post(client, payload(alert())).json["opened"]
    post(client, payload(alert("resolved"), status="resolved"))
    again = post(client, payload(alert()))
    assert again.json["duplicates"] == 0
    assert again.json["attached"] or again.json["opened"]


def test_a_second_alert_attaches_to_the_active_incident(client: FlaskClient) -> None:
    [opened] = post(client, payload(alert())).json["opened"]
    r = post(client, payload(alert(fingerprint="fp2", alertname="DevvmLoad")))
    assert r.json["attached"] == [opened]


def test_the_instance_label_and_its_host_part_name_a_target(client: FlaskClient) -> None:
    a = alert(fingerprint="fp-instance")
    del a["labels"]["target"]
    a["labels"]["instance"] = "other:9100"
    r = post(client, payload(a))
    assert r.json["alerts"][0]["target"] == "other"
    assert r.json["alerts"][0]["outcome"] == "opened"


def test_alerts_for_unknown_targets_are_ignored_and_reported(client: FlaskClient, store: Store) -> None:
    r = post(client, payload(alert(target="elsewhere"), alert(fingerprint="fp2", target="devvm")))
    assert r.status_code == 200
    assert r.json["unknown_targets"] == ["elsewhere"]
    assert len(store.list_incidents()) == 1


def test_a_resolved_alert_without_an_active_incident_changes_nothing(
    client: FlaskClient, store: Store
) -> None:
    r = post(client, payload(alert("resolved"), status="resolved"))
    assert r.json["alerts"][0]["outcome"] == "no_active_incident"
    assert store.list_incidents() == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": WEBHOOK_TOKEN}])
def test_the_webhook_needs_its_bearer_token(
    client: FlaskClient, store: Store, headers: dict[str, str]
) -> None:
    r = post(client, payload(alert()), headers)
    assert r.status_code == 401
    assert r.json["error"] == "unauthorized"
    assert store.list_incidents() == []


def test_the_api_token_is_not_the_webhook_token(client: FlaskClient) -> None:
    from api_support import API_TOKEN

    assert post(client, payload(alert()), {"Authorization": f"Bearer {API_TOKEN}"}).status_code == 401


def test_a_body_over_one_mebibyte_is_refused_with_413(client: FlaskClient, store: Store) -> None:
    big = payload(alert(fingerprint="x" * 200))
    big["commonAnnotations"] = {"pad": "x" * (1024 * 1024)}
    r = post(client, big)
    assert r.status_code == 413
    assert store.list_incidents() == []


@pytest.mark.parametrize("server", ["breakglass", "waitress"])
def test_a_chunked_body_over_the_cap_is_refused_by_the_real_server(
    app: Flask, store: Store, servers: Servers, server: str
) -> None:
    port = servers.web(app).effective_port if server == "breakglass" else servers.waitress(app).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    chunk = b"x" * 65536
    conn.putrequest("POST", "/api/v1/alertmanager")
    conn.putheader("Authorization", AUTH["Authorization"])
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(20):  # 1.25 MiB in all
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # a server may answer and hang up before the whole body is sent
    resp = conn.getresponse()
    assert resp.status == 413
    resp.read()
    conn.close()
    assert store.list_incidents() == []


def test_a_core_that_is_down_answers_503_and_the_retry_counts(
    client: FlaskClient, core: TriggerCore, store: Store
) -> None:
    core.is_alive = False
    r = post(client, payload(alert()))
    assert r.status_code == 503
    assert r.json["error"] == "core_unavailable"
    core.is_alive = True
    retry = post(client, payload(alert()))
    assert retry.status_code == 200
    assert retry.json["opened"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**payload(alert()), "version": "3"}, "version"),
        ({**payload(alert()), "alerts": [{**alert(), "status": "pending"}]}, "alerts.0.status"),
        ({**payload(alert()), "alerts": [{**alert(), "labels": {"target": 5}}]}, "alerts.0.labels.target"),
        ({**payload(alert()), "alerts": [{**alert(), "fingerprint": ""}]}, "alerts.0.fingerprint"),
        ({k: v for k, v in payload(alert()).items() if k != "receiver"}, "receiver"),
        ([], "(body)"),
    ],
)
def test_a_malformed_payload_gets_400_naming_the_field(
    client: FlaskClient, store: Store, body: Any, field: str
) -> None:
    r = post(client, body)
    assert r.status_code == 400
    assert field in [p["param"] for p in r.json["detail"]]
    assert counts(store) == (0, 0, 0)


def test_a_body_that_is_not_json_gets_400(client: FlaskClient) -> None:
    r = client.post("/api/v1/alertmanager", data=b"\xff{not json", headers=AUTH)
    assert r.status_code == 400
    assert r.json["error"] == "bad_request"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
mutated = st.builds(
    lambda key, value: {**payload(alert()), key: value},
    st.sampled_from(list(payload(alert()))),
    json_values,
) | st.builds(
    lambda key, value: {**payload(), "alerts": [{**alert(), key: value}]},
    st.sampled_from(list(alert())),
    json_values,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | mutated)
def test_generated_payloads_never_get_a_5xx_and_a_4xx_changes_nothing(
    client: FlaskClient, store: Store, body: Any
) -> None:
    before = counts(store)
    r = post(client, body)
    assert r.status_code < 500
    if r.status_code >= 400:
        assert counts(store) == before
    else:
        assert json.loads(r.get_data())["received"] == len(body["alerts"])


def test_alerts_are_counted_by_status(app: Flask, client: FlaskClient) -> None:
    post(client, payload(alert(), alert("resolved", fingerprint="fp9")))
    ctx = app.extensions["breakglass"]
    registry = ctx.metrics.registry
    assert registry.get_sample_value("breakglass_alerts_received_total", {"status": "firing"}) == 1
    assert registry.get_sample_value("breakglass_alerts_received_total", {"status": "resolved"}) == 1


def test_a_failed_first_delivery_is_recovered_by_the_retry(
    client: FlaskClient, core: TriggerCore, store: Store
) -> None:
    core.fail_next = sqlite3.OperationalError("database is locked")
    first = post(client, payload(alert()))
    assert first.status_code >= 500  # Alertmanager retries 5xx only
    assert first.json["error"] == "delivery_failed"
    assert store.list_incidents() == []
    retry = post(client, payload(alert()))
    assert retry.status_code == 200
    assert retry.json["opened"]
    assert retry.json["duplicates"] == 0


def test_a_lone_surrogate_in_any_string_is_handled(client: FlaskClient, store: Store) -> None:
    body = json.dumps(payload(alert())).replace("devvm stopped answering", "bad \\ud800 text")
    body = body.replace('"alertname": "DevvmDown"', '"alertname": "Devvm\\udfffDown", "x\\ud800": "y"')
    body = body.replace('"receiver": "breakglass"', '"receiver": "\\ud83d"')
    r = client.post("/api/v1/alertmanager", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 200
    [inc_id] = r.json["opened"]
    inc = store.get_incident(inc_id)
    assert inc is not None
    assert inc["reason"] == "Devvm\ufffdDown: bad \ufffd text"
    retry = client.post(
        "/api/v1/alertmanager", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert retry.json["duplicates"] == 1


def test_copies_attach_to_the_active_incident_and_a_re_fire_after_close_opens_a_new_one(
    client: FlaskClient, store: Store
) -> None:
    [first] = post(client, payload(alert())).json["opened"]
    assert post(client, payload(alert())).json["duplicates"] == 1
    assert post(client, payload(alert(fingerprint="fp2"))).json["attached"] == [first]
    assert post(client, payload(alert(fingerprint="fp2"))).json["duplicates"] == 1
    store.transition(first, "resolved", "three green rounds")
    # Alertmanager re-sends a still-firing alert at repeat_interval: after the close it is news.
    again = post(client, payload(alert()))
    assert again.json["duplicates"] == 0
    [second] = again.json["opened"]
    assert second != first
    assert post(client, payload(alert())).json["duplicates"] == 1


@pytest.mark.parametrize("path", ["/api/v1/alertmanager", "/api/v1/incidents", "/api/v1/silences"])
@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_is_a_400_not_a_500(
    client: FlaskClient, store: Store, path: str, depth: int
) -> None:
    from api_support import API_TOKEN

    token = WEBHOOK_TOKEN if "alertmanager" in path else API_TOKEN
    body = '{"target": "devvm", "reason": ' + "[" * depth + "]" * depth + "}"
    r = client.post(
        path, data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert "nested deeper than 32 levels" in json.dumps(r.json["detail"])
    assert counts(store) == (0, 0, 0)


def test_a_huge_receiver_is_not_logged_whole(client: FlaskClient, captured: io.StringIO) -> None:
    big = payload(alert())
    big["receiver"] = "r" * 900_000
    assert post(client, big).status_code == 200
    text = captured.getvalue()
    assert len(text) < 20_000
    [entry] = [json.loads(line) for line in text.splitlines() if '"webhook_received"' in line]
    assert entry["receiver"].endswith("...[truncated 898000 chars]")


# -- the cost of a copy: Alertmanager HA pairs and retries send many --------------------------


def test_a_copy_is_one_statement_with_no_file_read_no_string_pass_and_no_cookie_signer(
    client: FlaskClient, store: Store, cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each was a measurable share of answering a copy: two statements (each hands the
    # interpreter lock to another thread and back), the token file opened and read, every
    # string of the body visited for lone surrogates, a session cookie signer built.
    assert post(client, payload(alert())).json["opened"]
    token_file = cfg.web.webhook_token_file
    reads: list[Path] = []
    real_read_text = Path.read_text

    def read_text(path: Path, *args: Any, **kwargs: Any) -> str:
        reads.append(path)
        return real_read_text(path, *args, **kwargs)

    cleaned: list[str] = []
    real_clean_text = body.clean_text
    signers: list[object] = []
    real_signer = SecureCookieSessionInterface.get_signing_serializer

    def signer(self: SecureCookieSessionInterface, app: Flask) -> Any:
        signers.append(app)
        return real_signer(self, app)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(body, "clean_text", lambda text: cleaned.append(text) or real_clean_text(text))
    monkeypatch.setattr(SecureCookieSessionInterface, "get_signing_serializer", signer)
    statements: list[str] = []
    store._conn().set_trace_callback(statements.append)
    try:
        again = post(client, payload(alert()))
    finally:
        store._conn().set_trace_callback(None)
    assert again.json["duplicates"] == 1
    assert len(statements) == 1, statements
    assert token_file not in reads
    assert cleaned == []
    assert signers == []


def test_a_new_webhook_token_counts_from_the_next_request(client: FlaskClient, cfg: Config) -> None:
    assert post(client, payload(alert())).status_code == 200
    token_file = cfg.web.webhook_token_file
    assert token_file is not None
    token_file.write_text("a-longer-rotated-webhook-token-0123456789\n", encoding="utf-8")
    assert post(client, payload(alert())).status_code == 401
    rotated = {"Authorization": "Bearer a-longer-rotated-webhook-token-0123456789"}
    assert post(client, payload(alert()), headers=rotated).json["duplicates"] == 1
    # Replaced by a rename, as a secret update does: a new file, picked up as well.
    fresh = token_file.with_name("new-token")
    fresh.write_text(WEBHOOK_TOKEN + "\n", encoding="utf-8")
    fresh.replace(token_file)
    assert post(client, payload(alert()), headers=rotated).status_code == 401
    assert post(client, payload(alert())).status_code == 200


@pytest.mark.parametrize("surrogate", [False, True])
def test_the_nesting_limit_is_the_same_whether_strings_need_cleaning_or_not(surrogate: bool) -> None:
    text = '"\\ud800"' if surrogate else '"x"'
    for depth, ok in ((31, True), (32, True), (33, False)):
        doc = ('{"a": ' * (depth - 1)) + "[" + text + "]" + ("}" * (depth - 1))
        if ok:
            assert body.load_json(doc.encode()) is not None
        else:
            with pytest.raises(ApiError, match="nested deeper than 32 levels"):
                body.load_json(doc.encode())
    cleaned = body.load_json(b'{"k\\udc00": ["\\ud83d\\ude00", "\\ud800"]}')
    assert cleaned == {"k\ufffd": ["\U0001f600", "\ufffd"]}


# -- copies through the real server: answered on its loop, without the app --------------------


class _Counted:
    """The app's WSGI callable, counting the requests that reach it."""

    def __init__(self, app: Flask) -> None:
        self.calls = 0
        self._inner = app.wsgi_app

    def __call__(self, environ: Any, start_response: Any) -> Any:
        self.calls += 1
        return self._inner(environ, start_response)


def _raw_post(port: int, data: bytes, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/api/v1/alertmanager", skip_accept_encoding=True)
        framing = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        for name, value in [*framing, *headers]:
            conn.putheader(name, value)
        conn.endheaders(data)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_a_copy_through_the_server_is_answered_without_the_app_exactly_as_the_app_answers_it(
    app: Flask, client: FlaskClient, store: Store, servers: Servers, captured: io.StringIO
) -> None:
    # Handing each copy to the app's thread pool and back cost about half of answering it
    # (bench/webhook.py): the server answers copies on its loop.
    counted = app.wsgi_app = _Counted(app)  # type: ignore[method-assign]
    port = servers.web(app).effective_port
    data = json.dumps(payload(alert())).encode()
    auth = [("Authorization", AUTH["Authorization"])]
    status, _, first = _raw_post(port, data, auth)
    assert (status, json.loads(first)["opened"], counted.calls) == (200, [1], 1)
    steps = counts(store)

    status, headers, again = _raw_post(port, data, auth)
    assert status == 200
    assert counted.calls == 1  # not through the app
    assert counts(store) == steps
    by_app = post(client, payload(alert()))
    assert counted.calls == 2
    assert again == by_app.data
    assert json.loads(again)["duplicates"] == 1
    expected = {k.lower(): v for k, v in by_app.headers.items()}
    assert {k: v for k, v in headers.items() if k != "content-length"} == {
        k: v for k, v in expected.items() if k != "content-length"
    }
    assert headers["content-length"] == str(len(again))
    registry = app.extensions["breakglass"].metrics.registry
    assert registry.get_sample_value("breakglass_alerts_received_total", {"status": "firing"}) == 3
    received = [json.loads(line) for line in captured.getvalue().splitlines() if '"webhook_received"' in line]
    assert [e["duplicates"] for e in received] == [0, 1, 1]


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong token", 401),
        ("no token", 401),
        ("token sent twice", 401),
        ("not json", 400),
        ("a field missing", 400),
        ("the alert resolved", 200),
        ("a new alert beside the copy", 200),
        ("a body past the quick cap", 200),
    ],
)
def test_anything_but_a_plain_copy_goes_through_the_app(
    app: Flask, store: Store, servers: Servers, case: str, status: int
) -> None:
    counted = app.wsgi_app = _Counted(app)  # type: ignore[method-assign]
    port = servers.web(app).effective_port
    auth = [("Authorization", AUTH["Authorization"])]
    assert _raw_post(port, json.dumps(payload(alert())).encode(), auth)[0] == 200
    note = payload(alert())
    headers = auth
    if case == "wrong token":
        headers = [("Authorization", "Bearer not-the-webhook-token-0123")]
    elif case == "no token":
        headers = []
    elif case == "token sent twice":
        headers = auth * 2
    elif case == "a field missing":
        del note["receiver"]
    elif case == "the alert resolved":
        note = payload(alert("resolved"), status="resolved")
    elif case == "a new alert beside the copy":
        note = payload(alert(), alert(fingerprint="fp2"))
    elif case == "a body past the quick cap":
        note["commonAnnotations"] = {"description": "d" * 20_000}
    data = b"{not json" if case == "not json" else json.dumps(note).encode()
    before = counts(store)
    got, _, answer = _raw_post(port, data, headers)
    assert (got, counted.calls) == (status, 2), answer
    if status != 200:
        assert counts(store) == before


def test_a_quick_answer_that_fails_is_logged_and_the_app_answers_instead(
    app: Flask, store: Store, servers: Servers, captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = app.wsgi_app = _Counted(app)  # type: ignore[method-assign]
    port = servers.web(app).effective_port
    data, auth = json.dumps(payload(alert())).encode(), [("Authorization", AUTH["Authorization"])]
    assert _raw_post(port, data, auth)[0] == 200
    real = store.alert_duplicate
    failures = iter([sqlite3.OperationalError("disk I/O error")])

    def flaky(*args: Any) -> int | None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(*args)

    monkeypatch.setattr(store, "alert_duplicate", flaky)
    status, _, answer = _raw_post(port, data, auth)
    assert (status, json.loads(answer)["duplicates"], counted.calls) == (200, 1, 2)
    [entry] = [json.loads(line) for line in captured.getvalue().splitlines() if "quick_answer_failed" in line]
    assert entry["path"] == "/api/v1/alertmanager"
    assert "disk I/O error" in entry["exception"]
