"""The shipped dashboard, alert rules and Alertmanager routing, checked statically and against real servers.

The integration half runs the real stack on loopback (tests/promstack.py): the
simulator, ``breakglass serve`` with its own rules slowed so that only
Alertmanager can open an incident, Alertmanager (the shipped example pointed at
serve's webhook) and Prometheus (the shipped example with a 1 s scrape and
evaluation interval, loading a copy of the shipped rules whose ``for:``
durations shrink by 1/10, as the 10 s default probe interval (and the example's
scrape interval) shrinks to the test profile's 1 s).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from promstack import (
    ALERTMANAGER_EXAMPLE,
    ALERTS,
    DASHBOARD,
    JOB,
    PROMETHEUS_EXAMPLE,
    ROOT,
    Stack,
    alertmanager_binary,
    http,
    prometheus_binary,
    rules_with_for,
)
from servers import Servers

from breakglass.metrics import Metrics

PROVISIONING = ROOT / "dashboards" / "provisioning.yaml"
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
SCALE = 1 / 10  # test profile probe interval (1 s) / the default (10 s)
STEP = 1.0  # Grafana's $__interval for the checked range: one point per scrape
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval), scrape 1 s.
RATE_INTERVAL = "4s"
CLOSED = ("resolved", "escalated", "failed")
# Under `make test`'s xdist workers the module runs on one worker: the real stack (a module
# fixture) starts once, and the test that stops serve runs after the ones that read from it.
pytestmark = pytest.mark.xdist_group("promstack")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian 'prometheus')"
)
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool is not installed (Debian 'prometheus-alertmanager')"
)
needs_servers = pytest.mark.skipif(
    prometheus_binary() is None or alertmanager_binary() is None,
    reason="Debian's prometheus and prometheus-alertmanager are not installed (make test installs them)",
)


def dashboard() -> dict[str, Any]:
    """The shipped dashboard JSON."""
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of the shipped alerts.yml."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every Prometheus annotation."""
    found: list[tuple[str, str]] = []
    for panel in dashboard()["panels"]:
        for t in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {t['refId']}", t["expr"]))
    for ann in dashboard()["annotations"]["list"]:
        if "expr" in ann:
            found.append((f"annotation {ann['name']!r}", ann["expr"]))
    return found


def exported_names() -> set[str]:
    """Every sample name breakglass's /metrics can carry (histograms with their suffixes)."""
    metrics = Metrics()
    metrics.init_target("devvm")
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        names.update(s.name for s in family.samples)
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def metric_names(expr: str) -> set[str]:
    """The breakglass_* names an expression reads."""
    return set(re.findall(r"\bbreakglass_[a-z0-9_]+", expr))


