"""Every Prometheus metric breakglass exports, in one injectable registry.

Names start with ``breakglass_`` and use base units; counters are declared
without ``_total`` (the client appends it). Labels are bounded: ``target``
comes from the config, every other label takes one of the fixed values below,
and the helper methods map anything else to "other" so a surprise never
becomes a new series.

Attribute names are the metric names without ``breakglass_``, ``_total`` and
``_seconds`` (``probe_rounds`` is ``breakglass_probe_rounds_total``).

Readings that could not be taken (None, e.g. memory while SSH is down) remove
their series instead of exporting a stale value or NaN: Prometheus then marks
the series stale, graphs show a gap, and sums and alerts ignore it.

``_created`` series are switched off process-wide on import: the client offers
no per-registry switch, and they only double the series count.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics

from breakglass import __version__
from breakglass.exposition import CounterFamily, Exposition, GaugeFamily, HistogramFamily
from breakglass.remote import POWER_VERBS
from breakglass.store.schema import CLOSED_STATES as STORE_CLOSED_STATES
from breakglass.watchdog.rules import CONDITIONS

if TYPE_CHECKING:
    from breakglass.watchdog.probes import Readings

disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

CONTENT_TYPE = CONTENT_TYPE_LATEST

OTHER = "other"
VERBS: tuple[str, ...] = tuple(sorted(str(v) for v in POWER_VERBS))
POWER_RESULTS = ("ok", "failed", "denied", "dry_run", "unknown", "refused")
TRIGGERS = ("rule", "manual", "alertmanager", "cli")
# An escalation is not a close (the incident stays open, escalated); it is counted in
# breakglass_escalations_total by reason, so incidents_closed_total has no such series.
CLOSED_STATES = STORE_CLOSED_STATES
ESCALATION_REASONS = (
    "budget",
    "observer_side",
    "unverified",
    "agent_gave_up",
    "gave_up",
    "policy",
    "pve_unreachable",
    "dry_run",
)
# ok: both sides answered; partial: one did; failed: neither; timeout/error: the round itself broke.
ROUND_RESULTS = ("ok", "partial", "failed", "timeout", "error")
# cache_write: input written to the prompt cache; cache_read: input served from it (both billed apart).
TOKEN_DIRECTIONS = ("input", "output", "cache_write", "cache_read")
# Why the model agent handed over to the runbook (the agent's fallback kinds).
FALLBACK_REASONS = (
    "no_api_key",
    "auth",
    "unavailable",
    "error",
    "token_budget",
    "wall_clock",
    "max_turns",
    "refusal",
    "max_tokens",
    "stop_reason",
)
ALERT_STATUSES = ("firing", "resolved")

PROBE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 15.0)
# The core loop's lag: 100 ms is the promise (no tool may stall the service).
LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)
INCIDENT_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 21600.0)


def bounded(value: str | None, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else "other"."""
    return value if value is not None and value in allowed else OTHER


