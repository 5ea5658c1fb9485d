"""``POST /api/v1/alertmanager``: Alertmanager's webhook (payload version 4).

Alertmanager retries 5xx and network errors, never 4xx, and HA pairs send
each notification more than once. So:

- a bad payload (not JSON, nested too deep, failing the schema) is a 400 that
  changes nothing; any valid JSON string is accepted (lone surrogates become
  U+FFFD);
- an alert is recorded in the same store transaction as its effect (the
  incident it opened, or the step it attached), so a delivery that fails is
  a 5xx that recorded nothing, and Alertmanager's retry counts;
- copies are duplicates only while the incident they went to is active: the
  same alert firing after that incident closed opens a new one; inside the
  cooldown after the close it is deferred (kept in the store, answered
  ``deferred`` with the time the cooldown ends) and opens one then, unless its
  ``resolved`` arrives first or a person silences the target.
"""

from __future__ import annotations

from typing import Any, Literal

import structlog
from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from breakglass.config import Config, current_secret
from breakglass.core import CoreUnavailable
from breakglass.web.auth import bearer_token, parse_bearer, tokens_equal
from breakglass.web.body import WholeNumber, load_json, validate
from breakglass.web.context import ApiError, WebContext, web_context

log = structlog.get_logger("breakglass.web")

bp = Blueprint("webhook", __name__, url_prefix="/api/v1")
PATH = "/api/v1/alertmanager"

MAX_REASON = 500
FALLBACK_LABEL = "instance"


class _Payload(BaseModel):
    # Unknown fields are ignored: newer Alertmanager versions may add some.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Alert(_Payload):
    """One alert of a notification."""

    status: Literal["firing", "resolved"]
    labels: dict[StrictStr, StrictStr]
    annotations: dict[StrictStr, StrictStr] = {}
    startsAt: StrictStr  # Alertmanager's field names, kept as sent
    endsAt: StrictStr = ""
    generatorURL: StrictStr = ""
    fingerprint: StrictStr = Field(min_length=1, max_length=256)