def substitute(expr: str, range_seconds: int) -> str:
    """Grafana's variables replaced by what Grafana would send for the checked range."""
    out = (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__interval", f"{STEP:g}s")
        .replace("$__range", f"{range_seconds}s")
        .replace("$target", "devvm")
    )
    assert "$" not in out, f"unsubstituted variable in {out}"
    return out


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a checking tool; never raises on a non-zero exit."""
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)


# --- the dashboard, statically -----------------------------------------------------------------


def test_the_dashboard_picks_its_datasource_through_a_variable_so_file_provisioning_works() -> None:
    dash = dashboard()
    assert 39 <= dash["schemaVersion"] <= 41
    assert "__inputs" not in dash, "file provisioning does not resolve ${DS_...} inputs"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    target = variables["target"]
    assert target["type"] == "query"
    assert "label_values(breakglass_probe_success, target)" in json.dumps(target["query"])
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted, panel["title"]
        assert all(t["datasource"] == wanted for t in panel["targets"]), panel["title"]
    assert "DS_" not in DASHBOARD.read_text(encoding="utf-8")


def test_the_dashboard_has_every_panel_the_operator_needs() -> None:
    titles = {p["title"] for p in dashboard()["panels"]}
    assert {
        "VM state",
        "SSH login latency",
        "Load against CPUs",
        "Memory and swap",
        "Root disk",
        "Guest side",  # SSH and the guest agent
        "Probe success ratio",
        "Watchdog liveness",
        "Active incident",
        "Incidents opened by trigger",
        "Power actions by verb and result",
        "Power budget",
        "Agent tokens",
    } <= titles
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        assert p["targets"], p["title"]
        assert p.get("description"), f"{p['title']} has no description"
    guest = next(p for p in panels if p["title"] == "Guest side")
    assert any("breakglass_guest_agent_up" in t["expr"] for t in guest["targets"])


def test_the_dashboard_annotates_incidents_opened_and_closed_and_power_actions() -> None:
    anns = {a["name"]: a for a in dashboard()["annotations"]["list"] if "expr" in a}
    assert set(anns) == {"Incidents opened", "Incidents closed", "Power actions"}
    wanted = {
        "Incidents opened": "breakglass_incidents_opened_total",
        "Incidents closed": "breakglass_incidents_closed_total",
        "Power actions": "breakglass_power_actions_total",
    }
    for name, metric in wanted.items():
        ann = anns[name]
        assert ann["enable"] is True
        assert ann["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert metric in ann["expr"]
        assert re.search(r"\b(increase|changes)\(", ann["expr"]), ann["expr"]
        assert ann["titleFormat"]


def test_every_dashboard_and_alert_expression_reads_only_metrics_that_exist() -> None:
    exported = exported_names()
    used = {n for _, e in dashboard_queries() for n in metric_names(e)}
    used |= {n for r in alert_rules() for n in metric_names(r["expr"])}
    assert used, "no breakglass metric found in the expressions"
    assert used <= exported, f"unknown metric names: {sorted(used - exported)}"


def test_the_provisioning_file_serves_the_dashboard_folder_and_a_prometheus_datasource() -> None:
    doc = yaml.safe_load(PROVISIONING.read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["access"] == "proxy"
    assert ds["url"].startswith("http")
    # The same scrape interval the example Prometheus uses, so $__rate_interval spans 4 scrapes.
    example = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text(encoding="utf-8"))
    assert ds["jsonData"]["timeInterval"] == example["global"]["scrape_interval"]


# --- the alert rules and routing, statically ---------------------------------------------------


def test_every_alert_has_a_for_duration_a_severity_a_component_and_words_for_a_person() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "BreakglassVmDown",
        "BreakglassSshFailing",
        "BreakglassSshSlow",
        "BreakglassMemoryPressure",
        "BreakglassDiskNearlyFull",
        "BreakglassPowerBudgetExhausted",
        "BreakglassEscalated",
        "BreakglassWatchdogDown",
        "BreakglassProbeRoundsStale",
        "BreakglassCoreLoopLagging",
    } <= names
    for r in rules:
        assert "for" in r, r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning"}, r["alert"]
        assert r["labels"]["component"] in {"devvm", "watchdog"}, r["alert"]
        assert r["annotations"]["summary"].strip(), r["alert"]
        assert r["annotations"]["description"].strip(), r["alert"]
        # Every rule selects the one job the examples and the ServiceMonitor produce.
        assert f'job="{JOB}"' in r["expr"], r["alert"]


@needs_promtool
def test_promtool_accepts_the_shipped_rules() -> None:
    proc = run([str(PROMTOOL), "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


@needs_promtool
def test_promtool_accepts_the_example_prometheus_config_next_to_the_rules(tmp_path: Path) -> None:
    # Copied as a user would: the config's relative rule_files path finds alerts.yml beside it.
    shutil.copy(PROMETHEUS_EXAMPLE, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    proc = run([str(PROMTOOL), "check", "config", str(tmp_path / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


@needs_amtool
def test_amtool_accepts_the_alertmanager_example() -> None:
    proc = run([str(AMTOOL), "check-config", str(ALERTMANAGER_EXAMPLE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    assert doc["route"]["group_by"] == ["alertname", "target"]
    (receiver,) = [r for r in doc["receivers"] if r["name"] == "breakglass"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == "http://breakglass:8787/api/v1/alertmanager"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"]
    # 0.25 knows neither url_file nor timeout on a webhook.
    assert not {"url_file", "timeout"} & set(hook)


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=BreakglassVmDown", "component=devvm", "target=devvm"], "breakglass"),
        (["alertname=BreakglassDiskNearlyFull", "component=devvm", "target=devvm"], "breakglass"),
        (["alertname=BreakglassWatchdogDown", "component=watchdog"], "people"),
        (["alertname=BreakglassEscalated", "component=watchdog", "target=devvm"], "people"),
    ],
)
def test_devvm_alerts_route_to_the_webhook_and_watchdog_alerts_to_people(
    labels: list[str], receiver: str
) -> None:
    proc = run([str(AMTOOL), "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}",
                f"--verify.receivers={receiver}", *labels])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [receiver]


def firing(alertname: str, **labels: str) -> dict[str, Any]:
    """A promtool exp_samples entry for a firing ALERTS series."""
    rule = next(r for r in alert_rules() if r["alert"] == alertname)
    every = {**labels, **rule["labels"], "alertname": alertname, "alertstate": "firing"}
    text = ",".join(f'{k}="{v}"' for k, v in sorted(every.items()))
    return {"labels": f"ALERTS{{{text}}}", "value": 1}


def alert_case(
    alertname: str, series: dict[str, str], fires: list[dict[str, str]], at: str, quiet_at: str | None = None
) -> dict[str, Any]:
    """One promtool test group: ``series`` in, exactly ``fires`` firing at ``at``, none at ``quiet_at``."""
    checks = [
        {
            "expr": f'ALERTS{{alertname="{alertname}", alertstate="firing"}}',
            "eval_time": at,
            "exp_samples": [firing(alertname, **labels) for labels in fires],
        }
    ]
    if quiet_at is not None:
        checks.append(
            {"expr": f'ALERTS{{alertname="{alertname}", alertstate="firing"}}', "eval_time": quiet_at,
             "exp_samples": []}
        )
    return {
        "interval": "30s",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "promql_expr_test": checks,
    }


def lag_bucket(instance: str, le: str) -> str:
    """A bucket series of the core-loop lag histogram (a whole-watchdog metric: no target)."""
    return f'breakglass_core_loop_lag_seconds_bucket{{job="{JOB}",instance="{instance}:8787",le="{le}"}}'


def sel(name: str, target: str, **more: str) -> str:
    """A series selector as a scrape of breakglass would label it."""
    labels = {"job": JOB, "instance": "breakglass:8787", "target": target, **more}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


@needs_promtool
def test_each_alert_fires_only_after_its_for_duration_and_carries_the_target_label(tmp_path: Path) -> None:
    scrape = {"job": JOB, "instance": "breakglass:8787"}
    gib = 1024**3
    cases = [
        # Stopped from 30 s; for 1m: firing from 1m30s, not at 1m. No status reading: no alert.
        alert_case("BreakglassVmDown", {sel("breakglass_vm_running", "a"): "1 0x10"},
                   [{**scrape, "target": "a"}], at="2m", quiet_at="1m"),
        # SSH failing while running fires; failing because the VM is stopped does not.
        alert_case("BreakglassSshFailing", {
            sel("breakglass_probe_success", "a"): "1 0x10", sel("breakglass_vm_running", "a"): "1x10",
            sel("breakglass_probe_success", "b"): "1 0x10", sel("breakglass_vm_running", "b"): "1 0x10",
        }, [{**scrape, "target": "a"}], at="3m", quiet_at="2m"),
        alert_case("BreakglassSshSlow", {sel("breakglass_ssh_login_seconds", "a"): "1 6x20"},
                   [{**scrape, "target": "a"}], at="6m", quiet_at="5m"),
        # Both memory and swap exhausted fires; low memory with free swap does not.
        alert_case("BreakglassMemoryPressure", {
            sel("breakglass_memory_available_bytes", "a"): f"{8 * gib} {0.1 * gib}x10",
            sel("breakglass_memory_total_bytes", "a"): f"{16 * gib}x10",
            sel("breakglass_swap_used_bytes", "a"): f"0 {3.9 * gib}x10",
            sel("breakglass_swap_total_bytes", "a"): f"{4 * gib}x10",
            sel("breakglass_memory_available_bytes", "b"): f"{8 * gib} {0.1 * gib}x10",
            sel("breakglass_memory_total_bytes", "b"): f"{16 * gib}x10",
            sel("breakglass_swap_used_bytes", "b"): "0x10",
            sel("breakglass_swap_total_bytes", "b"): f"{4 * gib}x10",
        }, [{**scrape, "target": "a"}], at="3m", quiet_at="2m"),
        alert_case("BreakglassDiskNearlyFull", {sel("breakglass_root_disk_used_ratio", "a"): "0.5 0.96x20"},
                   [{**scrape, "target": "a"}], at="6m", quiet_at="5m"),
        alert_case("BreakglassPowerBudgetExhausted",
                   {sel("breakglass_power_budget_remaining", "a"): "3 2 1 0x10"},
                   [{**scrape, "target": "a"}], at="3m", quiet_at="2m"),
        alert_case("BreakglassEscalated", {
            sel("breakglass_escalations_total", "a", reason="budget"): "0 0 1x20",
            sel("breakglass_escalations_total", "a", reason="policy"): "0x20",
        }, [{"job": JOB, "target": "a", "reason": "budget"}], at="2m", quiet_at="30s"),
        # Scrapes stop after 2m ("gone") or rounds stop while scraped ("stuck"); "fine" keeps going.
        alert_case("BreakglassProbeRoundsStale", {
            sel("breakglass_last_round_timestamp_seconds", "gone"): "0+30x4 _x20",
            sel("breakglass_last_round_timestamp_seconds", "stuck"): "0+30x4 120x20",
            sel("breakglass_last_round_timestamp_seconds", "fine"): "0+30x20",
        }, [{**scrape, "target": "gone"}, {**scrape, "target": "stuck"}], at="5m", quiet_at="4m"),
        # Half the wake-ups 100 ms-1 s late on "slow" fires; all under 50 ms on "fast" does not.
        alert_case("BreakglassCoreLoopLagging", {
            **{lag_bucket("slow", le): v for le, v in
               (("0.05", "0+5x40"), ("0.1", "0+5x40"), ("1.0", "0+10x40"), ("+Inf", "0+10x40"))},
            **{lag_bucket("fast", le): "0+10x40" for le in ("0.05", "0.1", "1.0", "+Inf")},
        }, [{"job": JOB, "instance": "slow:8787"}], at="12m", quiet_at="9m"),
        # No `target` on the dead-man for the whole watchdog: it is about breakglass itself.
        alert_case("BreakglassWatchdogDown", {'up{job="breakglass",instance="breakglass:8787"}': "1 0x10"},
                   [scrape], at="3m", quiet_at="2m"),
    ]
    tested = {c["promql_expr_test"][0]["expr"].split('"')[1] for c in cases}
    assert tested == {r["alert"] for r in alert_rules()}, "every shipped alert needs a case here"
    spec = {"rule_files": [str(ALERTS)], "evaluation_interval": "30s", "tests": cases}
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    proc = run([str(PROMTOOL), "test", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_test_copy_of_the_rules_scales_for_durations_and_nothing_else(tmp_path: Path) -> None:
    copy = rules_with_for(ALERTS, tmp_path / "alerts.yml", SCALE)
    shipped = alert_rules()
    scaled = [r for g in yaml.safe_load(copy.read_text())["groups"] for r in g["rules"]]
    assert [r["expr"] for r in scaled] == [r["expr"] for r in shipped]
    durations = {r["alert"]: (r["for"], s["for"]) for r, s in zip(shipped, scaled, strict=True)}
    assert durations["BreakglassVmDown"] == ("1m", "6s")
    assert durations["BreakglassSshFailing"] == ("2m", "12s")
    assert durations["BreakglassEscalated"] == ("0s", "0s")


# --- the real stack ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Simulator, serve (own rules slowed), Alertmanager and Prometheus on loopback."""
    with Servers() as servers:
        s = servers.stack(tmp_path_factory.mktemp("promstack"))
        s.start_all(quiet_watchdog=True, for_scale=SCALE)
        # Wait for the first scrapes: Prometheus applies new scrape targets every 5 s.
        s.wait(lambda: s.query(f'up{{job="{JOB}"}} == 1'), 20, "Prometheus to scrape serve")
        yield s


