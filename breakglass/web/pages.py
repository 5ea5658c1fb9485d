"""The operator's pages: status with charts and forms, incident list and detail, demo panel."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Response

from breakglass.web.auth import current_user
from breakglass.web.charts import Band, line_chart, outages
from breakglass.web.context import ID_RULE, web_context
from breakglass.web.humanize import FILTERS, clock, duration
from breakglass.web.steps import StepView, conversation

bp = Blueprint("pages", __name__)

CHART_HOURS = 3
CHART_BUCKETS = 120  # points per chart line, whatever the interval and the span
# Beyond this many targets the front page is a compact fleet table, FLEET_PAGE_SIZE rows a page;
# each row links to that target's full card (``/?target=NAME``).
FLEET_VIEW_AFTER = 24
FLEET_PAGE_SIZE = 50

SIM_TIMEOUT_SECONDS = 3.0


@bp.record_once
def _filters(state: BlueprintSetupState) -> None:
    state.app.jinja_env.filters.update(FILTERS)


def _charts(name: str, now: float) -> list[tuple[str, Any]]:
    """Each chart of a target's card with its caption: SSH, load, memory and disk, with incidents."""
    ctx = web_context()
    since = now - CHART_HOURS * 3600
    # Downsampled in SQL: the page's work is bounded by CHART_BUCKETS, not by the rounds stored.
    rows = ctx.store.readings_buckets(name, since, now + 1, CHART_BUCKETS)
    incidents = [
        Band(
            float(i["opened_at"]),
            float(i["closed_at"] or now),
            "incident",
            f"incident #{i['id']} ({i['state']})",
        )
        for i in ctx.store.list_incidents(target=name, limit=50)
        if (i["closed_at"] or now) >= since
    ]
    rules = ctx.cfg.rules
    specs: list[tuple[str, str, float | None, str, float]] = [
        ("SSH login time", "ssh_login_seconds", rules.ssh_slow_seconds, " s", 1.0),
        ("Load per CPU", "load_per_cpu", rules.load_per_cpu, "", 1.0),
        ("Memory available", "mem_available_ratio", rules.mem_available_ratio, " %", 100.0),
        ("Disk used", "disk_used_ratio", rules.disk_used_ratio, " %", 100.0),
    ]
    # The charts draw at least a minute, so a fresh start is not one round stretched wide.
    span = duration(max(60.0, now - float(rows[0]["at"]))) if rows else "no data yet"
    out = []
    for title, series, threshold, unit, scale in specs:

        def value(r: dict[str, Any], key: str = f"avg_{series}") -> float | None:
            v = r.get(key)
            return None if v is None else float(v)

        svg = line_chart(
            title,
            rows,
            value,
            now=now,
            threshold=threshold,
            unit=unit,
            scale=scale,
            bands=[*incidents, *outages(rows, value)],
        )
        out.append((f"{title}, last {span} (dashed: threshold; red: incidents; grey: no reading)", svg))
    return out


def _sim_state() -> dict[str, Any] | None:
    cfg = web_context().cfg
    if not cfg.demo or not cfg.sim_control_url:
        return None
    try:
        return _sim_call("GET", "/state")
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}


def _sim_call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    base = str(web_context().cfg.sim_control_url).rstrip("/")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    # The URL comes from our own config (the simulator the demo started), never from a request.
    with urllib.request.urlopen(req, timeout=SIM_TIMEOUT_SECONDS) as resp:  # noqa: S310
        raw = resp.read()
    decoded = json.loads(raw) if raw else {}
    if not isinstance(decoded, dict):
        raise ValueError(f"simulator answered {type(decoded).__name__}, expected a JSON object")
    return decoded


@bp.get("/")
def index() -> str:
    """Every target's health, charts, incident, budget, silences and forms."""
    ctx = web_context()
    now = time.time()
    names = [t.name for t in ctx.cfg.targets]
    one = request.args.get("target")
    if len(names) > FLEET_VIEW_AFTER and one not in names:
        return _fleet(names, now)
    try:
        status = ctx.core.status() if one not in names else ctx.core.status(names=[one])
        core_error = None
    except (RuntimeError, TimeoutError) as exc:
        status, core_error = {"targets": []}, str(exc)
    targets = []
    for t in status["targets"]:
        latest = ctx.store.list_incidents(target=t["name"], limit=1)
        charts = _charts(t["name"], now)
        targets.append({**t, "charts": charts, "latest": latest[0] if latest else None})
    sim = _sim_state()
    return render_template(
        "index.html",
        targets=targets,
        core_error=core_error,
        rules=ctx.cfg.rules,
        silences=ctx.store.list_silences(now),
        demo=ctx.cfg.demo,
        faults=(sim or {}).get("known_faults") or (),
        sim=sim,
        now=now,
    )


