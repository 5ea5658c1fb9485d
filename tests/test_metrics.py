"""Metrics: readings and events land in the injected registry, and promtool accepts the output."""

from __future__ import annotations

import math
import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
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