@pytest.fixture(scope="module")
def story(stack: Stack) -> dict[str, Any]:
    """Inject vm_stopped; follow the alert through Alertmanager to the incident and its close."""
    s = stack
    start = time.time()
    # A few healthy scrapes first, so the range queries have points from before the fault too.
    s.wait(lambda: s.query(f'count_over_time(up{{job="{JOB}"}}[10s]) >= 3'), 15, "three scrapes")
    s.inject("vm_stopped")
    injected = time.time()
    alert = s.wait(lambda: s.firing("BreakglassVmDown"), 20, "BreakglassVmDown to fire")
    fired = time.time()

    def opened() -> dict[str, Any] | None:
        rows = s.incidents()
        return rows[-1] if rows else None

    first = s.wait(opened, 20, "the webhook to open an incident")
    opened_at = time.time()
    closed = s.wait(
        lambda: next((i for i in s.incidents() if i["id"] == first["id"] and i["state"] in CLOSED), None),
        30, "the incident to close",
    )
    # The close reaches Prometheus with the next scrape (the annotations read it from there).
    s.wait(lambda: s.query(f'breakglass_incidents_closed_total{{job="{JOB}"}} >= 1'), 10, "a scraped close")
    # The VM runs again, the alert resolves, and Alertmanager sends the resolve too (send_resolved).
    s.wait(lambda: s.metric("breakglass_alerts_received_total", status="resolved") >= 1, 25,
           "Alertmanager to deliver the resolve")
    return {
        "start": start,
        "injected": injected,
        "alert": alert,
        "fired": fired,
        "opened": opened_at,
        "incident": closed,
        "incidents": s.incidents(),
        "end": time.time(),
    }