class Notification(_Payload):
    """Alertmanager's webhook body, version 4."""

    version: Literal["4"]
    groupKey: StrictStr
    truncatedAlerts: WholeNumber = Field(0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: StrictStr
    groupLabels: dict[StrictStr, StrictStr] = {}
    commonLabels: dict[StrictStr, StrictStr] = {}
    commonAnnotations: dict[StrictStr, StrictStr] = {}
    externalURL: StrictStr = ""
    alerts: list[Alert] = Field(max_length=10_000)


def alert_target(cfg: Config, labels: dict[str, str]) -> tuple[str | None, str | None]:
    """The configured target an alert names, and the label value it was looked up by."""
    names = {t.name for t in cfg.targets}
    candidates: list[str] = []
    for label in dict.fromkeys((cfg.web.alert_target_label, FALLBACK_LABEL)):
        value = labels.get(label)
        if value:
            candidates.append(value)
            # node_exporter instances look like "devvm:9100"; the host part may be the target.
            host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
            candidates.append(host)
    for value in candidates:
        if value in names:
            return value, value
    return None, candidates[0] if candidates else None


def _reason(alert: Alert) -> str:
    name = alert.labels.get("alertname", "alert")
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    text = f"{name}: {summary}" if summary else name
    return text[:MAX_REASON]


def _evidence(alert: Alert) -> dict[str, Any]:
    return {
        "alert": {
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": alert.startsAt,
            "fingerprint": alert.fingerprint,
            "generatorURL": alert.generatorURL,
        }
    }


def _check_token() -> None:
    expected = current_secret(web_context().cfg.web.webhook_token_file)
    if not expected:
        raise ApiError(401, "unauthorized", "the webhook is disabled: set web.webhook_token_file")
    if not tokens_equal(bearer_token(), expected):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token (web.webhook_token_file)")


def parse_notification(raw: bytes) -> Notification:
    """Validate a webhook body; ApiError 400 naming the bad fields."""
    return validate(Notification, load_json(raw))


def copies_answer(ctx: WebContext, authorization: str | None, raw: bytes) -> dict[str, Any] | None:
    """The answer to a notification that needs no write, or None for the full view to decide.

    A notification whose every alert is a copy for its target's active incident (or names
    no configured target) changes nothing: it is answered from one read per alert, without
    Flask, the write lock or the core. Anything else (a wrong token, a bad body, an alert
    that opens, attaches, resolves or is deferred) is None, and the view answers it, errors
    included, so the two can never disagree on what is refused.
    """
    expected = current_secret(ctx.cfg.web.webhook_token_file)
    if not expected or not tokens_equal(parse_bearer(authorization), expected):
        return None
    try:
        note = parse_notification(raw)
    except ApiError:
        return None
    results: list[dict[str, Any]] = []
    for alert in note.alerts:
        entry, target = _entry(ctx, alert)
        if target is not None:
            if ctx.store.alert_duplicate(target, alert.fingerprint, alert.status) is None:
                return None
            entry["outcome"] = "duplicate"
        results.append(entry)
    for alert in note.alerts:
        ctx.metrics.alert_received(alert.status)
    return _summary(note, results)


@bp.post("/alertmanager")
def alertmanager() -> Any:
    """Open or attach incidents for firing alerts; record resolved ones; report what happened."""
    _check_token()
    # get_data honours MAX_CONTENT_LENGTH, chunked bodies included (413 past the cap).
    note = parse_notification(request.get_data(cache=False))
    ctx = web_context()
    results: list[dict[str, Any]] = []
    for alert in note.alerts:
        ctx.metrics.alert_received(alert.status)
        entry, target = _entry(ctx, alert)
        results.append(entry)
        if target is None:
            continue
        # A copy of what the active incident already holds: answered without the write lock.
        if ctx.store.alert_duplicate(target, alert.fingerprint, alert.status) is not None:
            entry["outcome"] = "duplicate"
            continue
        try:
            entry.update(_apply(alert, target))
        except CoreUnavailable as exc:
            log.warning("webhook_core_unavailable", error=str(exc))
            raise ApiError(503, "core_unavailable", str(exc) or "the core did not answer") from None
        except Exception as exc:
            # Nothing of this alert was recorded (its transaction rolled back): a 5xx makes
            # Alertmanager retry, and the retry is not taken for a copy.
            log.exception("webhook_delivery_failed", fingerprint=alert.fingerprint, target=target)
            raise ApiError(500, "delivery_failed", f"{type(exc).__name__}: {exc}") from None
    return jsonify(_summary(note, results))


def _entry(ctx: WebContext, alert: Alert) -> tuple[dict[str, Any], str | None]:
    """An alert's line of the answer, and its configured target (None: answered as unknown)."""
    target, looked_up = alert_target(ctx.cfg, alert.labels)
    entry: dict[str, Any] = {"fingerprint": alert.fingerprint, "status": alert.status, "target": target}
    if target is None:
        entry.update(outcome="unknown_target", label_value=looked_up)
    return entry, target


def _summary(note: Notification, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer to a notification from its alerts' lines, logged as ``webhook_received``."""
    summary = {
        "received": len(note.alerts),
        "opened": sorted({r["incident_id"] for r in results if r.get("outcome") == "opened"}),
        "attached": sorted({r["incident_id"] for r in results if r.get("outcome") == "attached"}),
        "duplicates": sum(1 for r in results if r.get("outcome") == "duplicate"),
        "deferred": sum(1 for r in results if r.get("outcome") == "deferred"),
        "unknown_targets": sorted(
            {str(r.get("label_value")) for r in results if r.get("outcome") == "unknown_target"}
        ),
        "alerts": results,
    }
    log.info(
        "webhook_received",
        receiver=note.receiver,
        alerts=len(note.alerts),
        opened=summary["opened"],
        attached=summary["attached"],
        duplicates=summary["duplicates"],
        deferred=summary["deferred"],
    )
    return summary


def _apply(alert: Alert, target: str) -> dict[str, Any]:
    """Act on one alert for a known target, recording it with its effect."""
    ctx = web_context()
    if alert.status == "firing":
        res = ctx.core.trigger(
            target,
            trigger="alertmanager",
            reason=_reason(alert),
            who="alertmanager",
            evidence=_evidence(alert),
            alert=alert.fingerprint,
        )
        if res.deferred_until is not None:
            # Held back by the cooldown, kept in the store: delivered when it ends.
            return {
                "outcome": "deferred",
                "incident_id": None,
                "why": res.suppressed,
                "until": res.deferred_until,
            }
        if res.incident_id is None:
            return {"outcome": "suppressed", "incident_id": None, "why": res.suppressed}
        if res.duplicate:
            return {"outcome": "duplicate", "incident_id": res.incident_id}
        return {"outcome": "opened" if res.created else "attached", "incident_id": res.incident_id}
    incident_id, outcome = ctx.store.record_alert_resolved(
        target,
        alert.fingerprint,
        {"alertname": alert.labels.get("alertname"), "endsAt": alert.endsAt, **_evidence(alert)},
    )
    return {"outcome": outcome, "incident_id": incident_id}
