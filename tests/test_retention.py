"""Bounded storage: readings retention, a scheduled prune in small batches, pages given back."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path

from conftest import FakeClock
from harness import override, start_core, wait_for
from web_support import healthy_readings, web_config

from breakglass.core import Core
from breakglass.metrics import Metrics
from breakglass.sim.runner import SimHandle
from breakglass.store import MIGRATIONS, Store


def _count(store: Store) -> int:
    return int(store._conn().execute("SELECT COUNT(*) FROM readings").fetchone()[0])


def _schema_1_file(path: Path) -> sqlite3.Connection:
    """A file as the first schema version made it (auto_vacuum off), open in autocommit."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    return conn


def test_the_readings_table_stops_growing_under_retention(tmp_path: Path) -> None:
    cfg = web_config(tmp_path)
    cfg = override(cfg, retention={"readings_seconds": 600, "prune_interval_seconds": 60})
    clock = FakeClock()
    store = Store(tmp_path / "r.db", clock=clock)
    core = Core(cfg, store=store, metrics=Metrics(), clock=clock)
    names = [t.name for t in cfg.targets]

    async def run(seconds: int) -> None:
        for tick in range(0, seconds, 10):  # one round per target every 10 s
            clock.now += 10
            for name in names:
                await core.process(healthy_readings(name, clock.now))
            await core.flush_readings()
            if tick % 60 == 0:
                await core.prune()

    counts, sizes = [], []
    for _hour in range(3):
        asyncio.run(run(3600))
        counts.append(_count(store))
        sizes.append(store.size_bytes())
    # 600 s of rounds plus up to one prune interval of new ones, per target.
    assert all(c <= len(names) * (600 + 60) // 10 for c in counts)
    assert counts[1] == counts[2]
    assert sizes[2] <= sizes[1]  # freed pages are reused and given back: the file stops growing
    oldest = store._conn().execute("SELECT MIN(at) FROM readings").fetchone()[0]
    assert oldest >= clock.now - 600 - 60
    store.close()


def test_prune_deletes_in_batches_and_gives_the_pages_back(store: Store, clock: FakeClock) -> None:
    for i in range(5000):
        store.add_readings(healthy_readings("devvm", clock.now + i))
    full = store.size_bytes()
    seen: list[str] = []
    store._conn().set_trace_callback(seen.append)
    assert store.prune_readings(clock.now + 4500, batch=1000) == 4500
    store._conn().set_trace_callback(None)
    assert sum(1 for s in seen if s.startswith("BEGIN")) == 5  # one short transaction per batch
    assert _count(store) == 500
    assert store.size_bytes() < full / 3
    assert store._conn().execute("PRAGMA freelist_count").fetchone()[0] == 0


def test_a_new_store_uses_incremental_vacuum_and_an_old_one_is_converted(tmp_path: Path) -> None:
    fresh = Store(tmp_path / "new.db")
    assert fresh._conn().execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    fresh.close()
    # A file as the first schema version made it: auto_vacuum off.
    old = tmp_path / "old.db"
    conn = _schema_1_file(old)
    conn.execute(
        "INSERT INTO incidents (target, trigger, state, opened_at) VALUES ('devvm', 'rule', 'resolved', 1)"
    )
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    store = Store(old)
    assert store._conn().execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert store.schema_version() == len(MIGRATIONS)
    assert [i["state"] for i in store.list_incidents()] == ["resolved"]
    store.close()


def test_the_running_core_prunes_on_its_schedule(sim: SimHandle, tmp_path: Path) -> None:
    cfg = override(sim.config, retention={"readings_seconds": 1, "prune_interval_seconds": 0.2})
    r = start_core(cfg, tmp_path / "c.db")
    try:
        first = wait_for(lambda: r.core.feed.latest(r.target), within=10, what="a first round")
        wait_for(
            lambda: (r.store.latest_readings(r.target) or {}).get("at", 0) > first.at + 1.5
            and r.store.readings_since(r.target, 0)[0]["at"] > first.at,
            within=20,
            what="the first round to be pruned while later ones are kept",
        )
    finally:
        r.stop()


def test_every_prune_batch_reads_through_an_index_the_last_short_one_too(
    store: Store, clock: FakeClock
) -> None:
    store.add_readings_many(
        [healthy_readings(name, clock.now + i) for i in range(2500) for name in ("devvm", "other")]
    )
    seen: list[str] = []
    store._conn().set_trace_callback(seen.append)
    assert store.prune_readings(clock.now + 2100, batch=1000) == 4200  # 1000 x 4, then 200
    store._conn().set_trace_callback(None)
    reads = [s for s in seen if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert len([s for s in reads if s.lstrip().upper().startswith("SELECT")]) == 5
    for statement in reads:
        plan = [row[3] for row in store._conn().execute(f"EXPLAIN QUERY PLAN {statement}")]
        assert not [step for step in plan if step.startswith("SCAN")], (statement, plan)


def test_converting_an_older_store_prunes_to_retention_before_its_vacuum_and_logs_it(
    tmp_path: Path, clock: FakeClock, captured: io.StringIO
) -> None:
    # A file as the first schema version made it (auto_vacuum off), never pruned: a day of
    # rounds every 10 s for two targets, of which the last 10 minutes are within retention.
    old = tmp_path / "legacy.db"
    conn = _schema_1_file(old)
    names, start = ("a", "b"), clock.now - 86_400
    day = [healthy_readings(name, start + t) for t in range(0, 86_400, 10) for name in names]
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO readings (target, at, data) VALUES (?, ?, ?)",
            [(r.target, r.at, json.dumps(r.to_dict())) for r in day],
        )
    conn.close()
    before = old.stat().st_size
    store = Store(old, clock=clock, retention_seconds=600)
    try:
        assert store._conn().execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert store.schema_version() == len(MIGRATIONS)
        assert store._conn().execute("SELECT MIN(at) FROM readings").fetchone()[0] >= clock.now - 600
        assert _count(store) == 2 * 60  # the last 600 s of both targets
        after = old.stat().st_size
        assert after < before / 20
    finally:
        store.close()
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.startswith("{")]
    [converting] = [e for e in lines if e.get("event") == "store_converting"]
    [converted] = [e for e in lines if e.get("event") == "store_converted"]
    assert converting["size_bytes"] >= before
    assert converted["size_bytes"] < converting["size_bytes"] / 20
    assert converted["readings_pruned"] == len(day) - 2 * 60
