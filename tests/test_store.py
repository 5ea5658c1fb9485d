"""The SQLite store: schema, single-flight incidents, transitions, steps, dedupe, silences, grants."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import FakeClock

from breakglass.store import MIGRATIONS, Store


def test_it_creates_a_versioned_schema_in_wal_mode(store: Store, tmp_path: Path) -> None:
    assert store.schema_version() == len(MIGRATIONS)
    conn = sqlite3.connect(tmp_path / "store.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_reopening_keeps_data_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.db")
    s.open_incident("devvm", "rule", "r", "w", {})
    s.close()
    s = Store(tmp_path / "b.db")
    assert len(s.list_incidents()) == 1
    s.close()
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this breakglass understands"):
        Store(tmp_path / "b.db")


def test_a_second_trigger_attaches_to_the_active_incident(store: Store) -> None:
    first, created = store.open_incident(
        "devvm", "rule", "ssh down", "watchdog", {"conditions": ["ssh_down"]}
    )
    assert created
    again, created2 = store.open_incident("devvm", "manual", "please look", "viktor", {"note": "slow"})
    assert (again, created2) == (first, False)
    other, created3 = store.open_incident("other", "rule", "x", "watchdog", {})
    assert created3
    assert other != first
    inc = store.get_incident(first)
    assert inc is not None
    assert inc["evidence"] == {"conditions": ["ssh_down"]}
    trigger = [s for s in inc["steps"] if s["kind"] == "trigger"]
    assert trigger[0]["data"]["who"] == "viktor"


def test_fifty_threads_opening_at_once_make_one_incident(tmp_path: Path) -> None:
    store = Store(tmp_path / "b.db")
    barrier = threading.Barrier(50)
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def go(n: int) -> None:
        barrier.wait()
        res = store.open_incident("devvm", "manual", f"press {n}", f"u{n}", {})
        with lock:
            results.append(res)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created for _, created in results) == 1
    assert len({i for i, _ in results}) == 1
    inc = store.get_incident(results[0][0])
    assert inc is not None
    assert sum(1 for s in inc["steps"] if s["kind"] == "trigger") == 49
    store.close()


def test_transitions_follow_the_lifecycle_and_refuse_the_rest(store: Store, clock: FakeClock) -> None:
    i, _ = store.open_incident("devvm", "rule", "r", "w", {})
    assert not store.transition(i, "verifying", "skip ahead from open")
    assert store.transition(i, "diagnosing", "looking")
    clock.now += 5
    assert store.transition(i, "resolved", "fine")
    assert not store.transition(i, "diagnosing", "closed is final")
    inc = store.get_incident(i)
    assert inc is not None
    assert inc["state"] == "resolved"
    assert inc["closed_at"] == clock.now
    assert [(t["from_state"], t["to_state"]) for t in inc["transitions"]] == [
        (None, "open"),
        ("open", "diagnosing"),
        ("diagnosing", "resolved"),
    ]
    with pytest.raises(ValueError, match="unknown incident state"):
        store.transition(i, "sleeping", "nope")


def test_a_closed_incident_frees_the_target_for_a_new_one(store: Store, clock: FakeClock) -> None:
    i, _ = store.open_incident("devvm", "rule", "r", "w", {})
    store.transition(i, "failed", "internal error")
    assert store.active_incident("devvm") is None
    assert store.last_closed_at("devvm") == clock.now
    assert store.last_resolved_at("devvm") is None
    j, created = store.open_incident("devvm", "rule", "again", "w", {})
    assert created
    assert j != i


def test_an_escalated_incident_stays_open_and_a_transition_is_claimed_once(
    store: Store, clock: FakeClock
) -> None:
    i, _ = store.open_incident("devvm", "rule", "r", "w", {})
    assert store.transition(i, "escalated", "budget spent")
    assert store.active_incident("devvm")["id"] == i  # one record for the episode
    assert store.open_incident("devvm", "rule", "still sick", "w", {}) == (i, False)
    assert store.last_closed_at("devvm") is None
    # Two workers racing for the same move: exactly one gets it.
    assert store.transition(i, "verifying", "healthy again", from_state="escalated")
    assert not store.transition(i, "verifying", "healthy again", from_state="escalated")
    assert store.transition(i, "resolved", "green")
    assert not store.transition(i, "failed", "too late: closed is final")
    assert store.active_incident("devvm") is None


def test_an_old_closed_escalation_stays_closed_after_the_migration(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    conn = _old_store(old, 2)
    for n in range(2):  # two closed escalations of one target: fine before, fine after
        conn.execute(
            "INSERT INTO incidents (target, trigger, state, opened_at, closed_at) "
            "VALUES ('devvm', 'rule', 'escalated', ?, ?)",
            (n, n + 1),
        )
    conn.close()
    store = Store(old)
    assert store.active_incident("devvm") is None
    assert not store.transition(1, "resolved", "closed rows never move")
    assert store.open_incident("devvm", "rule", "new", "w", {})[1]
    store.close()


def _old_store(path: Path, version: int) -> sqlite3.Connection:
    """A store file as schema ``version`` left it, open for inserting old rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:version]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def test_an_incident_is_held_by_one_owner_until_its_lease_lapses(store: Store, clock: FakeClock) -> None:
    i, _ = store.open_incident("devvm", "rule", "r", "w", {}, owner="a", lease_seconds=30)
    assert store.active_incident("devvm")["owner"] == "a"
    assert store.claim_incident(i, "b", 30) is None  # a live holder keeps it
    assert not store.transition(i, "diagnosing", "b is not the holder", owner="b")
    assert store.transition(i, "diagnosing", "a works it", owner="a")
    clock.now += 20
    assert store.renew_leases("a", 30) == {i}  # renewed at 20: held until 50
    clock.now += 25
    assert store.claim_incident(i, "b", 30) is None
    clock.now += 6  # 51: a stopped renewing (it died)
    assert store.claim_incident(i, "b", 30) == []
    assert store.renew_leases("a", 30) == set()  # a learns it lost it
    assert not store.transition(i, "remediating", "a no longer holds it", owner="a")
    assert store.transition(i, "remediating", "b does", owner="b")
    assert store.release_incidents("b") == 1
    assert store.claim_incident(i, "c", 30) == []  # let go: claimable at once


