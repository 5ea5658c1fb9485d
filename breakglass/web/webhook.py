"""``POST /api/v1/alertmanager``: Alertmanager's webhook (payload version 4).

Alertmanager retries 5xx and network errors, never 4xx, and HA pairs send
each notification more than once. So: a bad payload is a 400 that changes
nothing; a repeat of the same fingerprint and status is recorded once; only a
core that is down answers 503, and then the pair is forgotten so the retry
counts.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import structlog
from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from breakglass.config import Config, read_secret
from breakglass.core import CoreUnavailable
from breakglass.web.auth import bearer_token, tokens_equal
from breakglass.web.context import ApiError, web_context

log = structlog.get_logger("breakglass.web")

bp = Blueprint("webhook", __name__, url_prefix="/api/v1")

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
    truncatedAlerts: StrictInt = Field(0, ge=0)
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
    expected = read_secret(web_context().cfg.web.webhook_token_file)
    if not expected:
        raise ApiError(401, "unauthorized", "the webhook is disabled: set web.webhook_token_file")
    if not tokens_equal(bearer_token(), expected):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token (web.webhook_token_file)")


def parse_notification(raw: bytes) -> Notification:
    """Validate a webhook body; ApiError 400 naming the bad fields."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
    try:
        return Notification.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"param": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ApiError(400, "bad_request", problems) from None


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
        target, looked_up = alert_target(ctx.cfg, alert.labels)
        entry: dict[str, Any] = {
            "fingerprint": alert.fingerprint,
            "status": alert.status,
            "target": target,
        }
        results.append(entry)
        if target is None:
            entry.update(outcome="unknown_target", label_value=looked_up)
            continue
        if not ctx.store.record_alert_once(alert.fingerprint, alert.status):
            entry["outcome"] = "duplicate"
            continue
        try:
            entry.update(_apply(alert, target))
        except CoreUnavailable as exc:
            # Forget the pair so Alertmanager's retry of this 503 is not taken for a repeat.
            ctx.store.forget_alert(alert.fingerprint, alert.status)
            log.warning("webhook_core_unavailable", error=str(exc))
            raise ApiError(503, "core_unavailable", str(exc) or "the core did not answer") from None
    summary = {
        "received": len(note.alerts),
        "opened": sorted({r["incident_id"] for r in results if r.get("outcome") == "opened"}),
        "attached": sorted({r["incident_id"] for r in results if r.get("outcome") == "attached"}),
        "duplicates": sum(1 for r in results if r.get("outcome") == "duplicate"),
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
    )
    return jsonify(summary)


def _apply(alert: Alert, target: str) -> dict[str, Any]:
    """Act on one new (fingerprint, status) pair for a known target."""
    ctx = web_context()
    if alert.status == "firing":
        # A later resolve of this episode must count, even if an earlier episode resolved.
        ctx.store.forget_alert(alert.fingerprint, "resolved")
        res = ctx.core.trigger(
            target,
            trigger="alertmanager",
            reason=_reason(alert),
            who="alertmanager",
            evidence=_evidence(alert),
        )
        if res.incident_id is None:
            return {"outcome": "suppressed", "incident_id": None, "why": res.suppressed}
        return {"outcome": "opened" if res.created else "attached", "incident_id": res.incident_id}
    # Resolved: the next firing of this fingerprint is a new episode.
    ctx.store.forget_alert(alert.fingerprint, "firing")
    inc = ctx.store.active_incident(target)
    if inc is None:
        return {"outcome": "no_active_incident", "incident_id": None}
    ctx.store.add_step(
        inc["id"],
        "alert_resolved",
        {"alertname": alert.labels.get("alertname"), "endsAt": alert.endsAt, **_evidence(alert)},
    )
    return {"outcome": "recorded", "incident_id": inc["id"]}
