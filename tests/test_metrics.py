"""Metrics: readings and events land in the injected registry, and promtool accepts the output."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from readings_support import GiB, healthy_readings

from breakglass import __version__
from breakglass.metrics import CONDITIONS, Metrics
from breakglass.watchdog.probes import Readings

T0 = 1_800_000_000.0


def readings(**overrides: Any) -> Readings:
    """A healthy round for target "devvm", with ``overrides`` applied."""
    fields: dict[str, Any] = {
        "at": T0, "duration_seconds": 0.5, "ssh_login_seconds": 0.25, "load1": 1.5, "load5": 1.25,
        "load15": 0.75, "mem_available_bytes": 6 * GiB, "swap_total_bytes": 2 * GiB,
        "swap_used_bytes": GiB // 2, "disk_used_ratio": 0.42, "failed_units": ("a.service", "b.service"),
        "uptime_seconds": 5000.0,
    }
    return healthy_readings(**{**fields, **overrides})


SSH_DOWN: dict[str, Any] = {
    "ssh_ok": False,
    "ssh_error": "timeout",
    "ssh_login_seconds": None,
    "load1": None,
    "load5": None,
    "load15": None,
    "ncpu": None,
    "mem_total_bytes": None,
    "mem_available_bytes": None,
    "swap_total_bytes": None,
    "swap_used_bytes": None,
    "disk_used_ratio": None,
    "failed_units": None,
}
PVE_DOWN: dict[str, Any] = {
    "pve_ok": False,
    "pve_error": "refused",
    "vm_status": None,
    "qmp_ok": None,
    "qmp_status": None,
    "guest_agent_ok": None,
    "uptime_seconds": None,
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


READING_GAUGES = {
    "breakglass_probe_success": 1,
    "breakglass_ssh_login_seconds": 0.25,
    "breakglass_load1": 1.5,
    "breakglass_load5": 1.25,
    "breakglass_load15": 0.75,
    "breakglass_cpus": 4,
    "breakglass_memory_available_bytes": 6 * GiB,
    "breakglass_memory_total_bytes": 8 * GiB,
    "breakglass_swap_used_bytes": GiB // 2,
    "breakglass_swap_total_bytes": 2 * GiB,
    "breakglass_root_disk_used_ratio": 0.42,
    "breakglass_failed_units": 2,
    "breakglass_guest_agent_up": 1,
    "breakglass_vm_running": 1,
    "breakglass_qmp_up": 1,
    "breakglass_pve_reachable": 1,
    "breakglass_last_round_timestamp_seconds": T0 + 0.5,
    "breakglass_last_successful_round_timestamp_seconds": T0 + 0.5,
}


def test_a_healthy_round_sets_every_reading_gauge(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe_readings(readings())
    for name, expected in READING_GAUGES.items():
        assert value(registry, name, target="devvm") == expected, name
    assert value(registry, "breakglass_probe_rounds_total", target="devvm", result="ok") == 1
    assert value(registry, "breakglass_probe_duration_seconds_count", target="devvm") == 1
    assert value(registry, "breakglass_probe_duration_seconds_sum", target="devvm") == 0.5


def test_readings_that_could_not_be_taken_drop_their_series(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.observe_readings(readings())
    metrics.observe_readings(readings(at=T0 + 30, **SSH_DOWN))
    assert value(registry, "breakglass_probe_success", target="devvm") == 0
    for name in ("breakglass_load1", "breakglass_memory_available_bytes", "breakglass_failed_units"):
        assert value(registry, name, target="devvm") is None, name
    assert value(registry, "breakglass_ssh_login_seconds", target="devvm") is None
    # The Proxmox side still answered.
    assert value(registry, "breakglass_vm_running", target="devvm") == 1
    assert value(registry, "breakglass_probe_rounds_total", target="devvm", result="partial") == 1


def test_the_dead_man_timestamp_moves_only_on_rounds_that_reach_the_guest(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.observe_readings(readings())
    metrics.observe_readings(readings(at=T0 + 30, **SSH_DOWN, **PVE_DOWN))
    assert value(registry, "breakglass_last_successful_round_timestamp_seconds", target="devvm") == (
        T0 + 0.5
    )
    assert value(registry, "breakglass_last_round_timestamp_seconds", target="devvm") == T0 + 30.5
    assert value(registry, "breakglass_probe_rounds_total", target="devvm", result="failed") == 1
    assert value(registry, "breakglass_pve_reachable", target="devvm") == 0
    assert value(registry, "breakglass_guest_agent_up", target="devvm") is None


def test_a_stopped_vm_exports_zero_for_running_and_agent(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.observe_readings(readings(vm_status="stopped", qmp_ok=False, guest_agent_ok=False))
    assert value(registry, "breakglass_vm_running", target="devvm") == 0
    assert value(registry, "breakglass_qmp_up", target="devvm") == 0
    assert value(registry, "breakglass_guest_agent_up", target="devvm") == 0


def test_set_conditions_marks_active_ones_and_zeroes_the_rest(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.set_conditions("devvm", ["ssh_down", "disk_full"])
    metrics.set_conditions("devvm", ["disk_full"])
    for cond in CONDITIONS:
        expected = 1 if cond == "disk_full" else 0
        assert value(registry, "breakglass_condition_active", target="devvm", condition=cond) == expected


def test_init_target_creates_zero_series_for_dashboards(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.init_target("devvm")
    assert value(registry, "breakglass_incidents_active", target="devvm") == 0
    assert value(registry, "breakglass_incidents_opened_total", target="devvm", trigger="rule") == 0
    assert (
        value(registry, "breakglass_power_actions_total", target="devvm", verb="cycle", result="dry_run")
        == 0
    )
    assert value(registry, "breakglass_escalations_total", target="devvm", reason="budget") == 0
    assert value(registry, "breakglass_condition_active", target="devvm", condition="load_high") == 0
    # The closing states, as the store has them: an escalated incident stays open (it is
    # counted in escalations_total), so no closed series waits for it at 0 forever.
    for state in ("resolved", "failed"):
        assert value(registry, "breakglass_incidents_closed_total", target="devvm", state=state) == 0
    assert value(registry, "breakglass_incidents_closed_total", target="devvm", state="escalated") is None
    # Readings stay absent until a round has really been taken: a 0 would look like data.
    assert value(registry, "breakglass_load1", target="devvm") is None


def test_incident_helpers_count_and_time_incidents(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.incident_opened("devvm", "alertmanager")
    assert value(registry, "breakglass_incidents_active", target="devvm") == 1
    metrics.incident_closed("devvm", "resolved", 95.0)
    assert value(registry, "breakglass_incidents_active", target="devvm") == 0
    assert value(registry, "breakglass_incidents_opened_total", target="devvm", trigger="alertmanager") == 1
    assert value(registry, "breakglass_incidents_closed_total", target="devvm", state="resolved") == 1
    bucket = "breakglass_incident_duration_seconds_bucket"
    assert value(registry, bucket, target="devvm", outcome="resolved", le="120.0") == 1
    assert value(registry, bucket, target="devvm", outcome="resolved", le="60.0") == 0


def test_power_budget_and_escalation_helpers(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.power_action("devvm", "cycle", "ok")
    metrics.power_action("devvm", "cycle", "denied")
    metrics.set_budget("devvm", 2, T0 + 600)
    metrics.escalation("devvm", "budget")
    assert value(registry, "breakglass_power_actions_total", target="devvm", verb="cycle", result="ok") == 1
    assert (
        value(registry, "breakglass_power_actions_total", target="devvm", verb="cycle", result="denied") == 1
    )
    assert value(registry, "breakglass_power_budget_remaining", target="devvm") == 2
    assert value(registry, "breakglass_power_next_allowed_timestamp_seconds", target="devvm") == T0 + 600
    assert value(registry, "breakglass_escalations_total", target="devvm", reason="budget") == 1
    metrics.set_budget("devvm", 3, None)
    assert value(registry, "breakglass_power_next_allowed_timestamp_seconds", target="devvm") == 0


def test_unexpected_label_values_become_other(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.escalation("devvm", "the disk is full because of /var/log/huge.log")
    metrics.power_action("devvm", "rm -rf", "ok")
    metrics.incident_opened("devvm", "carrier pigeon")
    metrics.alert_received("weird")
    metrics.agent_fallback("devvm", "something new")
    metrics.round_failed("devvm", "exploded")
    assert value(registry, "breakglass_escalations_total", target="devvm", reason="other") == 1
    assert value(registry, "breakglass_power_actions_total", target="devvm", verb="other", result="ok") == 1
    assert value(registry, "breakglass_incidents_opened_total", target="devvm", trigger="other") == 1
    assert value(registry, "breakglass_alerts_received_total", status="other") == 1
    assert value(registry, "breakglass_agent_fallbacks_total", target="devvm", reason="other") == 1
    assert value(registry, "breakglass_probe_rounds_total", target="devvm", result="other") == 1


def test_agent_and_webhook_counters(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.agent_usage("devvm", 1200, 300)
    metrics.agent_usage("devvm", 800, 100)
    metrics.agent_fallback("devvm", "unavailable")
    metrics.alert_received("firing")
    metrics.round_failed("devvm", "timeout")
    assert value(registry, "breakglass_agent_tokens_total", target="devvm", direction="input") == 2000
    assert value(registry, "breakglass_agent_tokens_total", target="devvm", direction="output") == 400
    assert value(registry, "breakglass_agent_fallbacks_total", target="devvm", reason="unavailable") == 1
    assert value(registry, "breakglass_alerts_received_total", status="firing") == 1
    assert value(registry, "breakglass_probe_rounds_total", target="devvm", result="timeout") == 1


def test_build_info_carries_the_version(registry: CollectorRegistry, metrics: Metrics) -> None:
    assert value(registry, "breakglass_build_info", version=__version__) == 1


def test_each_instance_without_a_registry_gets_its_own() -> None:
    a, b = Metrics(), Metrics()
    a.alert_received("firing")
    assert a.registry is not b.registry
    assert b.registry.get_sample_value("breakglass_alerts_received_total", {"status": "firing"}) is None


def exercise(m: Metrics) -> None:
    """Touch every metric at least once."""
    m.init_target("devvm")
    m.init_target("other-vm")
    m.observe_readings(readings())
    m.observe_readings(readings(target="other-vm", **SSH_DOWN, **PVE_DOWN))
    m.set_conditions("other-vm", ["ssh_down", "pve_unreachable"])
    m.incident_opened("other-vm", "rule")
    m.power_action("other-vm", "cycle", "ok")
    m.set_budget("other-vm", 2, T0 + 600)
    m.escalation("other-vm", "observer_side")
    m.incident_closed("other-vm", "escalated", 400.0)
    m.agent_usage("devvm", 10, 5)
    m.agent_fallback("devvm", "no_api_key")
    m.alert_received("resolved")
    m.round_failed("devvm", "error")


def test_the_output_has_no_created_series_and_every_family_is_prefixed(metrics: Metrics) -> None:
    exercise(metrics)
    text = metrics.render().decode()
    assert "_created" not in text
    families = list(metrics.registry.collect())
    assert len(families) >= 30
    for family in families:
        assert family.name.startswith("breakglass_"), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            assert not math.isnan(sample.value), sample


def test_promtool_accepts_the_output(metrics: Metrics) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; make test installs it as root)")
    exercise(metrics)
    out = subprocess.run(
        [promtool, "check", "metrics"],
        input=metrics.render(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    problems = (out.stdout + out.stderr).decode()
    assert out.returncode == 0, problems
    assert problems.strip() == ""


# -- the scrape: cheap at a thousand targets, and the same text ---------------------------------------

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"


def fleet(metrics: Metrics, targets: int, at: float = T0) -> None:
    """``targets`` targets initialised with one green round each, as the core leaves them."""
    for i in range(targets):
        name = f"vm{i:04d}"
        metrics.init_target(name)
        metrics.observe_readings(readings(target=name, at=at))
        metrics.set_conditions(name, [])


def interpreter_calls(work: Callable[[], object]) -> int:
    """How many Python and C functions ``work`` calls: the work it does, without a clock."""
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_a_scrape_with_nothing_new_costs_per_family_not_per_series(metrics: Metrics) -> None:
    # 200 targets are about 18,000 series. Rendering them anew on every scrape (a Sample per
    # series, its labels escaped and sorted, its value formatted) took about 60 calls a series:
    # 0.8 s at 1,000 targets, seconds while the core loop competed for the interpreter.
    fleet(metrics, 200)
    lines = metrics.render().count(b"\n")
    assert lines > 17_500
    calls = interpreter_calls(metrics.render)
    assert calls < 500, f"{calls} calls to render {lines} unchanged lines"


def test_a_round_re_renders_only_what_it_changed(metrics: Metrics) -> None:
    fleet(metrics, 200)
    metrics.render()
    # Every target's next round: new load, login time, timestamps, round counter and duration.
    for i in range(200):
        metrics.observe_readings(readings(target=f"vm{i:04d}", at=T0 + 15, load1=2.5, ssh_login_seconds=0.5))
        metrics.set_conditions(f"vm{i:04d}", [])
    calls = interpreter_calls(metrics.render)
    series = metrics.render().count(b"\n")
    # The families the round touched are joined again (a call per series in them) and the
    # changed series formatted again; the zero counters, conditions and flags are not.
    assert calls < series * 2, f"{calls} calls for {series} lines"


def test_the_scrape_is_the_text_prometheus_client_writes_in_both_formats(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    exercise(metrics)
    fleet(metrics, 3)
    metrics.render()
    metrics.render(OPENMETRICS_ACCEPT)
    # What changed since the last scrape (a new value, a removed series, a new series) shows.
    metrics.observe_readings(readings(target="vm0001", **SSH_DOWN))
    metrics.set_conditions("vm0001", ["ssh_down"])
    metrics.incident_opened("vm0001", "rule")
    metrics.init_target("late-vm")
    metrics.round_started("vm0002", 0.3, 2)
    text = metrics.render()
    assert value(registry, "breakglass_load1", target="vm0001") is None
    assert b'breakglass_load1{target="vm0001"}' not in text
    assert b'breakglass_condition_active{condition="ssh_down",target="vm0001"} 1.0\n' in text
    assert b'breakglass_incidents_active{target="late-vm"} 0.0\n' in text
    assert text == generate_latest(registry)
    body, content_type = metrics.scrape(OPENMETRICS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text")
    assert body == generate_openmetrics(registry)
    assert body.endswith(b"# EOF\n")
