"""The only package that speaks SQL: SQLite in WAL mode, schema versioned.

Holds readings, incidents (with their steps and state transitions), the
power-action ledger and its grants, silences, and the Alertmanager
deliveries (each alert recorded with the incident it opened or attached to,
in the same transaction). Conventions, the same for every method:

- rows come back as plain dicts (``None`` when a single row is missing);
  JSON columns (readings, evidence, step data, ledger decisions) are decoded;
- times are epoch seconds (floats) from the injected ``clock``;
- each thread gets its own connection; every write runs in a ``BEGIN
  IMMEDIATE`` transaction and is committed before the method returns, so a
  single active incident per target (also a partial UNIQUE index) and a
  ledger row written before its verb hold under concurrency and ``kill -9``.

Secrets are never stored here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from breakglass.store.db import Database, dumps, loads
from breakglass.store.incidents import IncidentRecords
from breakglass.store.ledger import PowerLedger
from breakglass.store.schema import (
    ACTIVE_STATES,
    ALLOWED,
    CLOSED_STATES,
    LEDGER_RESULTS,
    MIGRATIONS,
    STATES,
)
from breakglass.watchdog.probes import Readings

# The chart series the page draws, computed in SQL from each stored round.
CHART_SERIES: dict[str, str] = {
    "ssh_login_seconds": "json_extract(data, '$.ssh_login_seconds')",
    "load_per_cpu": (
        "json_extract(data, '$.load1') * 1.0 / MAX(1, COALESCE(json_extract(data, '$.ncpu'), 1))"
    ),
    "mem_available_ratio": (
        "CASE WHEN json_extract(data, '$.mem_total_bytes') > 0 THEN "
        "json_extract(data, '$.mem_available_bytes') * 1.0 / json_extract(data, '$.mem_total_bytes') END"
    ),
    "disk_used_ratio": "json_extract(data, '$.disk_used_ratio')",
}
# Rounds deleted per transaction by prune_readings, and how each batch finds them.
PRUNE_BATCH = 2000
PRUNE_BATCH_SQL = "SELECT id FROM readings WHERE at < ? ORDER BY at LIMIT ?"

__all__ = [
    "ACTIVE_STATES",
    "ALLOWED",
    "CHART_SERIES",
    "CLOSED_STATES",
    "LEDGER_RESULTS",
    "MIGRATIONS",
    "PRUNE_BATCH_SQL",
    "STATES",
    "Database",
    "Store",
]


class Store(IncidentRecords, PowerLedger):
    """SQLite-backed storage shared by the core loop and the web threads.

    ``Store(path, *, clock=time.time, retention_seconds=None)`` (the readings retention, used
    when an older file is converted); ``close()`` when done.
    """

    # -- readings --------------------------------------------------------

    def add_readings(self, r: Readings) -> None:
        """Store one probe round."""
        self.add_readings_many([r])

    def add_readings_many(self, batch: Sequence[Readings]) -> None:
        """Store many probe rounds in one transaction: one sync for the lot."""
        if not batch:
            return
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO readings (target, at, data) VALUES (?, ?, ?)",
                [(r.target, r.at, dumps(r.to_dict())) for r in batch],
            )

    def readings_buckets(
        self, target: str, since: float, until: float, buckets: int
    ) -> list[dict[str, Any]]:
        """Rounds in ``[since, until)`` cut into ``buckets`` equal spans, summarised in SQL.

        One row per span that holds rounds, oldest first: ``at`` (the mean time of its
        rounds), ``rounds``, and ``min_``/``avg_``/``max_`` of each of
        :data:`CHART_SERIES` (None where no round had the reading). However many rounds
        the span holds, a chart gets at most ``buckets`` points.
        """
        if buckets < 1 or until <= since:
            return []
        width = (until - since) / buckets
        columns = ", ".join(
            f"MIN({name}) AS min_{name}, AVG({name}) AS avg_{name}, MAX({name}) AS max_{name}"
            for name in CHART_SERIES
        )
        values = ", ".join(f"{expr} AS {name}" for name, expr in CHART_SERIES.items())
        rows = self._conn().execute(
            f"WITH v AS (SELECT at, {values} FROM readings "  # noqa: S608 - fixed expressions only
            "WHERE target = ? AND at >= ? AND at < ?) "
            f"SELECT CAST((at - ?) / ? AS INTEGER) AS bucket, COUNT(*) AS rounds, AVG(at) AS at, {columns} "
            "FROM v GROUP BY bucket ORDER BY bucket",
            (target, since, until, since, width),
        )
        return [dict(r) for r in rows]

    def latest_readings(self, target: str) -> dict[str, Any] | None:
        """The newest stored round for ``target``, as a dict."""
        row = (
            self._conn()
            .execute(
                "SELECT data FROM readings WHERE target = ? ORDER BY at DESC, id DESC LIMIT 1", (target,)
            )
            .fetchone()
        )
        return loads(row["data"]) if row else None

    def readings_since(self, target: str, since: float) -> list[dict[str, Any]]:
        """Rounds for ``target`` at or after ``since``, oldest first."""
        rows = self._conn().execute(
            "SELECT data FROM readings WHERE target = ? AND at >= ? ORDER BY at, id", (target, since)
        )
        return [loads(r["data"]) for r in rows]

    def prune_readings(self, older_than: float, *, batch: int = PRUNE_BATCH) -> int:
        """Delete rounds taken before ``older_than`` in small batches, then free the pages.

        Each batch's ids are found by a read (which in WAL mode never blocks the core's
        writes) and deleted in a short transaction of its own, so a writer waits for one
        batch at most; ``incremental_vacuum`` then returns the freed pages to the file
        system a bounded number at a time. Returns how many rounds were deleted.
        """
        conn, total = self._conn(), 0
        while True:
            # Through the index on readings(at) (schema 6): each batch reads only the rows it
            # deletes, the last and short one too (PRUNE_BATCH_SQL; a test checks its plan).
            ids = [(r[0],) for r in conn.execute(PRUNE_BATCH_SQL, (older_than, batch))]
            if ids:
                with self._tx() as tx:
                    tx.executemany("DELETE FROM readings WHERE id = ?", ids)
                total += len(ids)
            if len(ids) < batch:
                break
        self.vacuum_free_pages()
        return total

    # -- silences --------------------------------------------------------

    def add_silence(self, target: str, reason: str, who: str, expires_at: float) -> int:
        """Silence automatic incidents for ``target`` until ``expires_at``."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO silences (target, reason, who, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (target, reason, who, self.clock(), expires_at),
            )
            return int(cur.lastrowid or 0)

    def active_silence(self, target: str, now: float) -> dict[str, Any] | None:
        """The silence in force for ``target`` at ``now`` that lasts longest, if any."""
        row = (
            self._conn()
            .execute(
                "SELECT * FROM silences WHERE target = ? AND created_at <= ? AND expires_at > ? "
                "ORDER BY expires_at DESC LIMIT 1",
                (target, now, now),
            )
            .fetchone()
        )
        return dict(row) if row else None

    def list_silences(self, now: float) -> list[dict[str, Any]]:
        """Silences in force at ``now``."""
        rows = self._conn().execute("SELECT * FROM silences WHERE expires_at > ? ORDER BY expires_at", (now,))
        return [dict(r) for r in rows]

    def expire_silence(self, silence_id: int) -> bool:
        """End a silence now; False if it did not exist or had ended."""
        now = self.clock()
        with self._tx() as conn:
            return (
                conn.execute(
                    "UPDATE silences SET expires_at = ? WHERE id = ? AND expires_at > ?",
                    (now, silence_id, now),
                ).rowcount
                == 1
            )