def _fleet(names: list[str], now: float) -> str:
    """The compact fleet table: one row per target, one page at a time, no charts.

    The targets that need a person (an active incident, a firing condition, a
    round that was not green) come first, so a sick VM is on page 1 however
    many targets there are; the rest follow in configuration order.
    """
    ctx = web_context()
    try:
        attention = ctx.core.attention()
    except (RuntimeError, TimeoutError):
        attention = []  # the core's error is shown by the status call below
    first = set(attention)
    names = [*attention, *(n for n in names if n not in first)]
    pages = max(1, -(-len(names) // FLEET_PAGE_SIZE))
    try:
        page = min(max(1, int(request.args.get("page", "1"))), pages)
    except ValueError:
        abort(400, "page must be a whole number")
    shown = names[(page - 1) * FLEET_PAGE_SIZE : page * FLEET_PAGE_SIZE]
    try:
        status = ctx.core.status(names=shown)
        core_error = None
    except (RuntimeError, TimeoutError) as exc:
        status, core_error = {"targets": []}, str(exc)
    return render_template(
        "fleet.html",
        targets=status["targets"],
        core_error=core_error,
        page=page,
        pages=pages,
        total=len(names),
        attention=len(attention),
        silences=ctx.store.list_silences(now),
        now=now,
    )


@bp.get("/incidents")
def incidents() -> str:
    """Incidents newest first, filtered by target and state."""
    ctx = web_context()
    target = request.args.get("target") or None
    state = request.args.get("state") or None
    rows = ctx.store.list_incidents(target=target, limit=200, states=[state] if state else None)
    return render_template(
        "incidents.html",
        incidents=[{**row, "action": _action(row)} for row in rows],
        now=time.time(),
        target=target,
        state=state,
        targets=[t.name for t in ctx.cfg.targets],
    )


@bp.get(f"/incidents/<{ID_RULE}:incident_id>")
def incident(incident_id: int) -> str:
    """One incident: trigger, transitions, steps, power actions, tokens, report."""
    inc = web_context().store.get_incident(incident_id)
    if inc is None:
        abort(404)
    return render_template(
        "incident.html",
        inc=inc,
        entries=_entries(inc["steps"]),
        active=inc["closed_at"] is None,
        now=time.time(),
    )


Entry = tuple[dict[str, Any], StepView, list[tuple[dict[str, Any], StepView]]]


def _entries(steps: list[dict[str, Any]]) -> list[Entry]:
    """The conversation's top-level entries, each tool call with the steps that happened inside it."""
    top: list[Entry] = []
    calls: dict[int, list[tuple[dict[str, Any], StepView]]] = {}
    for s, view in zip(steps, conversation(steps), strict=True):
        if view.parent in calls:
            calls[view.parent].append((s, view))
            continue
        inner: list[tuple[dict[str, Any], StepView]] = []
        if view.holds:
            calls[int(s["id"])] = inner
        top.append((s, view, inner))
    return top


def _action(row: dict[str, Any]) -> str:
    """What an incident did, in a few words: the report's "Did:" line."""
    for line in (row.get("report") or "").splitlines():
        if line.startswith("Did: "):
            return line[len("Did: ") :]
    return ""


def _target_or_400(name: str) -> str:
    if name not in {t.name for t in web_context().cfg.targets}:
        abort(400, f"unknown target {name!r}")
    return name


@bp.post("/incidents")
def break_glass() -> Response:
    """Open a manual incident for the target, or attach the note to its active one."""
    ctx = web_context()
    target = _target_or_400(request.form.get("target", ""))
    note = request.form.get("note", "").strip()[:2000] or "break glass from the page"
    authorize = request.form.get("authorize_power") == "yes"
    try:
        result = ctx.core.trigger(
            target, trigger="manual", reason=note, who=current_user(), evidence={}, authorize_power=authorize
        )
    except Exception as exc:
        abort(503, f"the core did not take the trigger: {exc}")
    if getattr(result, "incident_id", None):
        return redirect(url_for("pages.incident", incident_id=result.incident_id), 303)
    return redirect(url_for("pages.index"), 303)


@bp.post("/silences")
def silence() -> Response:
    """Silence automatic incidents for a target for some minutes."""
    ctx = web_context()
    target = _target_or_400(request.form.get("target", ""))
    reason = request.form.get("reason", "").strip()[:500]
    try:
        minutes = float(request.form.get("minutes", "60"))
    except ValueError:
        abort(400, "minutes must be a number")
    if not reason or not 0 < minutes <= 7 * 24 * 60:
        abort(400, "a reason and 0 < minutes <= 10080 are required")
    until = time.time() + minutes * 60
    ctx.store.add_silence(target, reason, current_user(), until)
    flash(f"Silenced {target} until {clock(until)}: automatic incidents wait; break glass still works.")
    return redirect(url_for("pages.index"), 303)


@bp.post("/targets/<name>/grant")
def grant(name: str) -> Response:
    """Grant one more power action for a target, recording who and why."""
    target = _target_or_400(name)
    why = request.form.get("why", "").strip()[:500]
    if not why:
        abort(400, "say why the extra power action is granted")
    grant_id = web_context().core.grant(target, current_user(), why)
    flash(
        f"Granted one more power action for {target} (grant #{grant_id}, by {current_user()}): "
        "the next power action the watchdog needs may use it."
    )
    return redirect(url_for("pages.index"), 303)


@bp.post("/demo/faults")
def demo_faults() -> Response:
    """Forward a fault injection (or clear) to the simulator; demo mode only."""
    if not web_context().cfg.demo or not web_context().cfg.sim_control_url:
        abort(404)
    fault = request.form.get("fault", "")
    try:
        if fault == "clear":
            _sim_call("DELETE", "/faults")
        elif fault in (_sim_call("GET", "/state").get("known_faults") or ()):
            _sim_call("POST", "/faults", {"fault": fault})
        else:
            abort(400, f"unknown fault {fault!r}")
    except (OSError, ValueError) as exc:
        abort(502, f"the simulator did not answer: {exc}")
    return redirect(url_for("pages.index"), 303)