@pytest.mark.integration
@needs_servers
@needs_promtool
def test_promtool_check_metrics_accepts_a_real_scrape_of_serve(stack: Stack) -> None:
    status, body = http(stack.serve_url + "/metrics")
    assert status == 200
    assert b"breakglass_probe_success" in body
    proc = run([str(PROMTOOL), "check", "metrics"], stdin=body.decode())
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.integration
@needs_servers
@needs_promtool
def test_promtool_accepts_the_test_prometheus_config_the_stack_runs(stack: Stack) -> None:
    assert stack.prometheus_yml is not None
    proc = run([str(PROMTOOL), "check", "config", str(stack.prometheus_yml)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.integration
@needs_servers
def test_prometheus_loads_every_shipped_rule_and_evaluates_it_without_error(stack: Stack) -> None:
    def rules() -> list[dict[str, Any]]:
        groups = json.loads(http(stack.prometheus_url + "/api/v1/rules")[1])["data"]["groups"]
        return [r for g in groups for r in g["rules"]]

    assert {r["name"] for r in rules()} == {r["alert"] for r in alert_rules()}
    evaluated = stack.wait(
        lambda: (lambda now: now if all(r["health"] != "unknown" for r in now) else None)(rules()),
        10, "every rule to be evaluated once",
    )
    assert all(r["health"] == "ok" for r in evaluated), [(r["name"], r.get("lastError")) for r in evaluated]


@pytest.mark.integration
@needs_servers
def test_the_target_variable_lists_the_simulated_target(stack: Stack) -> None:
    url = stack.prometheus_url + "/api/v1/label/target/values?match[]=breakglass_probe_success"
    # The series exists once serve has finished a probe round and Prometheus has scraped it since.
    values = stack.wait(lambda: json.loads(http(url)[1])["data"], 30, "the target label's values")
    assert values == ["devvm"]


@pytest.mark.integration
@needs_servers
def test_a_stopped_vm_fires_the_alert_and_the_webhook_opens_an_incident_that_resolves(
    story: dict[str, Any], stack: Stack
) -> None:
    alert = story["alert"]
    assert alert["labels"]["target"] == "devvm"
    assert alert["labels"]["component"] == "devvm"
    inc = story["incident"]
    assert inc["trigger"] == "alertmanager"
    assert inc["who"] == "alertmanager"
    assert inc["reason"].startswith("BreakglassVmDown")
    assert inc["evidence"]["alert"]["labels"]["target"] == "devvm"
    assert inc["state"] == "resolved", inc.get("report")
    assert [(p["verb"], p["result"]) for p in inc["power_actions"]] == [("start", "ok")]
    # Only Alertmanager opened anything: the watchdog's own (slowed) rules never fired.
    assert [i["trigger"] for i in story["incidents"]] == ["alertmanager"]
    assert stack.metric("breakglass_incidents_opened_total", trigger="rule") == 0
    assert stack.metric("breakglass_alerts_received_total", status="firing") >= 1
    # Alert to incident within a few Alertmanager group intervals, not minutes.
    assert story["opened"] - story["fired"] < 5


@pytest.mark.integration
@needs_servers
def test_every_dashboard_query_returns_data_from_prometheus(story: dict[str, Any], stack: Stack) -> None:
    # After the story, so the annotation queries have an opened and closed incident and a power action.
    end = time.time()
    span = int(end - story["start"]) + 5
    # A whole number of steps back from now, so the last step is now and sees the latest scrape.
    start = end - span
    empty: list[str] = []
    queries = dashboard_queries()
    assert len(queries) >= 25
    for where, expr in queries:
        result = stack.query_range(substitute(expr, span), start, end, STEP)
        if not any(series["values"] for series in result):
            empty.append(f"{where}: {substitute(expr, span)}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


@pytest.mark.integration
@needs_servers
def test_stopping_serve_fires_the_watchdog_down_dead_man(stack: Stack, story: dict[str, Any]) -> None:
    # Last: it stops serve. The rule may have fired while Prometheus waited for its first scrape.
    stack.wait(lambda: stack.firing("BreakglassWatchdogDown") is None, 15, "WatchdogDown to clear")
    stack.child("serve").stop()
    alert = stack.wait(lambda: stack.firing("BreakglassWatchdogDown"), 30, "BreakglassWatchdogDown to fire")
    assert alert["labels"]["component"] == "watchdog"
    assert "target" not in alert["labels"]
