"""The operator's pages through the Flask test client over a real Store."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from api_support import TriggerCore, counts
from conftest import FakeClock
from flask.testing import FlaskClient
from web_support import healthy_readings

from breakglass.store import Store

HOSTILE = "<script>alert(1)</script>"


def _token(client: FlaskClient) -> str:
    page = client.get("/").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the index carries a CSRF token in its forms"
    return match.group(1)


def test_the_index_shows_readings_beside_thresholds_charts_and_forms(
    client: FlaskClient, store: Store
) -> None:
    now = time.time()
    for i in range(5):
        store.add_readings(healthy_readings("devvm", at=now - 600 + i * 120))
    r = client.get("/")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "devvm" in html
    assert "other" in html
    assert "< 5.0 s" in html.replace("&lt;", "<")  # the SSH threshold beside the reading
    assert html.count('<polyline class="series"') == 4
    assert "<title>SSH login time: latest 0.12 s" in html
    assert "Break glass" in html
    assert "Silence" in html
    assert "Simulator" not in html
    assert r.headers["Cache-Control"] == "no-store"
    assert "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"
    assert '<meta name="viewport"' in html


def test_break_glass_opens_one_manual_incident_with_who_and_a_second_attaches(
    client: FlaskClient, store: Store
) -> None:
    token = _token(client)
    r = client.post("/incidents", data={"csrf_token": token, "target": "devvm", "note": "it is slow"})
    assert r.status_code == 303
    [inc] = store.list_incidents()
    assert (inc["trigger"], inc["who"], inc["reason"]) == ("manual", "local", "it is slow")
    assert r.headers["Location"].endswith(f"/incidents/{inc['id']}")
    client.post("/incidents", data={"csrf_token": token, "target": "devvm", "note": "still slow"})
    assert len(store.list_incidents()) == 1
    steps = store.get_incident(inc["id"])["steps"]  # type: ignore[index]
    assert steps[-1]["data"]["reason"] == "still slow"


@pytest.mark.parametrize("token", [None, "wrong"])
@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/incidents", {"target": "devvm", "note": "x"}),
        ("/silences", {"target": "devvm", "reason": "maintenance", "minutes": "30"}),
        ("/targets/devvm/grant", {"why": "known io stall"}),
    ],
)
def test_a_form_post_without_the_right_csrf_token_is_refused_and_changes_nothing(
    client: FlaskClient, core: TriggerCore, store: Store, path: str, form: dict[str, str], token: str | None
) -> None:
    _token(client)
    before = counts(store)
    data = dict(form) | ({"csrf_token": token} if token else {})
    assert client.post(path, data=data).status_code == 400
    assert counts(store) == before
    assert store.grants("devvm") == []


def test_the_silence_form_records_reason_who_and_expiry(client: FlaskClient, store: Store) -> None:
    token = _token(client)
    r = client.post(
        "/silences", data={"csrf_token": token, "target": "devvm", "reason": "upgrade", "minutes": "30"}
    )
    assert r.status_code == 303
    [s] = store.list_silences(time.time())
    assert (s["target"], s["reason"], s["who"]) == ("devvm", "upgrade", "local")
    assert 29 * 60 < s["expires_at"] - time.time() <= 30 * 60
    assert "upgrade" in client.get("/").get_data(as_text=True)


def test_the_grant_form_records_who_and_why(client: FlaskClient, store: Store) -> None:
    token = _token(client)
    assert client.post("/targets/devvm/grant", data={"csrf_token": token, "why": ""}).status_code == 400
    r = client.post("/targets/devvm/grant", data={"csrf_token": token, "why": "one more cycle"})
    assert r.status_code == 303
    [g] = store.grants("devvm")
    assert (g["who"], g["why"]) == ("local", "one more cycle")
    # The page confirms it once, after the redirect.
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert f"Granted one more power action for devvm (grant #{g['id']}, by local)" in page
    assert "Granted one more" not in client.get("/").get_data(as_text=True)


def test_an_unknown_target_is_refused(client: FlaskClient, store: Store) -> None:
    token = _token(client)
    assert client.post("/incidents", data={"csrf_token": token, "target": "nope"}).status_code == 400
    assert store.list_incidents() == []


def test_hostile_step_text_and_command_output_show_as_text(client: FlaskClient, store: Store) -> None:
    incident_id, _ = store.open_incident("devvm", "manual", HOSTILE, "local", {"alert": HOSTILE})
    store.add_step(incident_id, "agent_text", {"text": HOSTILE})
    store.add_step(
        incident_id, "tool_call", {"tool": "devvm_shell", "input": {"cmd": "uptime"}, "output": HOSTILE * 20}
    )
    store.set_report(incident_id, HOSTILE)
    for path in (f"/incidents/{incident_id}", "/incidents", "/"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in html, path
    html = client.get(f"/incidents/{incident_id}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<details class="output"><summary>output' in html  # long output is folded


def test_the_incident_page_shows_trigger_transitions_steps_tokens_and_report(
    client: FlaskClient, store: Store
) -> None:
    incident_id, _ = store.open_incident("devvm", "alertmanager", "DevvmDown", "am", {})
    store.transition(incident_id, "diagnosing", "agent started")
    store.add_step(incident_id, "verb", {"verb": "cycle", "result": "ok"})
    store.add_tokens(incident_id, 1200, 340)
    store.set_report(incident_id, "found: io stall. did: cycle. state: healthy")
    store.transition(incident_id, "resolved", "probes green")
    html = client.get(f"/incidents/{incident_id}").get_data(as_text=True)
    for text in ("alertmanager", "diagnosing", "resolved", "cycle", "1200 in, 340 out", "found: io stall"):
        assert text in html
    assert "data-incident-live" not in html  # a closed incident is not live
    assert client.get("/incidents/999").status_code == 404


def test_the_incident_list_filters_by_target_and_state(client: FlaskClient, store: Store) -> None:
    a, _ = store.open_incident("devvm", "manual", "first", "local", {})
    store.transition(a, "resolved", "ok")
    store.open_incident("other", "manual", "second", "local", {})
    html = client.get("/incidents?target=other").get_data(as_text=True)
    assert "second" in html
    assert "first" not in html
    html = client.get("/incidents?state=resolved").get_data(as_text=True)
    assert "first" in html
    assert "second" not in html


def test_the_demo_panel_is_absent_and_its_endpoint_404_outside_demo(client: FlaskClient) -> None:
    token = _token(client)
    assert client.post("/demo/faults", data={"csrf_token": token, "fault": "io_stall"}).status_code == 404


def test_relative_times_read_naturally() -> None:
    from breakglass.web.humanize import ago, utc

    assert ago(1000.0, now=1180.0) == "3 min ago"
    assert ago(1000.0 + 7200, now=1000.0) == "2 h from now"
    assert utc(0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "path",
    [
        f"/incidents/{2**64}",
        f"/incidents/{2**63}",
        f"/incidents/{10**30}",
        f"/incidents/{2**64}/events",
        f"/incidents/{10**30}/events",
        f"/api/v1/incidents/{2**64}",
    ],
)
def test_an_id_beyond_64_bits_is_not_found_never_a_server_error(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_the_page_modules_import_neither_the_app_factory_nor_the_simulator() -> None:
    import ast

    web = Path(__file__).resolve().parent.parent / "breakglass" / "web"
    for module in web.glob("*.py"):
        if module.name == "app.py":
            continue
        tree = ast.parse(module.read_text(encoding="utf-8"))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        assert "breakglass.web.app" not in imported, module.name
        assert not any(str(m).startswith("breakglass.sim") for m in imported), module.name


def test_durations_and_clock_times_read_as_a_person_says_them() -> None:
    from breakglass.web.humanize import clock, duration

    assert [duration(s) for s in (0, 42, 65, 605, 3600, 7500, 90000, None)] == [
        "0 s",
        "42 s",
        "1 min 5 s",
        "10 min",
        "1 h",
        "2 h 5 min",
        "1 d 1 h",
        "-",
    ]
    day = 1_796_116_695.35  # 2026-12-01T09:18:15Z
    assert clock(day, now=day + 60) == "09:18:15 UTC"
    assert clock(day, now=day + 3 * 86400) == "Dec 1 09:18 UTC"


def test_an_incident_page_reads_as_sentences_with_commands_refusals_and_json_behind_a_disclosure(
    client: FlaskClient, store: Store
) -> None:
    incident_id, _ = store.open_incident("devvm", "rule", "vm stopped", "watchdog", {"bad_since": None})
    store.add_step(incident_id, "agent_text", {"text": "The VM looks stopped; checking the host."})
    store.add_step(
        incident_id, "tool_call", {"id": "t1", "name": "devvm_shell", "input": {"command": "uptime"}}
    )
    store.add_step(
        incident_id, "tool_result", {"id": "t1", "name": "devvm_shell", "status": "ok", "output": "up 3 days"}
    )
    store.add_step(
        incident_id, "policy", {"command": "reboot", "allowed": False, "reason": "powers off the guest"}
    )
    store.add_step(
        incident_id,
        "decision",
        {
            "decision": "remediation escalate",
            "found": "budget spent",
            "escalation": None,
            "next_allowed_at": 1796116695.35,
        },
    )
    html = client.get(f"/incidents/{incident_id}").get_data(as_text=True)
    assert "agent says" in html
    assert "The VM looks stopped; checking the host." in html
    assert "<code>$ uptime</code>" in html
    assert '<details class="output"><summary>output (1 line)</summary><pre>up 3 days</pre>' in html
    assert "refused reboot" in html
    assert "powers off the guest" in html
    assert '<details class="raw"><summary>JSON</summary>' in html
    # Nothing that says nothing, and no epoch numbers: the decision step before its raw JSON.
    decision = re.search(r'<li class="step step-decision[^>]*>(.*?)<details class="raw">', html, re.S)
    assert decision
    assert "escalation" not in decision.group(1)
    assert "1796116695" not in decision.group(1)
    assert "next allowed at" in decision.group(1)
    assert "Tokens" not in html
    assert "Model tokens" not in html
    assert 'id="report-section" hidden' in html


def test_a_closed_incident_shows_time_to_detect_and_resolve_and_its_report(
    client: FlaskClient, store: Store
) -> None:
    now = time.time()
    incident_id, _ = store.open_incident("devvm", "rule", "ssh down", "watchdog", {"bad_since": now - 4})
    store.add_tokens(incident_id, 1200, 340)
    store.set_report(
        incident_id,
        "Found: io stall\nDid: cycle\nState now: healthy\nConfirmed: 3 consecutive green probe rounds",
    )
    store.transition(incident_id, "resolved", "3 consecutive green probe rounds")
    html = client.get(f"/incidents/{incident_id}").get_data(as_text=True)
    assert re.search(r"<dt>Time to detect</dt><dd>\d+ s from the first bad probe round</dd>", html)
    assert re.search(r'<dt>Time to resolve</dt><dd id="inc-duration"[^>]*>\d+ s</dd>', html)
    assert "Model tokens</dt><dd>1200 in, 340 out" in html
    assert 'id="report-section" hidden' not in html
    assert "Confirmed: 3 consecutive green probe rounds" in html
    listing = client.get("/incidents").get_data(as_text=True)
    assert re.search(r"resolved in \d+ s", listing)
    assert '<td data-label="action" class="action">cycle</td>' in listing


def test_charts_have_a_real_time_span_value_axes_thresholds_bands_and_a_disk_chart(
    client: FlaskClient, store: Store, clock: FakeClock
) -> None:
    import dataclasses

    now = time.time()  # the page draws the last hours up to the real now
    # Ten minutes of rounds, SSH down for two of them, an incident over the outage.
    for i in range(21):
        r = healthy_readings("devvm", at=now - 600 + i * 30)
        if 8 <= i <= 11:
            r = dataclasses.replace(r, ssh_ok=False, ssh_login_seconds=None, load1=None, ncpu=None)
        store.add_readings(r)
    clock.now = now - 600 + 8 * 30
    incident_id, _ = store.open_incident("devvm", "rule", "ssh down", "watchdog", {})
    clock.now = now - 600 + 12 * 30
    store.transition(incident_id, "resolved", "green")
    r = client.get("/")
    html = r.get_data(as_text=True)
    card = html.split('id="target-devvm"')[1].split("</section>")[0]
    charts = re.findall(r'<svg class="chart".*?</svg>', card, re.S)
    assert len(charts) == 4  # SSH, load, memory and disk
    ssh, load, memory, disk = charts
    assert "<title>threshold 8</title>" in load
    # The real span (about ten minutes of buckets), not "3 h" stretched.
    assert re.search(r"over (9|10) min", ssh)
    assert re.search(r"SSH login time, last (9|10) min", card)
    # Value axis labels in the reading's unit, the threshold dashed and labelled.
    assert re.search(r'<text class="axis"[^>]*>0 s</text>', ssh)
    assert "<title>threshold 5 s</title>" in ssh
    assert "<title>threshold 3 %</title>" in memory
    assert "<title>threshold 98 %</title>" in disk
    assert "Disk used" in disk
    # Time axis: clock times of the span's start and end.
    assert len(re.findall(r'<text class="axis"[^>]*text-anchor="(?:start|middle|end)"', ssh)) >= 3
    # The incident and the outage as bands; the line breaks over the outage.
    assert f"incident #{incident_id} (resolved)" in ssh
    assert 'class="band band-outage"' in ssh
    assert ssh.count('<polyline class="series"') == 2
    # Self-contained: no external asset, and the CSP stays strict.
    assert "http" not in "".join(charts).replace("http://www.w3.org", "")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]