def test_taking_an_incident_over_settles_its_in_flight_verb_as_unknown(
    store: Store, clock: FakeClock
) -> None:
    i, _ = store.open_incident("devvm", "rule", "r", "w", {}, owner="a", lease_seconds=3)
    row = store.ledger_insert("devvm", i, "cycle", "runbook")  # a sent it, then died
    assert store.ledger_unfinished() == []  # a live incident's rows are its holder's to settle
    clock.now += 4
    [settled] = store.claim_incident(i, "b", 3)
    assert settled["id"] == row
    assert [(r["verb"], r["result"]) for r in store.ledger_rows("devvm")] == [("cycle", "unknown")]
    assert not store.ledger_finish(row, "ok")  # never re-decided
    assert store.claim_incident(i, "b", 3) == []  # its own claim again: nothing to settle


def test_a_person_takes_an_escalated_incident_from_a_live_holder(store: Store) -> None:
    i, _ = store.open_incident("devvm", "rule", "r", "w", {}, owner="a", lease_seconds=30)
    assert store.claim_incident(i, "b", 30, take_from_state="escalated") is None  # a is working it
    assert store.transition(i, "escalated", "budget spent", owner="a")
    assert store.claim_incident(i, "b", 30, take_from_state="escalated") == []
    assert store.active_incident("devvm")["owner"] == "b"


def test_a_power_claim_needs_the_incident_held_in_the_same_transaction(store: Store) -> None:
    i, _ = store.open_incident("devvm", "rule", "r", "w", {}, owner="a", lease_seconds=30)

    def allow(*_: object) -> tuple[bool, None, dict[str, str]]:
        return True, None, {}

    claim = {"window_since": 0.0, "decide": allow}
    assert store.ledger_claim("devvm", i, "reset", "runbook", holder="b", **claim) == (False, None)
    assert store.ledger_rows("devvm") == []
    allowed, row = store.ledger_claim("devvm", i, "reset", "runbook", holder="a", **claim)
    assert allowed
    assert row is not None


def test_an_active_incident_from_before_owners_is_claimable_after_the_migration(tmp_path: Path) -> None:
    conn = _old_store(tmp_path / "old.db", 3)
    conn.execute(
        "INSERT INTO incidents (target, trigger, state, opened_at) VALUES ('devvm', 'rule', 'diagnosing', 1)"
    )
    conn.close()
    store = Store(tmp_path / "old.db")
    assert store.schema_version() == len(MIGRATIONS)
    inc = store.active_incident("devvm")
    assert (inc["owner"], inc["lease_until"]) == (None, None)
    assert store.claim_incident(inc["id"], "a", 30) == []
    store.close()


