"""Incidents: single-flight opening, who works each one (a lease), the lifecycle, steps as they happen."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from breakglass.store.db import Database, dumps, loads
from breakglass.store.ledger import ledger_row
from breakglass.store.schema import ACTIVE_WHERE, ALLOWED, CLOSED_STATES, STATES

# Built from constants only, no input: the one definition of "active" (schema.ACTIVE_WHERE).
_ACTIVE_ROW_SQL = f"SELECT * FROM incidents WHERE target = ? AND {ACTIVE_WHERE}"  # noqa: S608


# The active incident of a target and the status of the latest delivery of one alert to it, in
# one statement: the webhook asks this for every copy of an alert, from many threads at once,
# and each statement a thread runs hands the interpreter lock to another and back.
_DUPLICATE_SQL = (
    "SELECT i.id, (SELECT d.status FROM alert_deliveries d WHERE d.incident_id = i.id"  # noqa: S608
    " AND d.fingerprint = ? ORDER BY d.id DESC LIMIT 1)"
    f" FROM incidents i WHERE i.target = ? AND {ACTIVE_WHERE}"
)

# A firing alert held back by the cooldown (schema 5) is done with once delivered or resolved.
_UNDEFER_SQL = "DELETE FROM deferred_alerts WHERE target = ? AND fingerprint = ?"


def _active_id(conn: sqlite3.Connection, target: str) -> int | None:
    row = conn.execute(_ACTIVE_ROW_SQL, (target,)).fetchone()
    return int(row["id"]) if row else None


def _last_delivery(conn: sqlite3.Connection, incident_id: int, fingerprint: str) -> str | None:
    row = conn.execute(
        "SELECT status FROM alert_deliveries WHERE incident_id = ? AND fingerprint = ? "
        "ORDER BY id DESC LIMIT 1",
        (incident_id, fingerprint),
    ).fetchone()
    return str(row["status"]) if row else None


def _deliver(conn: sqlite3.Connection, incident_id: int, fingerprint: str, status: str, now: float) -> None:
    conn.execute(
        "INSERT INTO alert_deliveries (incident_id, fingerprint, status, at) VALUES (?, ?, ?, ?)",
        (incident_id, fingerprint, status, now),
    )


class IncidentRecords(Database):
    """Incidents with their steps, transitions and power actions."""

    def open_incident(
        self,
        target: str,
        trigger: str,
        reason: str,
        who: str,
        evidence: dict[str, Any],
        *,
        owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> tuple[int, bool]:
        """Open an incident, or attach this trigger to the active one: ``(id, created)``.

        A new incident is held by ``owner`` (if given) for ``lease_seconds``: see
        :meth:`claim_incident`.
        """
        with self._tx() as conn:
            return self._open(conn, target, trigger, reason, who, evidence, (owner, lease_seconds))

    def open_incident_for_alert(
        self,
        target: str,
        fingerprint: str,
        trigger: str,
        reason: str,
        who: str,
        evidence: dict[str, Any],
        *,
        owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> tuple[int, str]:
        """Open or attach for a firing alert, recording it in the same transaction.

        Returns ``(incident id, outcome)``: ``opened``, ``attached``, or ``duplicate``
        when this fingerprint's latest delivery to the active incident was already
        ``firing`` (a copy: nothing is written). Once that incident closes, the same
        alert firing again opens a new one.
        """
        with self._tx() as conn:
            return self._deliver_firing(
                conn, target, fingerprint, trigger, reason, who, evidence, (owner, lease_seconds)
            )

    def _deliver_firing(
        self,
        conn: sqlite3.Connection,
        target: str,
        fingerprint: str,
        trigger: str,
        reason: str,
        who: str,
        evidence: dict[str, Any],
        lease: tuple[str | None, float],
    ) -> tuple[int, str]:
        # Delivered now: a deferral of the same alert is done with, in the same transaction.
        conn.execute(_UNDEFER_SQL, (target, fingerprint))
        active = _active_id(conn, target)
        if active is not None and _last_delivery(conn, active, fingerprint) == "firing":
            return active, "duplicate"
        incident_id, created = self._open(conn, target, trigger, reason, who, evidence, lease)
        _deliver(conn, incident_id, fingerprint, "firing", self.clock())
        return incident_id, "opened" if created else "attached"

    # -- alerts deferred by the cooldown ---------------------------------

    def defer_alert(
        self,
        target: str,
        fingerprint: str,
        trigger: str,
        reason: str,
        who: str,
        evidence: dict[str, Any],
        until: float,
    ) -> float:
        """Remember a firing alert the cooldown holds back until ``until``; the time it waits for.

        A copy of an alert already deferred keeps its place (and its first evidence); a
        later ``until`` (a newer close) moves it. See :meth:`release_deferred_alerts`.
        """
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO deferred_alerts "
                "(target, fingerprint, trigger, reason, who, evidence, at, until) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target, fingerprint) "
                "DO UPDATE SET until = MAX(until, excluded.until)",
                (target, fingerprint, trigger, reason, who, dumps(evidence), self.clock(), until),
            )
            row = conn.execute(
                "SELECT until FROM deferred_alerts WHERE target = ? AND fingerprint = ?",
                (target, fingerprint),
            ).fetchone()
            return float(row["until"])

    def deferred_alerts(self, target: str | None = None) -> list[dict[str, Any]]:
        """Alerts waiting for a cooldown to end (of ``target``, or all), soonest first."""
        where, args = ("", []) if target is None else (" WHERE target = ?", [target])
        rows = self._conn().execute(f"SELECT * FROM deferred_alerts{where} ORDER BY until, id", args)  # noqa: S608
        return [{**dict(r), "evidence": loads(r["evidence"])} for r in rows]

    def deferred_due(self, target: str, now: float) -> bool:
        """True when an alert deferred for ``target`` has waited until ``now`` (read-only, indexed)."""
        row = (
            self._conn()
            .execute("SELECT 1 FROM deferred_alerts WHERE target = ? AND until <= ? LIMIT 1", (target, now))
            .fetchone()
        )
        return row is not None

    def drop_deferred_alerts(self, target: str) -> list[str]:
        """Forget every alert deferred for ``target`` (a person silenced it); their fingerprints."""
        with self._tx() as conn:
            rows = conn.execute(
                "DELETE FROM deferred_alerts WHERE target = ? RETURNING fingerprint", (target,)
            ).fetchall()
            return sorted(str(r["fingerprint"]) for r in rows)

    def release_deferred_alerts(
        self,
        target: str,
        now: float,
        *,
        extra_evidence: dict[str, Any] | None = None,
        owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """Deliver the alerts deferred for ``target`` whose wait ended by ``now``, oldest first.

        In one transaction each is delivered as :meth:`open_incident_for_alert` would (the
        first opens an incident, the rest attach to it) and its deferral deleted: a crash
        leaves either both or neither. ``extra_evidence`` fills keys the alert's own
        evidence lacks. Returns ``(incident id, outcome, deferred row)`` for each.
        """
        out: list[tuple[int, str, dict[str, Any]]] = []
        with self._tx() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    "SELECT * FROM deferred_alerts WHERE target = ? AND until <= ? ORDER BY at, id",
                    (target, now),
                )
            ]
            for row in rows:
                evidence = {**(extra_evidence or {}), **loads(row["evidence"])}
                evidence["deferred"] = {"at": row["at"], "until": row["until"]}
                incident_id, outcome = self._deliver_firing(
                    conn,
                    target,
                    str(row["fingerprint"]),
                    str(row["trigger"]),
                    str(row["reason"]),
                    str(row["who"]),
                    evidence,
                    (owner, lease_seconds),
                )
                out.append((incident_id, outcome, row))
        return out

    def record_alert_resolved(
        self, target: str, fingerprint: str, data: dict[str, Any]
    ) -> tuple[int | None, str]:
        """Record a resolved alert on the active incident: ``(id, outcome)``.

        The outcome is ``recorded``, ``duplicate``, ``no_active_incident``, or
        ``deferral_cancelled`` when no incident is active but the alert was waiting for
        the cooldown to end: that deferral is deleted and opens nothing.
        """
        with self._tx() as conn:
            # It stopped firing: a deferral of it (waiting for the cooldown) opens nothing now.
            cancelled = conn.execute(_UNDEFER_SQL, (target, fingerprint)).rowcount
            active = _active_id(conn, target)
            if active is None:
                return None, "deferral_cancelled" if cancelled else "no_active_incident"
            if _last_delivery(conn, active, fingerprint) == "resolved":
                return active, "duplicate"
            now = self.clock()
            conn.execute(
                "INSERT INTO steps (incident_id, at, kind, data) VALUES (?, ?, 'alert_resolved', ?)",
                (active, now, dumps(data)),
            )
            _deliver(conn, active, fingerprint, "resolved", now)
            return active, "recorded"

    def alert_duplicate(self, target: str, fingerprint: str, status: str) -> int | None:
        """The active incident this exact delivery is a copy for, if any (read-only: no write lock)."""
        row = self._conn().execute(_DUPLICATE_SQL, (fingerprint, target)).fetchone()
        return int(row[0]) if row is not None and row[1] == status else None

    def _open(
        self,
        conn: sqlite3.Connection,
        target: str,
        trigger: str,
        reason: str,
        who: str,
        evidence: dict[str, Any],
        lease: tuple[str | None, float],
    ) -> tuple[int, bool]:
        now = self.clock()
        owner, lease_seconds = lease
        active = _active_id(conn, target)
        if active is not None:
            conn.execute(
                "INSERT INTO steps (incident_id, at, kind, data) VALUES (?, ?, 'trigger', ?)",
                (
                    active,
                    now,
                    dumps({"trigger": trigger, "reason": reason, "who": who, "evidence": evidence}),
                ),
            )
            return active, False
        cur = conn.execute(
            "INSERT INTO incidents (target, trigger, who, reason, state, opened_at, evidence, owner, "
            "lease_until) VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?)",
            (
                target,
                trigger,
                who,
                reason,
                now,
                dumps(evidence),
                owner,
                now + lease_seconds if owner is not None else None,
            ),
        )
        incident_id = int(cur.lastrowid or 0)
        conn.execute(
            "INSERT INTO transitions (incident_id, at, from_state, to_state, reason) "
            "VALUES (?, ?, NULL, 'open', ?)",
            (incident_id, now, f"{trigger}: {reason}"),
        )
        return incident_id, True

    # -- who works an incident -------------------------------------------

    def claim_incident(
        self,
        incident_id: int,
        owner: str,
        lease_seconds: float,
        *,
        take_from_state: str | None = None,
    ) -> list[dict[str, Any]] | None:
        """Hold an active incident for ``owner`` until ``lease_seconds`` from now; None if refused.

        A conditional ``UPDATE ... WHERE owner IS NULL OR owner = ? OR lease_until < now``:
        it succeeds when nobody holds the incident, ``owner`` already does, or the holder's
        lease has lapsed (it died, or stopped renewing); ``take_from_state`` also takes it
        from a live holder while the incident is in that state (a person acting on an
        escalated incident, which no process is working). Taken from another holder, the
        incident's ledger rows still in flight become ``unknown`` in the same transaction
        (they count against the budget and are never re-sent); those rows are returned.
        """
        now = self.clock()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT owner, state FROM incidents WHERE id = ? AND closed_at IS NULL", (incident_id,)
            ).fetchone()
            if row is None:
                return None
            claimed = conn.execute(
                "UPDATE incidents SET owner = ?, lease_until = ? WHERE id = ? AND closed_at IS NULL "
                "AND (owner IS NULL OR owner = ? OR lease_until < ? OR state = ?)",
                (owner, now + lease_seconds, incident_id, owner, now, take_from_state),
            ).rowcount
            if claimed != 1:
                return None
            if row["owner"] == owner:
                return []
            unfinished = [
                ledger_row(r)
                for r in conn.execute(
                    "SELECT * FROM ledger WHERE incident_id = ? AND result IS NULL ORDER BY id",
                    (incident_id,),
                )
            ]
            conn.execute(
                "UPDATE ledger SET result = 'unknown', finished_at = ?, "
                "detail = 'the watchdog working the incident stopped before the outcome was known' "
                "WHERE incident_id = ? AND result IS NULL",
                (now, incident_id),
            )
            return unfinished

    def renew_leases(self, owner: str, lease_seconds: float) -> set[int]:
        """Extend every lease ``owner`` holds on an active incident; the ids it still holds."""
        with self._tx() as conn:
            conn.execute(
                f"UPDATE incidents SET lease_until = ? WHERE owner = ? AND {ACTIVE_WHERE}",  # noqa: S608
                (self.clock() + lease_seconds, owner),
            )
            return {
                int(r["id"])
                for r in conn.execute(
                    f"SELECT id FROM incidents WHERE owner = ? AND {ACTIVE_WHERE}",  # noqa: S608
                    (owner,),
                )
            }

    def release_incidents(self, owner: str) -> int:
        """Let go of every active incident ``owner`` holds (a clean stop): claimable at once."""
        with self._tx() as conn:
            return conn.execute(
                f"UPDATE incidents SET owner = NULL, lease_until = NULL WHERE owner = ? AND {ACTIVE_WHERE}",  # noqa: S608
                (owner,),
            ).rowcount

    def transition(
        self,
        incident_id: int,
        new_state: str,
        reason: str,
        *,
        from_state: str | None = None,
        owner: str | None = None,
    ) -> bool:
        """Move an open incident to ``new_state``; True only for the caller whose move happened.

        The move is claimed with a conditional ``UPDATE ... WHERE state = ?`` on an
        incident that is still open, so two workers (or two processes) can never both
        make it. ``from_state`` names the one state it may leave; otherwise any state
        the lifecycle allows; ``owner``, that the incident must be held by that owner (a
        process whose lease another one took over can no longer move it). False when
        refused or when someone else moved it first.
        """
        if new_state not in STATES:
            raise ValueError(f"unknown incident state {new_state!r}")
        allowed_from = [s for s, nxt in ALLOWED.items() if new_state in nxt]
        now = self.clock()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT state, owner FROM incidents WHERE id = ? AND closed_at IS NULL", (incident_id,)
            ).fetchone()
            if row is None or row["state"] not in allowed_from:
                return False
            if owner is not None and row["owner"] != owner:
                return False
            if from_state is not None and row["state"] != from_state:
                return False
            closed_at = now if new_state in CLOSED_STATES else None
            claimed = conn.execute(
                "UPDATE incidents SET state = ?, closed_at = ? "
                "WHERE id = ? AND state = ? AND closed_at IS NULL",
                (new_state, closed_at, incident_id, row["state"]),
            ).rowcount
            if claimed != 1:
                return False
            conn.execute(
                "INSERT INTO transitions (incident_id, at, from_state, to_state, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (incident_id, now, row["state"], new_state, reason),
            )
            return True

    def last_step(self, incident_id: int, kind: str) -> dict[str, Any] | None:
        """The incident's newest step of ``kind`` (``at`` and decoded ``data``), if any."""
        row = (
            self._conn()
            .execute(
                "SELECT at, data FROM steps WHERE incident_id = ? AND kind = ? ORDER BY id DESC LIMIT 1",
                (incident_id, kind),
            )
            .fetchone()
        )
        return {"at": row["at"], "data": loads(row["data"])} if row else None

    def add_step(self, incident_id: int, kind: str, data: dict[str, Any]) -> int:
        """Record one step of an incident as it happens; return its id."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO steps (incident_id, at, kind, data) VALUES (?, ?, ?, ?)",
                (incident_id, self.clock(), kind, dumps(data)),
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
        d["evidence"] = loads(d.get("evidence"))
        return d

    def get_incident(self, incident_id: int, *, steps_after: int = 0) -> dict[str, Any] | None:
        """One incident with its steps (those with an id above ``steps_after``), transitions and
        power actions, or None. A live page that has the earlier steps reads only the new ones."""
        conn = self._conn()
        row = conn.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            return None
        inc = self._incident_row(row)
        inc["steps"] = [
            {"id": s["id"], "at": s["at"], "kind": s["kind"], "data": loads(s["data"])}
            for s in conn.execute(
                "SELECT * FROM steps WHERE incident_id = ? AND id > ? ORDER BY id", (incident_id, steps_after)
            )
        ]
        inc["transitions"] = [
            dict(t)
            for t in conn.execute(
                "SELECT at, from_state, to_state, reason FROM transitions WHERE incident_id = ? ORDER BY id",
                (incident_id,),
            )
        ]
        inc["power_actions"] = [
            ledger_row(p)
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

    def active_targets(self) -> set[str]:
        """The targets that have an active incident (one indexed query, however many targets)."""
        rows = self._conn().execute(f"SELECT target FROM incidents WHERE {ACTIVE_WHERE}")  # noqa: S608
        return {r[0] for r in rows}

    def active_incident(self, target: str) -> dict[str, Any] | None:
        """The target's active incident (without steps), if any."""
        row = self._conn().execute(_ACTIVE_ROW_SQL, (target,)).fetchone()
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
