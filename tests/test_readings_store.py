"""Readings in the store: written in batches, charted from SQL buckets (real SQLite)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from web_support import healthy_readings

from breakglass.store import Store


def commits_during(store: Store, fn) -> int:
    seen: list[str] = []
    store._conn().set_trace_callback(seen.append)
    try:
        fn()
    finally:
        store._conn().set_trace_callback(None)
    return sum(1 for s in seen if s.strip().upper() == "COMMIT")


def test_a_batch_of_readings_is_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    batch = [healthy_readings(f"vm{i}", at=1000.0 + i) for i in range(200)]
    assert commits_during(store, lambda: store.add_readings_many(batch)) == 1
    assert commits_during(store, lambda: [store.add_readings(r) for r in batch[:5]]) == 5
    assert store.latest_readings("vm199")["at"] == 1199.0
    assert commits_during(store, lambda: store.add_readings_many([])) == 0
    store.close()


def test_chart_buckets_summarise_each_span_in_sql(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    base = healthy_readings("devvm", at=0.0)
    rounds = []
    for i in range(3600):  # an hour of 1 s rounds; login time i % 10 / 10
        r = dataclasses.replace(base, at=10_000.0 + i, ssh_login_seconds=(i % 10) / 10, load1=8.0, ncpu=4)
        if i % 30 == 0:  # a failed round now and then: no login time, no guest readings
            r = dataclasses.replace(r, ssh_login_seconds=None, load1=None, ncpu=None)
        rounds.append(r)
    store.add_readings_many(rounds)
    rows = store.readings_buckets("devvm", 10_000.0, 13_600.0, 120)
    assert len(rows) == 120
    first = rows[0]
    assert first["rounds"] == 30
    assert first["at"] == pytest.approx(10_014.5)
    assert first["min_ssh_login_seconds"] == 0.0
    assert first["max_ssh_login_seconds"] == 0.9
    assert first["avg_ssh_login_seconds"] == pytest.approx(sum((i % 10) / 10 for i in range(1, 30)) / 29)
    assert first["avg_load_per_cpu"] == 2.0
    assert first["avg_mem_available_ratio"] == pytest.approx(5 / 8)
    # Outside the span nothing; an empty span gives no rows; another target is not mixed in.
    assert store.readings_buckets("devvm", 20_000.0, 30_000.0, 120) == []
    assert store.readings_buckets("other", 10_000.0, 13_600.0, 120) == []
    assert len(store.readings_buckets("devvm", 10_000.0, 13_600.0, 7)) == 7
    store.close()


def test_a_reading_without_cpus_or_memory_total_does_not_break_the_buckets(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    r = dataclasses.replace(healthy_readings("devvm", at=5.0), ncpu=0, mem_total_bytes=0)
    store.add_readings(r)
    (row,) = store.readings_buckets("devvm", 0.0, 10.0, 10)
    assert row["avg_load_per_cpu"] == r.load1  # no CPUs known: divided by one, as the page did
    assert row["avg_mem_available_ratio"] is None
    store.close()
