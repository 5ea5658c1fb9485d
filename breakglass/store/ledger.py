"""The power-action ledger and its grants (written and read by the Governor only)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from breakglass.store.db import Database, dumps, loads
from breakglass.store.schema import LEDGER_RESULTS

# The budget decision made inside a claim: (allowed, the grant it spends, what to store).
ClaimDecision = tuple[bool, int | None, dict[str, Any]]
# Called inside the claim's transaction with (rows counted in the window, the newest
# counted row ever, the oldest unused grant).
Decide = Callable[[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None], ClaimDecision]


def ledger_row(row: sqlite3.Row) -> dict[str, Any]:
    """A ledger row as a dict: ``dry_run`` a bool, ``decision`` decoded."""
    d = dict(row)
    d["dry_run"] = bool(d["dry_run"])
    d["decision"] = loads(d.get("decision"))
    return d


# Rows that count against the budget: real (not dry run), and sent, in flight or unknown.
_ACTIONS_SQL = (
    "SELECT * FROM ledger WHERE target = ? AND at > ? AND dry_run = 0 "
    "AND (result IS NULL OR result IN ('ok', 'failed', 'unknown')) ORDER BY at, id"
)
_LAST_SQL = (
    "SELECT * FROM ledger WHERE target = ? AND dry_run = 0 "
    "AND (result IS NULL OR result IN ('ok', 'failed', 'unknown')) ORDER BY at DESC, id DESC LIMIT 1"
)
_GRANT_SQL = "SELECT * FROM grants WHERE target = ? AND used_at IS NULL ORDER BY id LIMIT 1"


def _insert(
    conn: sqlite3.Connection,
    what: tuple[str, int | None, str, str],
    dry_run: bool,
    decision: dict[str, Any],
    now: float,
    result: str | None,
) -> int:
    """Insert one ledger row (target, incident, verb, who) inside the caller's transaction."""
    cur = conn.execute(
        "INSERT INTO ledger (target, incident_id, verb, who, dry_run, decision, at, result, "
        "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*what, int(dry_run), dumps(decision), now, result, now if result is not None else None),
    )
    return int(cur.lastrowid or 0)


class PowerLedger(Database):
    """Every power verb decided, in flight or sent; grants of one extra action.

    Rows that count against the budget: not dry run, and sent, in flight (no result)
    or of unknown outcome. Denied and dry-run rows are kept for the record only.
    """

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
            return _insert(conn, (target, incident_id, verb, who), dry_run, decision or {}, now, result)

    def ledger_claim(
        self,
        target: str,
        incident_id: int | None,
        verb: str,
        who: str,
        *,
        window_since: float,
        decide: Decide,
        dry_run: bool = False,
        holder: str | None = None,
    ) -> tuple[bool, int | None]:
        """Decide and record one power verb in ONE transaction: ``(allowed, ledger row id)``.

        Counting the window, the minimum gap, spending a grant and inserting the row
        happen under one ``BEGIN IMMEDIATE``, so two processes sharing this file can
        never both spend the last action. An allowed real verb gets a row without a
        result (in flight, counting); a refusal a ``denied`` row; a dry run a
        ``dry_run`` row. Only the caller holding an in-flight row may send the verb.

        With ``holder``, the incident must be held by it (see ``claim_incident``) in the
        same transaction, or nothing is decided or written: ``(False, None)``. A process
        whose incident another one took over can never spend budget on it.
        """
        now = self.clock()
        with self._tx() as conn:
            if holder is not None and incident_id is not None:
                held = conn.execute(
                    "SELECT 1 FROM incidents WHERE id = ? AND owner = ? AND closed_at IS NULL",
                    (incident_id, holder),
                ).fetchone()
                if held is None:
                    return False, None
            used = [ledger_row(r) for r in conn.execute(_ACTIONS_SQL, (target, window_since))]
            last_row = conn.execute(_LAST_SQL, (target,)).fetchone()
            grant_row = conn.execute(_GRANT_SQL, (target,)).fetchone()
            allowed, grant_id, record = decide(
                used, ledger_row(last_row) if last_row else None, dict(grant_row) if grant_row else None
            )
            result = ("dry_run" if dry_run else None) if allowed else "denied"
            row_id = _insert(conn, (target, incident_id, verb, who), dry_run and allowed, record, now, result)
            if allowed and not dry_run and grant_id is not None:
                spent = conn.execute(
                    "UPDATE grants SET used_at = ?, ledger_id = ? WHERE id = ? AND used_at IS NULL",
                    (now, row_id, grant_id),
                ).rowcount
                if spent != 1:  # cannot happen under the write lock; refuse rather than overspend
                    raise RuntimeError(f"grant #{grant_id} was spent by someone else")
            return allowed, row_id

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
        """Rows that count against the budget taken after ``since``, oldest first.

        Strictly after: a row taken at ``t`` stops counting at ``t + window`` exactly,
        so the Governor's ``next_allowed_at`` is the first moment that is allowed.
        """
        return [ledger_row(r) for r in self._conn().execute(_ACTIONS_SQL, (target, since))]

    def ledger_last_action(self, target: str) -> dict[str, Any] | None:
        """The newest row that counts against the budget, whenever it was."""
        row = self._conn().execute(_LAST_SQL, (target,)).fetchone()
        return ledger_row(row) if row else None

    def ledger_unfinished(self) -> list[dict[str, Any]]:
        """Rows whose verb may have been sent but whose outcome was never recorded.

        Only rows outside an active incident: an active incident's rows may be in flight
        in another process sharing the store; whoever claims the incident settles them
        (``claim_incident``).
        """
        rows = self._conn().execute(
            "SELECT l.* FROM ledger AS l LEFT JOIN incidents AS i ON i.id = l.incident_id "
            "WHERE l.result IS NULL AND (i.id IS NULL OR i.closed_at IS NOT NULL) ORDER BY l.id"
        )
        return [ledger_row(r) for r in rows]

    def ledger_rows(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ledger rows, newest first."""
        sql, args = "SELECT * FROM ledger", []
        if target is not None:
            sql += " WHERE target = ?"
            args.append(target)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, int(limit)))
        return [ledger_row(r) for r in rows]

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
        row = self._conn().execute(_GRANT_SQL, (target,)).fetchone()
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
