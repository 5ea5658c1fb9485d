"""The shipped probe and rule defaults: fast detection, and a noisy hour opens nothing.

Rounds are fed to the real rules on the shipped defaults' grid with time as a
parameter: a stall hangs every login that starts while it lasts (the guest
agent is silent too), a load spike raises load1 while it lasts.
"""

from __future__ import annotations

import dataclasses

import pytest
from web_support import healthy_readings

from breakglass.config import ProbeSettings, RuleSettings
from breakglass.watchdog.probes import Readings
from breakglass.watchdog.rules import TargetState, evaluate

PROBE = ProbeSettings()
RULES = RuleSettings()
STOCK_SECONDS = 99.0  # the stock Prometheus path's fastest measured detection (issue 13)
STALLED_ROUND_SECONDS = max(PROBE.connect_timeout_seconds, PROBE.status_timeout_seconds)


def reading(at: float, stalled: bool, loaded: bool) -> Readings:
    r = healthy_readings("devvm", at=at)
    if stalled:
        r = dataclasses.replace(
            r,
            ssh_ok=False,
            ssh_error=f"timeout: no SSH login within {PROBE.connect_timeout_seconds:g}s",
            ssh_login_seconds=None,
            load1=None,
            ncpu=None,
            guest_agent_ok=False,
        )
    if loaded and r.load1 is not None:
        r = dataclasses.replace(r, load1=RULES.load_per_cpu * 4 * 2)
    return r


def first_fire(
    phase: float, stalls: list[tuple[float, float]], spikes: list[tuple[float, float]], hours: float
) -> float | None:
    """Time of the first incident-opening condition, or None; rounds at phase + k * interval."""
    state = TargetState()
    k = 0
    while (t := phase + k * PROBE.interval_seconds) < hours * 3600:
        stalled = any(s <= t < s + d for s, d in stalls)
        loaded = any(s <= t < s + d for s, d in spikes)
        ev = evaluate(state, reading(t, stalled, loaded), RULES, t)
        # The round's verdict is known when the round ends, once both sides answered: a hung login
        # ends at the connect timeout, the host's status of the wedged QEMU at its timeout at most.
        if ev.fired:
            return t + (STALLED_ROUND_SECONDS if stalled else 0.0)
        state = ev.state
        k += 1
    return None


PHASES = [i * 0.25 for i in range(40)]  # every alignment of the fault against the round grid


@pytest.mark.parametrize("phase", PHASES)
def test_a_noisy_hour_of_short_stalls_and_load_spikes_opens_no_incident(phase: float) -> None:
    below = 2 * PROBE.interval_seconds - 0.1  # the longest stall that must never count
    # A stall every 5 minutes at a different point of the grid, and a 4-minute load spike every 10.
    stalls = [(60 + 300 * i + 1.37 * i, below) for i in range(12)]
    spikes = [(120 + 600 * i, RULES.load_for_seconds - 60) for i in range(6)]
    assert first_fire(phase, stalls, spikes, hours=1) is None


@pytest.mark.parametrize("phase", PHASES)
def test_a_stall_that_lasts_is_detected_within_0_4x_the_stock_pipeline(phase: float) -> None:
    fault_at = 100.0
    fired = first_fire(phase, [(fault_at, 3600.0)], [], hours=1)
    assert fired is not None
    assert fired - fault_at <= 0.4 * STOCK_SECONDS


def test_the_defaults_keep_a_hung_round_inside_its_slot() -> None:
    assert STALLED_ROUND_SECONDS <= PROBE.round_timeout_seconds < PROBE.interval_seconds
    assert PROBE.jitter_seconds == 0.0
