"""The only module that speaks SQL: SQLite in WAL mode, schema versioned.

Holds readings, incidents (with their steps and state transitions), the
power-action ledger and its grants, silences, and the Alertmanager dedupe
set. Rows come back as plain dicts; times are epoch seconds (floats); JSON
columns are decoded. Each thread gets its own connection; writes that must
be atomic run in ``BEGIN IMMEDIATE`` transactions, so a single active
incident per target and a ledger row written before its verb hold under
concurrency and across ``kill -9``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from breakglass.watchdog.probes import Readings

ACTIVE_STATES = ("open", "diagnosing", "remediating", "verifying")
CLOSED_STATES = ("resolved", "escalated", "failed")
STATES = ACTIVE_STATES + CLOSED_STATES
LEDGER_RESULTS = ("ok", "failed", "denied", "dry_run", "unknown")

# Which state may follow which. Closed states are final.
ALLOWED: dict[str, frozenset[str]] = {
    "open": frozenset({"diagnosing", "resolved", "escalated", "failed"}),
    "diagnosing": frozenset({"remediating", "verifying", "resolved", "escalated", "failed"}),
    "remediating": frozenset({"verifying", "resolved", "escalated", "failed"}),
    "verifying": frozenset({"remediating", "resolved", "escalated", "failed"}),
}

_ACTIVE_SQL = "('open','diagnosing','remediating','verifying')"

MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX readings_target_at ON readings (target, at);

    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        trigger TEXT NOT NULL,
        who TEXT,
        reason TEXT,
        state TEXT NOT NULL,
        opened_at REAL NOT NULL,
        closed_at REAL,
        report TEXT,
        tokens_in INTEGER NOT NULL DEFAULT 0,
        tokens_out INTEGER NOT NULL DEFAULT 0,
        evidence TEXT NOT NULL DEFAULT '{{}}'
    );
    CREATE UNIQUE INDEX one_active_incident_per_target
        ON incidents (target) WHERE state IN {_ACTIVE_SQL};
    CREATE INDEX incidents_target_closed ON incidents (target, closed_at);

    CREATE TABLE steps (
        id INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX steps_incident ON steps (incident_id, id);

    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        at REAL NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX transitions_incident ON transitions (incident_id, id);

    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        incident_id INTEGER REFERENCES incidents (id),
        verb TEXT NOT NULL,
        who TEXT,
        dry_run INTEGER NOT NULL DEFAULT 0,
        decision TEXT NOT NULL DEFAULT '{{}}',
        at REAL NOT NULL,
        result TEXT,
        finished_at REAL,
        detail TEXT
    );
    CREATE INDEX ledger_target_at ON ledger (target, at);

    CREATE TABLE grants (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        who TEXT NOT NULL,
        why TEXT NOT NULL,
        at REAL NOT NULL,
        used_at REAL,
        ledger_id INTEGER REFERENCES ledger (id)
    );

    CREATE TABLE silences (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        reason TEXT NOT NULL,
        who TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );

    CREATE TABLE alerts_seen (
        fingerprint TEXT NOT NULL,
        status TEXT NOT NULL,
        first_seen REAL NOT NULL,
        PRIMARY KEY (fingerprint, status)
    );
    """,
]


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str, separators=(",", ":"))


