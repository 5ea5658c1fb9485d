"""Converting an older store: the start-up cost before ``serve`` listens, old way and new.

Builds a file as schema 1 made it (``auto_vacuum`` off, nothing ever pruned) holding
``--days`` of rounds every ``--interval`` s for ``--targets`` targets (rows shaped like
``bench/storage.py``'s), copies it, and times the two conversions on the copies:

- old: ``PRAGMA auto_vacuum = INCREMENTAL; VACUUM`` over every row (what ``Store()``
  did before);
- new: ``Store(path, retention_seconds=...)``, which deletes the readings past
  retention in batches first, then runs the ``VACUUM`` and the migrations.

    .venv/bin/python bench/store_convert.py [--targets 50] [--days 2] [--interval 15] [--retention 21600]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from storage import START, reading

from breakglass.store import MIGRATIONS, Store


def legacy(path: Path, targets: int, days: float, interval: float) -> int:
    """Write the schema-1 file; how many rounds it holds."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    names = [f"devvm-{i:03d}" for i in range(targets)]
    rounds = int(days * 86_400 / interval)
    conn.execute("BEGIN")
    for n in range(rounds):
        at = START - days * 86_400 + n * interval
        conn.executemany(
            "INSERT INTO readings (target, at, data) VALUES (?, ?, ?)",
            [(name, at, json.dumps(reading(name, at, n).to_dict())) for name in names],
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return rounds * targets


def report(what: str, started: float, path: Path) -> None:
    print(f"{what:26} {time.monotonic() - started:6.1f} s, {path.stat().st_size / 2**20:.0f} MiB after")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--interval", type=float, default=15.0)
    ap.add_argument("--retention", type=float, default=21_600.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "legacy.db"
        t0 = time.monotonic()
        rows = legacy(base, args.targets, args.days, args.interval)
        mb = base.stat().st_size / 2**20
        print(f"legacy file: {rows} rounds, {mb:.0f} MiB (built in {time.monotonic() - t0:.1f} s)")
        old, new = Path(tmp) / "old.db", Path(tmp) / "new.db"
        shutil.copy(base, old)
        shutil.copy(base, new)
        t0 = time.monotonic()
        conn = sqlite3.connect(old, isolation_level=None)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
        conn.close()
        report("old (VACUUM every row)", t0, old)
        t0 = time.monotonic()
        Store(new, clock=lambda: START, retention_seconds=args.retention).close()
        report("new (prune, then VACUUM)", t0, new)


if __name__ == "__main__":
    main()
