"""The store's schema: incident states, the lifecycle, and the migrations in order.

``PRAGMA user_version`` holds how many migrations a file has had; a new
migration is appended, never edited in place.
"""

from __future__ import annotations

# "escalated" is an open state: handed to a person, waiting for a person or for the
# budget while the target stays sick (one record per episode). It closes as resolved
# once the target is healthy again, or goes back to diagnosing when it may act.
ACTIVE_STATES = ("open", "diagnosing", "remediating", "verifying", "escalated")
CLOSED_STATES = ("resolved", "failed")
STATES = ("open", "diagnosing", "remediating", "verifying", "resolved", "escalated", "failed")
LEDGER_RESULTS = ("ok", "failed", "denied", "dry_run", "unknown")

# Which state may follow which. Closed states are final.
ALLOWED: dict[str, frozenset[str]] = {
    "open": frozenset({"diagnosing", "resolved", "escalated", "failed"}),
    # diagnosing again: an incident resumed mid-pass takes its pass up again from its steps.
    "diagnosing": frozenset({"diagnosing", "remediating", "verifying", "resolved", "escalated", "failed"}),
    "remediating": frozenset({"diagnosing", "verifying", "resolved", "escalated", "failed"}),
    # verifying -> diagnosing: a power verb did not bring the VM back; the remediator picks the next one.
    "verifying": frozenset({"diagnosing", "remediating", "resolved", "escalated", "failed"}),
    "escalated": frozenset({"diagnosing", "verifying", "resolved", "failed"}),
}

# The first schema's active set (its partial index); kept as migration 1 wrote it.
ACTIVE_SQL = "('open','diagnosing','remediating','verifying')"
# The one SQL predicate for "this incident is active" (the partial unique index's too):
# an incident is open until it has a closed_at. Before schema 3 an escalation closed the
# incident; such old rows keep their closed_at and stay closed.
ACTIVE_WHERE = "closed_at IS NULL"

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
        ON incidents (target) WHERE state IN {ACTIVE_SQL};
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
    # 2: alert deliveries belong to the incident they opened or attached to, so a
    # copy is a duplicate only while that incident is active.
    """
    DROP TABLE alerts_seen;
    CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        fingerprint TEXT NOT NULL,
        status TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX alert_deliveries_incident ON alert_deliveries (incident_id, fingerprint, id);
    """,
    # 3: an escalated incident stays open while its target is sick; "active" is
    # closed_at IS NULL, so old closed escalations stay closed.
    """
    DROP INDEX one_active_incident_per_target;
    CREATE UNIQUE INDEX one_active_incident_per_target ON incidents (target) WHERE closed_at IS NULL;
    """,
    # 4: who works an active incident. The process that opened or claimed it holds a
    # lease it renews; another process sharing the store claims it only once the lease
    # has lapsed (its owner died). Older active incidents have no owner: claimable at once.
    """
    ALTER TABLE incidents ADD COLUMN owner TEXT;
    ALTER TABLE incidents ADD COLUMN lease_until REAL;
    """,
    # 5: a firing alert that arrives while the cooldown after a close holds is deferred,
    # not dropped (Alertmanager would re-send it only at its repeat_interval): it waits
    # here until the cooldown ends, then opens an incident unless its resolve arrived.
    """
    CREATE TABLE deferred_alerts (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        trigger TEXT NOT NULL,
        reason TEXT NOT NULL,
        who TEXT NOT NULL,
        evidence TEXT NOT NULL DEFAULT '{}',
        at REAL NOT NULL,
        until REAL NOT NULL,
        UNIQUE (target, fingerprint)
    );
    CREATE INDEX deferred_alerts_due ON deferred_alerts (target, until);
    """,
    # 6: the prune finds old readings by time through an index: without it, each batch
    # read walked the table in rowid order, and the last, short one read all of it.
    """
    CREATE INDEX readings_at ON readings (at);
    """,
]
