"""The probe schedule: stable, even offsets and round starts on a fixed grid (time is simulated)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import statistics

import pytest

from breakglass.watchdog.scheduler import GridScheduler, LagMonitor, next_slot, spread


class FakeTime:
    """A monotonic clock and a sleep that only moves when ``run_until`` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def _settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def run_until(self, end: float) -> None:
        """Wake sleepers in time order until ``end``."""
        await self._settle()
        while self._timers and self._timers[0][0] <= end:
            at, _, fut = heapq.heappop(self._timers)
            self.now = max(self.now, at)  # a loop held up runs overdue timers late
            fut.set_result(None)
            await self._settle()
        self.now = end


def test_offsets_spread_targets_evenly_over_the_interval() -> None:
    names = [f"vm{i}" for i in range(1000)]
    offsets = spread(names, 15.0)
    assert sorted(offsets.values()) == [i * 0.015 for i in range(1000)]
    # Every 1.5 s window of the interval holds exactly a tenth of the fleet.
    for w in range(10):
        assert sum(1 for o in offsets.values() if w * 1.5 <= o < (w + 1) * 1.5 - 1e-9) == 100


def test_a_targets_offset_does_not_depend_on_the_config_order() -> None:
    names = [f"vm{i}" for i in range(50)]
    assert spread(names, 10.0) == spread(list(reversed(names)), 10.0)


def test_next_slot_is_the_first_grid_point_at_or_after_now() -> None:
    assert next_slot(100.0, 15.0, 90.0) == 0
    assert next_slot(100.0, 15.0, 100.0) == 0
    assert next_slot(100.0, 15.0, 100.1) == 1
    assert next_slot(100.0, 15.0, 130.0) == 2
    assert next_slot(100.0, 15.0, 100.0, after=3) == 4


def _schedule(durations: dict[str, list[float]], interval: float, rounds_until: float):
    ft = FakeTime()
    starts: dict[str, list[float]] = {n: [] for n in durations}
    reports: list[tuple[str, float, int]] = []

    async def run(name: str) -> None:
        starts[name].append(ft.clock())
        seq = durations[name]
        await ft.sleep(seq[(len(starts[name]) - 1) % len(seq)])

    async def main() -> GridScheduler:
        sched = GridScheduler(
            interval,
            spread(durations, interval),
            run,
            clock=ft.clock,
            sleep=ft.sleep,
            on_round=lambda n, late, missed: reports.append((n, late, missed)),
        )
        sched.start()
        await ft.run_until(ft.now + rounds_until)
        await sched.stop()
        return sched

    sched = asyncio.run(main())
    return sched, starts, reports


def test_round_starts_stay_on_the_grid_however_long_rounds_take() -> None:
    # Rounds of varying length (up to 90 % of the interval) never push later rounds back.
    durations = {"a": [0.1, 13.4, 2.0, 7.7], "b": [14.9, 0.0, 5.5], "c": [3.3]}
    sched, starts, reports = _schedule(durations, 15.0, 15.0 * 400)
    for name, seen in starts.items():
        assert len(seen) >= 400
        for k, at in enumerate(seen):
            assert abs(at - sched.slot(name, k)) < 1e-6, (name, k)
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        assert abs(statistics.mean(gaps) - 15.0) < 1e-9
    assert all(late < 1e-6 and missed == 0 for _, late, missed in reports)


def test_a_round_that_overruns_skips_the_slots_it_missed_and_reports_them() -> None:
    # The second round takes 40 s: slots 2 and 3 (at 30 and 45 s after the first) pass by.
    sched, starts, reports = _schedule({"a": [1.0, 40.0, 1.0, 1.0, 1.0, 1.0]}, 15.0, 15.0 * 6 + 1)
    first = sched.slot("a", 0)
    assert [round(t - first, 6) for t in starts["a"]] == [0.0, 15.0, 60.0, 75.0, 90.0]
    assert [missed for _, _, missed in reports] == [0, 0, 2, 0, 0]


def test_jitter_moves_a_start_inside_its_slot_without_accumulating() -> None:
    ft = FakeTime()
    starts: list[float] = []

    async def run(name: str) -> None:
        starts.append(ft.clock())

    async def main() -> GridScheduler:
        sched = GridScheduler(
            10.0, {"a": 0.0}, run, clock=ft.clock, sleep=ft.sleep, jitter=2.0, rand=lambda: 0.5
        )
        sched.start()
        await ft.run_until(ft.now + 10.0 * 100)
        await sched.stop()
        return sched

    sched = asyncio.run(main())
    assert [round(t - sched.slot("a", k), 6) for k, t in enumerate(starts)] == [1.0] * len(starts)


def test_the_lag_monitor_answers_the_worst_lag_of_a_span_and_forgets_old_ones() -> None:
    now = [1000.0]
    monitor = LagMonitor(keep_seconds=10.0, clock=lambda: now[0])
    for i in range(40):  # 0.25 s samples; the loop held up 1.75 s once, at 1005.0
        now[0] = 1000.0 + 0.25 * i
        monitor.record(1.75 if now[0] == 1005.0 else 0.001)
    assert monitor.worst_since(1005.5) == pytest.approx(0.001)
    assert monitor.worst_since(1004.0) == pytest.approx(1.75)
    now[0] = 1016.0
    monitor.record(0.0)
    assert monitor.worst_since(0.0) < 0.01  # older than keep_seconds: forgotten