class Store:
    """SQLite-backed storage shared by the core loop and the web threads."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    # -- connections -----------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: writers are serialised, readers go on."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path}: schema version {version} is newer than this breakglass "
                    f"understands ({len(MIGRATIONS)}); upgrade breakglass"
                )
            for n, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {n}")

    def schema_version(self) -> int:
        """The schema version this file is at."""
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def ping(self) -> bool:
        """True when the database answers a query."""
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    # -- readings --------------------------------------------------------

    def add_readings(self, r: Readings) -> None:
        """Store one probe round."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO readings (target, at, data) VALUES (?, ?, ?)",
                (r.target, r.at, _dumps(r.to_dict())),
            )

    def latest_readings(self, target: str) -> dict[str, Any] | None:
        """The newest stored round for ``target``, as a dict."""
        row = (
            self._conn()
            .execute(
                "SELECT data FROM readings WHERE target = ? ORDER BY at DESC, id DESC LIMIT 1", (target,)
            )
            .fetchone()
        )
        return _loads(row["data"]) if row else None

    def readings_since(self, target: str, since: float) -> list[dict[str, Any]]:
        """Rounds for ``target`` at or after ``since``, oldest first."""
        rows = self._conn().execute(
            "SELECT data FROM readings WHERE target = ? AND at >= ? ORDER BY at, id", (target, since)
        )
        return [_loads(r["data"]) for r in rows]

    def prune_readings(self, older_than: float) -> int:
        """Delete rounds taken before ``older_than``; return how many."""
        with self._tx() as conn:
            return conn.execute("DELETE FROM readings WHERE at < ?", (older_than,)).rowcount

    # -- incidents -------------------------------------------------------

    def open_incident(
        self, target: str, trigger: str, reason: str, who: str, evidence: dict[str, Any]
    ) -> tuple[int, bool]:
        """Open an incident, or attach this trigger to the active one: ``(id, created)``."""
        now = self.clock()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT id FROM incidents WHERE target = ? "
                "AND state IN ('open','diagnosing','remediating','verifying')",
                (target,),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "INSERT INTO steps (incident_id, at, kind, data) VALUES (?, ?, 'trigger', ?)",
                    (
                        row["id"],
                        now,
                        _dumps({"trigger": trigger, "reason": reason, "who": who, "evidence": evidence}),
                    ),
                )
                return int(row["id"]), False
            cur = conn.execute(
                "INSERT INTO incidents (target, trigger, who, reason, state, opened_at, evidence) "
                "VALUES (?, ?, ?, ?, 'open', ?, ?)",
                (target, trigger, who, reason, now, _dumps(evidence)),
            )
            incident_id = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO transitions (incident_id, at, from_state, to_state, reason) "
                "VALUES (?, ?, NULL, 'open', ?)",
                (incident_id, now, f"{trigger}: {reason}"),
            )
            return incident_id, True

    def transition(self, incident_id: int, new_state: str, reason: str) -> bool:
        """Move an incident to ``new_state`` if allowed from its current state; False otherwise."""
        if new_state not in STATES:
            raise ValueError(f"unknown incident state {new_state!r}")
        allowed_from = [s for s, nxt in ALLOWED.items() if new_state in nxt]
        now = self.clock()
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None or row["state"] not in allowed_from:
                return False
            closed_at = now if new_state in CLOSED_STATES else None
            conn.execute(
                "UPDATE incidents SET state = ?, closed_at = ? WHERE id = ? AND state = ?",
                (new_state, closed_at, incident_id, row["state"]),
            )
            conn.execute(
                "INSERT INTO transitions (incident_id, at, from_state, to_state, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (incident_id, now, row["state"], new_state, reason),
            )
            return True

    def add_step(self, incident_id: int, kind: str, data: dict[str, Any]) -> int:
        """Record one step of an incident as it happens; return its id."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO steps (incident_id, at, kind, data) VALUES (?, ?, ?, ?)",
                (incident_id, self.clock(), kind, _dumps(data)),
            )
            return int(cur.lastrowid or 0)

    def set_report(self, incident_id: int, text: str) -> None:
        """Set the incident's end report."""
        with self._tx() as conn:
            conn.execute("UPDATE incidents SET report = ? WHERE id = ?", (text, incident_id))

    def add_tokens(self, incident_id: int, input_tokens: int, output_tokens: int) -> None:
        """Add model token usage to an incident's totals."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE incidents SET tokens_in = tokens_in + ?, tokens_out = tokens_out + ? WHERE id = ?",
                (input_tokens, output_tokens, incident_id),
            )

    def _incident_row(self, row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["evidence"] = _loads(d.get("evidence"))
        return d

    def get_incident(self, incident_id: int) -> dict[str, Any] | None:
        """One incident with its steps, transitions and power actions, or None."""
        conn = self._conn()
        row = conn.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            return None
        inc = self._incident_row(row)
        inc["steps"] = [
            {"id": s["id"], "at": s["at"], "kind": s["kind"], "data": _loads(s["data"])}
            for s in conn.execute("SELECT * FROM steps WHERE incident_id = ? ORDER BY id", (incident_id,))
        ]
        inc["transitions"] = [
            dict(t)
            for t in conn.execute(
                "SELECT at, from_state, to_state, reason FROM transitions WHERE incident_id = ? ORDER BY id",
                (incident_id,),
            )
        ]
        inc["power_actions"] = [
            self._ledger_row(p)
            for p in conn.execute("SELECT * FROM ledger WHERE incident_id = ? ORDER BY id", (incident_id,))
        ]
        return inc

    def list_incidents(
        self, target: str | None = None, limit: int = 50, states: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Incidents newest first (without steps), optionally filtered."""
        where, args = [], []
        if target is not None:
            where.append("target = ?")
            args.append(target)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        sql = "SELECT * FROM incidents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        return [self._incident_row(r) for r in self._conn().execute(sql, (*args, int(limit)))]

    def active_incident(self, target: str) -> dict[str, Any] | None:
        """The target's active incident (without steps), if any."""
        row = (
            self._conn()
            .execute(
                "SELECT * FROM incidents WHERE target = ? "
                "AND state IN ('open','diagnosing','remediating','verifying')",
                (target,),
            )
            .fetchone()
        )
        return self._incident_row(row) if row else None

    def last_closed_at(self, target: str) -> float | None:
        """When the target's most recently closed incident closed."""
        row = (
            self._conn()
            .execute(
                "SELECT MAX(closed_at) AS t FROM incidents WHERE target = ? AND closed_at IS NOT NULL",
                (target,),
            )
            .fetchone()
        )
        return row["t"] if row else None

    def last_resolved_at(self, target: str) -> float | None:
        """When the target's most recently resolved incident closed."""
        row = (
            self._conn()
            .execute(
                "SELECT MAX(closed_at) AS t FROM incidents WHERE target = ? AND state = 'resolved'", (target,)
            )
            .fetchone()
        )
        return row["t"] if row else None

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

    # -- alert dedupe ----------------------------------------------------

    def record_alert_once(self, fingerprint: str, status: str) -> bool:
        """True the first time this (fingerprint, status) pair is seen."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO alerts_seen (fingerprint, status, first_seen) VALUES (?, ?, ?)",
                (fingerprint, status, self.clock()),
            )
            return cur.rowcount == 1

    def forget_alert(self, fingerprint: str, status: str) -> None:
        """Forget a pair so that a later repeat is new again (an alert that fires anew)."""
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM alerts_seen WHERE fingerprint = ? AND status = ?", (fingerprint, status)
            )

    # -- power ledger (the Governor's) -----------------------------------

    @staticmethod
    def _ledger_row(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["dry_run"] = bool(d["dry_run"])
        d["decision"] = _loads(d.get("decision"))
        return d

    def ledger_insert(
        self,
        target: str,
        incident_id: int | None,
        verb: str,
        who: str,
        *,
        dry_run: bool = False,
        decision: dict[str, Any] | None = None,
        result: str | None = None,
    ) -> int:
        """Write a ledger row and commit it before returning (before any verb is sent)."""
        if result is not None and result not in LEDGER_RESULTS:
            raise ValueError(f"unknown ledger result {result!r}")
        now = self.clock()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO ledger (target, incident_id, verb, who, dry_run, decision, at, result, "
                "finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    target,
                    incident_id,
                    verb,
                    who,
                    int(dry_run),
                    _dumps(decision or {}),
                    now,
                    result,
                    now if result is not None else None,
                ),
            )
            return int(cur.lastrowid or 0)

    def ledger_finish(self, row_id: int, result: str, detail: str = "") -> bool:
        """Record a row's outcome once; False if it already had one."""
        if result not in LEDGER_RESULTS:
            raise ValueError(f"unknown ledger result {result!r}")
        with self._tx() as conn:
            return (
                conn.execute(
                    "UPDATE ledger SET result = ?, detail = ?, finished_at = ? "
                    "WHERE id = ? AND result IS NULL",
                    (result, detail, self.clock(), row_id),
                ).rowcount
                == 1
            )

    def ledger_actions(self, target: str, since: float) -> list[dict[str, Any]]:
        """Rows that count against the budget since ``since``: sent, in flight or unknown."""
        rows = self._conn().execute(
            "SELECT * FROM ledger WHERE target = ? AND at >= ? AND dry_run = 0 "
            "AND (result IS NULL OR result IN ('ok', 'failed', 'unknown')) ORDER BY at, id",
            (target, since),
        )
        return [self._ledger_row(r) for r in rows]

    def ledger_last_action(self, target: str) -> dict[str, Any] | None:
        """The newest row that counts against the budget, whenever it was."""
        row = (
            self._conn()
            .execute(
                "SELECT * FROM ledger WHERE target = ? AND dry_run = 0 "
                "AND (result IS NULL OR result IN ('ok', 'failed', 'unknown')) "
                "ORDER BY at DESC, id DESC LIMIT 1",
                (target,),
            )
            .fetchone()
        )
        return self._ledger_row(row) if row else None

    def ledger_unfinished(self) -> list[dict[str, Any]]:
        """Rows whose verb may have been sent but whose outcome was never recorded."""
        rows = self._conn().execute("SELECT * FROM ledger WHERE result IS NULL ORDER BY id")
        return [self._ledger_row(r) for r in rows]

    def ledger_rows(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ledger rows, newest first."""
        sql, args = "SELECT * FROM ledger", []
        if target is not None:
            sql += " WHERE target = ?"
            args.append(target)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, int(limit)))
        return [self._ledger_row(r) for r in rows]

    def add_grant(self, target: str, who: str, why: str) -> int:
        """Record a grant of exactly one extra power action."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO grants (target, who, why, at) VALUES (?, ?, ?, ?)",
                (target, who, why, self.clock()),
            )
            return int(cur.lastrowid or 0)

    def unused_grant(self, target: str) -> dict[str, Any] | None:
        """The oldest grant for ``target`` not used yet."""
        row = (
            self._conn()
            .execute(
                "SELECT * FROM grants WHERE target = ? AND used_at IS NULL ORDER BY id LIMIT 1", (target,)
            )
            .fetchone()
        )
        return dict(row) if row else None

    def use_grant(self, grant_id: int, ledger_id: int) -> bool:
        """Spend a grant on a ledger row; True only for the one caller that spent it."""
        with self._tx() as conn:
            return (
                conn.execute(
                    "UPDATE grants SET used_at = ?, ledger_id = ? WHERE id = ? AND used_at IS NULL",
                    (self.clock(), ledger_id, grant_id),
                ).rowcount
                == 1
            )

    def grants(self, target: str) -> list[dict[str, Any]]:
        """Every grant for ``target``, oldest first."""
        return [
            dict(r)
            for r in self._conn().execute("SELECT * FROM grants WHERE target = ? ORDER BY id", (target,))
        ]
