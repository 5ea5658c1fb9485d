"""Storage: database size over simulated days at N targets, with and without readings retention.

Synthetic probe rounds go in through the store's own API (``add_readings_many``,
one transaction per simulated minute of rounds, to keep the run short) on a
fake clock; the "with" store is
pruned by ``Core.prune`` every ``retention.prune_interval_seconds`` of simulated
time, exactly as the running core does, the "without" store never (the old
behaviour). Sizes are the database's pages (``page_count * page_size``) after a
checkpoint. Rows are what is simulated; a day past ``--days`` is extrapolated
from the measured bytes per row (without retention the file grows linearly; with
it, it stays at its steady state once the retention window is full).

    .venv/bin/python bench/storage.py [--targets 100] [--days 0.5] [--extrapolate 30]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from breakglass.config import Config, RetentionSettings, SshEndpoint, Target
from breakglass.core import Core
from breakglass.metrics import Metrics
from breakglass.store import Store
from breakglass.watchdog.probes import Readings

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def reading(target: str, at: float, n: int) -> Readings:
    """A probe round shaped like a real one, values varying a little."""
    return Readings(
        target=target,
        at=at,
        duration_seconds=0.31 + (n % 7) / 100,
        ssh_ok=True,
        ssh_error=None,
        ssh_refused=False,
        ssh_login_seconds=0.08 + (n % 5) / 100,
        load1=0.4 + (n % 11) / 10,
        load5=0.35 + (n % 13) / 10,
        load15=0.3 + (n % 17) / 10,
        ncpu=8,
        mem_total_bytes=16 * 2**30,
        mem_available_bytes=9 * 2**30 + n % 4096 * 4096,
        swap_total_bytes=2 * 2**30,
        swap_used_bytes=n % 1024 * 4096,
        disk_used_ratio=0.41 + (n % 100) / 10_000,
        failed_units=(),
        pve_ok=True,
        pve_error=None,
        vm_status="running",
        qmp_ok=True,
        qmp_status="running",
        guest_agent_ok=True,
        uptime_seconds=86_400.0 + at - START,
    )


def config(targets: int, store_path: Path, retention: RetentionSettings) -> Config:
    key = store_path.parent / "unused"
    ep = SshEndpoint(host="127.0.0.1", user="ops", key_file=key, known_hosts=key)
    return Config(
        store_path=store_path,
        targets=tuple(Target(name=f"vm{i:03d}", vmid=100 + i, devvm=ep, pve=ep) for i in range(targets)),
        retention=retention,
    )


def size_mb(store: Store) -> float:
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return store.size_bytes() / 1e6


def rows(store: Store) -> int:
    return int(store._conn().execute("SELECT COUNT(*) FROM readings").fetchone()[0])


async def simulate(args: argparse.Namespace, folder: Path) -> list[tuple[float, int, float, int, float]]:
    retention = RetentionSettings()
    clock = Clock()
    with_r = Store(folder / "with.db", clock=clock)
    without = Store(folder / "without.db", clock=clock)
    core = Core(
        config(args.targets, folder / "with.db", retention), store=with_r, metrics=Metrics(), clock=clock
    )
    names = list(core.targets)
    interval = args.interval
    out = []
    next_prune = START
    step_days = args.every_hours / 24
    report_at = START + step_days * 86400
    n = 0
    end = START + args.days * 86400
    while clock.now < end:
        batch = []
        for _ in range(max(1, int(60 // interval))):  # one simulated minute per transaction
            batch += [reading(name, clock.now, n + i) for i, name in enumerate(names)]
            n += len(names)
            clock.now += interval
        with_r.add_readings_many(batch)
        without.add_readings_many(batch)
        if clock.now >= next_prune:
            await core.prune()
            next_prune += retention.prune_interval_seconds
        if clock.now >= report_at:
            day = (clock.now - START) / 86400
            out.append((day, rows(with_r), size_mb(with_r), rows(without), size_mb(without)))
            report_at += step_days * 86400
    with_r.close()
    without.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--days", type=float, default=0.5, help="simulated days actually written")
    ap.add_argument("--extrapolate", type=float, default=30.0, help="the day the last row is projected to")
    ap.add_argument("--interval", type=float, default=None, help="seconds between rounds (config default)")
    ap.add_argument("--every-hours", type=float, default=2.0, help="a table row every this many hours")
    args = ap.parse_args()
    probe_default = Config.model_fields["probe"].default
    args.interval = args.interval or probe_default.interval_seconds
    retention = RetentionSettings()
    print(
        f"{args.targets} targets, a round every {args.interval:g} s, retention "
        f"{retention.readings_seconds:g} s, prune every {retention.prune_interval_seconds:g} s"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bg-storage-") as tmp:
        table = asyncio.run(simulate(args, Path(tmp)))
    print(f"{'day':>6} {'rows with':>11} {'MB with':>9} {'rows without':>13} {'MB without':>11}")
    for day, rw, mw, ro, mo in table:
        print(f"{day:6.2f} {rw:11d} {mw:9.1f} {ro:13d} {mo:11.1f}")
    day, rw, mw, ro, mo = table[-1]
    per_row = mo * 1e6 / ro
    total = int(args.targets * args.extrapolate * 86400 / args.interval)
    print(
        f"{args.extrapolate:6.2f} {rw:11d} {mw:9.1f} {total:13d} {per_row * total / 1e6:11.1f}"
        "   (extrapolated: with = steady state, without = bytes per row x rows)"
    )
    print(f"bytes per row without retention: {per_row:.0f}; simulated in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