class Metrics:
    """The service's metrics, all registered in one ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.exposition = r = Exposition(self.registry)
        t = ("target",)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = t) -> GaugeFamily:
            return GaugeFamily(r, f"breakglass_{name}", doc, labels)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> CounterFamily:
            return CounterFamily(r, f"breakglass_{name}", doc, labels)

        # Per-target readings of the latest probe round.
        self.probe_success = gauge("probe_success", "1 if the latest round logged in to the guest over SSH")
        self.ssh_login = gauge(
            "ssh_login_seconds", "SSH connect + key exchange + login time of the latest round's fresh login"
        )
        self.load1 = gauge("load1", "Guest 1-minute load average")
        self.load5 = gauge("load5", "Guest 5-minute load average")
        self.load15 = gauge("load15", "Guest 15-minute load average")
        self.cpus = gauge("cpus", "Guest online CPUs (nproc)")
        self.memory_available_bytes = gauge("memory_available_bytes", "Guest MemAvailable")
        self.memory_total_bytes = gauge("memory_total_bytes", "Guest MemTotal")
        self.swap_used_bytes = gauge("swap_used_bytes", "Guest swap in use (SwapTotal - SwapFree)")
        self.swap_total_bytes = gauge("swap_total_bytes", "Guest SwapTotal")
        self.root_disk_used_ratio = gauge("root_disk_used_ratio", "Guest root filesystem used, 0..1")
        self.failed_units = gauge("failed_units", "Guest systemd units in the failed state")
        self.guest_agent_up = gauge("guest_agent_up", "1 if the Proxmox host reaches the guest agent")
        self.vm_running = gauge("vm_running", "1 if the Proxmox host reports the VM running")
        self.qmp_up = gauge("qmp_up", "1 if the VM's QMP socket answers on the Proxmox host")
        self.pve_reachable = gauge("pve_reachable", "1 if the Proxmox host answered the latest status")
        self.last_round_timestamp = gauge(
            "last_round_timestamp_seconds", "Unix time the latest probe round finished (watchdog alive)"
        )
        self.last_successful_round_timestamp = gauge(
            "last_successful_round_timestamp_seconds",
            "Unix time the latest round that reached the guest over SSH finished (dead-man signal)",
        )
        self.probe_rounds = counter("probe_rounds", "Probe rounds by result", ("target", "result"))
        self.probe_duration = HistogramFamily(
            r,
            "breakglass_probe_duration_seconds",
            "Wall time of a probe round",
            t,
            PROBE_BUCKETS,
        )
        self.round_lateness = HistogramFamily(
            r,
            "breakglass_probe_round_lateness_seconds",
            "How long after its scheduled slot a probe round started (all targets)",
            (),
            LATENESS_BUCKETS,
        )
        self.rounds_inconclusive = CounterFamily(
            r,
            "breakglass_probe_rounds_inconclusive",
            "Rounds that timed out while the watchdog's own loop ran late: shown, not counted by the rules",
            (),
        )
        self.rounds_missed = counter(
            "probe_rounds_missed", "Scheduled rounds skipped because the previous one overran", t
        )
        self.condition_active = gauge(
            "condition_active", "1 while a rule condition is active", ("target", "condition")
        )

        # Incidents.
        self.incidents_opened = counter(
            "incidents_opened", "Incidents opened, by what triggered them", ("target", "trigger")
        )
        self.incidents_active = gauge("incidents_active", "Incidents currently open (0 or 1)")
        self.incident_duration = HistogramFamily(
            r,
            "breakglass_incident_duration_seconds",
            "Time from opening to closing an incident",
            ("target", "outcome"),
            INCIDENT_BUCKETS,
        )
        self.incidents_closed = counter(
            "incidents_closed", "Incidents closed, by final state", ("target", "state")
        )
        self.escalations = counter(
            "escalations", "Incidents handed to a person, by reason", ("target", "reason")
        )

        # Power actions and their budget.
        self.power_actions = counter(
            "power_actions", "Power verbs decided, by verb and result", ("target", "verb", "result")
        )
        self.power_budget_remaining = gauge(
            "power_budget_remaining", "Power actions left in the current budget window"
        )
        self.power_next_allowed_timestamp = gauge(
            "power_next_allowed_timestamp_seconds",
            "Unix time the next power action is allowed (0: allowed now)",
        )

        # The agent, the webhook, the build.
        self.agent_tokens = counter(
            "agent_tokens", "Model tokens used by the recovery agent", ("target", "direction")
        )
        self.agent_fallbacks = counter(
            "agent_fallbacks", "Incidents handed from the model to the runbook", ("target", "reason")
        )
        self.alerts_received = counter(
            "alerts_received", "Alertmanager alerts received by the webhook", ("status",)
        )
        self.loop_lag = HistogramFamily(
            r,
            "breakglass_core_loop_lag_seconds",
            "How late the core's asyncio loop ran a timer it had scheduled (time blocked by work on it)",
            (),
            LOOP_LAG_BUCKETS,
        )
        self.build_info = gauge("build_info", "Always 1; the version is a label", ("version",))
        self.build_info.labels(version=__version__).set(1)

    # -- setup -------------------------------------------------------------

    def init_target(self, target: str) -> None:
        """Create a target's zero-valued series so dashboards show 0 rather than nothing."""
        for cond in CONDITIONS:
            self.condition_active.labels(target=target, condition=cond).set(0)
        self.incidents_active.labels(target=target).set(0)
        for result in ROUND_RESULTS:
            self.probe_rounds.labels(target=target, result=result)
        self.rounds_missed.labels(target=target)
        for trigger in TRIGGERS:
            self.incidents_opened.labels(target=target, trigger=trigger)
        for state in CLOSED_STATES:
            self.incidents_closed.labels(target=target, state=state)
        for reason in ESCALATION_REASONS:
            self.escalations.labels(target=target, reason=reason)
        for verb in VERBS:
            for result in POWER_RESULTS:
                self.power_actions.labels(target=target, verb=verb, result=result)
        for direction in TOKEN_DIRECTIONS:
            self.agent_tokens.labels(target=target, direction=direction)

    # -- probe rounds ------------------------------------------------------

    def observe_readings(self, r: Readings) -> None:
        """Export one probe round: call once per round."""
        t = r.target
        _set(self.probe_success, t, 1 if r.ssh_ok else 0)
        _set(self.ssh_login, t, r.ssh_login_seconds)
        _set(self.load1, t, r.load1)
        _set(self.load5, t, r.load5)
        _set(self.load15, t, r.load15)
        _set(self.cpus, t, r.ncpu)
        _set(self.memory_available_bytes, t, r.mem_available_bytes)
        _set(self.memory_total_bytes, t, r.mem_total_bytes)
        _set(self.swap_used_bytes, t, r.swap_used_bytes)
        _set(self.swap_total_bytes, t, r.swap_total_bytes)
        _set(self.root_disk_used_ratio, t, r.disk_used_ratio)
        _set(self.failed_units, t, None if r.failed_units is None else len(r.failed_units))
        _set(self.pve_reachable, t, 1 if r.pve_ok else 0)
        _set(self.guest_agent_up, t, _flag(r.guest_agent_ok))
        _set(self.qmp_up, t, _flag(r.qmp_ok))
        _set(self.vm_running, t, None if r.vm_status is None else int(r.vm_status == "running"))

        sides = int(r.ssh_ok) + int(r.pve_ok)
        self.probe_rounds.labels(target=t, result=("failed", "partial", "ok")[sides]).inc()
        self.probe_duration.labels(target=t).observe(r.duration_seconds)
        finished = r.at + r.duration_seconds
        self.last_round_timestamp.labels(target=t).set(finished)
        if r.ssh_ok:
            self.last_successful_round_timestamp.labels(target=t).set(finished)

    def round_started(self, target: str, lateness_seconds: float, missed: int) -> None:
        """Record a round's start: seconds after its slot, and slots skipped before it."""
        self.round_lateness.observe(lateness_seconds)
        if missed:
            self.rounds_missed.labels(target=target).inc(missed)

    def round_inconclusive(self) -> None:
        """Count a round the rules set aside because the watchdog itself was overloaded."""
        self.rounds_inconclusive.inc()

    def round_failed(self, target: str, result: str) -> None:
        """Count a round that produced no readings ("timeout" or "error")."""
        self.probe_rounds.labels(target=target, result=bounded(result, ROUND_RESULTS)).inc()

    def set_conditions(self, target: str, active: Iterable[str]) -> None:
        """Set each known condition to 1 if it is in ``active``, else 0."""
        on = set(active)
        for cond in CONDITIONS:
            self.condition_active.labels(target=target, condition=cond).set(int(cond in on))

    # -- incidents, power, agent, webhook ------------------------------------

    def incident_opened(self, target: str, trigger: str) -> None:
        """Count an opened incident and mark the target as having one."""
        self.incidents_opened.labels(target=target, trigger=bounded(trigger, TRIGGERS)).inc()
        self.incidents_active.labels(target=target).set(1)

    def incident_closed(self, target: str, state: str, duration_seconds: float) -> None:
        """Count a closed incident, observe how long it lasted, clear the active flag."""
        state = bounded(state, CLOSED_STATES)
        self.incidents_closed.labels(target=target, state=state).inc()
        self.incident_duration.labels(target=target, outcome=state).observe(duration_seconds)
        self.incidents_active.labels(target=target).set(0)

    def escalation(self, target: str, reason: str | None) -> None:
        """Count an escalation under a bounded reason."""
        self.escalations.labels(target=target, reason=bounded(reason, ESCALATION_REASONS)).inc()

    def power_action(self, target: str, verb: str, result: str) -> None:
        """Count a power verb decision (ok, failed, denied, dry_run or unknown)."""
        self.power_actions.labels(
            target=target, verb=bounded(str(verb), VERBS), result=bounded(result, POWER_RESULTS)
        ).inc()

    def set_budget(self, target: str, remaining: int, next_allowed_at: float | None) -> None:
        """Export the power budget: actions left, and when the next is allowed (0: now)."""
        self.power_budget_remaining.labels(target=target).set(remaining)
        self.power_next_allowed_timestamp.labels(target=target).set(next_allowed_at or 0)

    def agent_usage(
        self,
        target: str,
        input_tokens: int,
        output_tokens: int,
        cache_write_tokens: int = 0,
        cache_read_tokens: int = 0,
    ) -> None:
        """Add one model response's token usage, prompt-cache writes and reads apart."""
        for direction, n in (
            ("input", input_tokens),
            ("output", output_tokens),
            ("cache_write", cache_write_tokens),
            ("cache_read", cache_read_tokens),
        ):
            self.agent_tokens.labels(target=target, direction=direction).inc(max(0, n))

    def loop_lag_observed(self, seconds: float) -> None:
        """Record how late the core loop woke up for one timer."""
        self.loop_lag.observe(max(0.0, seconds))

    def agent_fallback(self, target: str, reason: str) -> None:
        """Count an incident the model handed to the runbook."""
        self.agent_fallbacks.labels(target=target, reason=bounded(reason, FALLBACK_REASONS)).inc()

    def alert_received(self, status: str) -> None:
        """Count one Alertmanager alert by status (firing or resolved)."""
        self.alerts_received.labels(status=bounded(status, ALERT_STATUSES)).inc()

    # -- exposition ------------------------------------------------------------

    def render(self, accept: str = "") -> bytes:
        """The service's metrics in the Prometheus text format (or OpenMetrics, if ``accept`` asks)."""
        return self.exposition.render(accept)[0]

    def scrape(self, accept: str) -> tuple[bytes, str]:
        """Body and content type for a scrape sending ``accept`` (Prometheus text or OpenMetrics)."""
        return self.exposition.render(accept)


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _set(g: GaugeFamily, target: str, value: float | None) -> None:
    """Set a per-target gauge, or drop its series when there is no reading."""
    if value is None:
        g.remove(target)
    else:
        g.labels(target=target).set(value)