def test_steps_keep_their_order_and_tokens_add_up(store: Store) -> None:
    i, _ = store.open_incident("devvm", "rule", "r", "w", {})
    for n in range(5):
        store.add_step(i, "command", {"n": n})
    store.add_tokens(i, 100, 20)
    store.add_tokens(i, 50, 5)
    store.set_report(i, "Found: x\nDid: y\nState now: z")
    inc = store.get_incident(i)
    assert inc is not None
    assert [s["data"]["n"] for s in inc["steps"]] == [0, 1, 2, 3, 4]
    assert (inc["tokens_in"], inc["tokens_out"]) == (150, 25)
    assert inc["report"].startswith("Found: x")


def test_an_alert_is_a_duplicate_only_while_its_incident_is_active(store: Store) -> None:
    def fire(fp: str = "abc") -> tuple[int, str]:
        return store.open_incident_for_alert("devvm", fp, "alertmanager", "down", "alertmanager", {})

    first, outcome = fire()
    assert outcome == "opened"
    assert fire() == (first, "duplicate")
    assert store.alert_duplicate("devvm", "abc", "firing") == first
    assert fire("other") == (first, "attached")
    assert store.record_alert_resolved("devvm", "abc", {}) == (first, "recorded")
    assert store.record_alert_resolved("devvm", "abc", {}) == (first, "duplicate")
    assert fire() == (first, "attached")  # fired again after resolving: a new episode
    store.transition(first, "resolved", "green")
    assert store.alert_duplicate("devvm", "abc", "firing") is None
    assert store.record_alert_resolved("devvm", "abc", {}) == (None, "no_active_incident")
    second, outcome = fire()
    assert (outcome, second != first) == ("opened", True)


def test_an_alert_whose_incident_work_fails_is_not_recorded(store: Store) -> None:
    with pytest.raises(UnicodeEncodeError):
        # A failure inside the transaction (here: an unencodable string) rolls both back.
        store.open_incident_for_alert("devvm", "abc", "alertmanager", "bad \ud800", "alertmanager", {})
    assert store.list_incidents() == []
    assert store.alert_duplicate("devvm", "abc", "firing") is None
    _, outcome = store.open_incident_for_alert("devvm", "abc", "alertmanager", "ok", "alertmanager", {})
    assert outcome == "opened"


def test_silences_expire(store: Store, clock: FakeClock) -> None:
    sid = store.add_silence("devvm", "maintenance", "viktor", clock.now + 60)
    assert store.active_silence("devvm", clock.now)["id"] == sid
    assert store.active_silence("other", clock.now) is None
    assert store.active_silence("devvm", clock.now + 61) is None
    assert store.expire_silence(sid)
    assert not store.expire_silence(sid)
    assert store.active_silence("devvm", clock.now) is None


def test_a_grant_is_spent_exactly_once(store: Store) -> None:
    g = store.add_grant("devvm", "viktor", "VM still down after budget")
    row = store.ledger_insert("devvm", None, "cycle", "runbook")
    assert store.unused_grant("devvm")["id"] == g
    assert store.use_grant(g, row)
    assert not store.use_grant(g, row)
    assert store.unused_grant("devvm") is None


def test_the_ledger_counts_sent_unknown_and_in_flight_rows_but_not_denied_or_dry_run(
    store: Store, clock: FakeClock
) -> None:
    a = store.ledger_insert("devvm", None, "cycle", "w")
    store.ledger_finish(a, "ok", "done")
    store.ledger_insert("devvm", None, "reset", "w")  # in flight
    store.ledger_insert("devvm", None, "cycle", "w", result="denied")
    store.ledger_insert("devvm", None, "cycle", "w", dry_run=True, result="dry_run")
    assert [r["verb"] for r in store.ledger_actions("devvm", clock.now - 10)] == ["cycle", "reset"]
    assert store.ledger_actions("devvm", clock.now) == []  # strictly after: a row ages out at at + window
    assert [r["verb"] for r in store.ledger_unfinished()] == ["reset"]
    assert not store.ledger_finish(a, "failed", "a result is written once")
    with pytest.raises(ValueError, match="unknown ledger result"):
        store.ledger_finish(a, "maybe")


def test_readings_round_trip_and_prune(store: Store) -> None:
    from web_support import healthy_readings

    store.add_readings(healthy_readings("devvm", at=100.0))
    store.add_readings(healthy_readings("devvm", at=200.0))
    assert store.latest_readings("devvm")["at"] == 200.0
    assert [r["at"] for r in store.readings_since("devvm", 150)] == [200.0]
    assert store.prune_readings(150) == 1
    assert store.ping()
