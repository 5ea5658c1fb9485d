"""Operational endpoints: liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

import structlog
from flask import Blueprint, Response, jsonify, request

from breakglass.web.context import web_context

log = structlog.get_logger("breakglass.web")

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """The process serves HTTP: always 200 while it does."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    """200 when the core loop and the store both answer, else 503 naming what failed."""
    ctx = web_context()
    checks = {"core": _check("core", ctx.core.alive), "store": _check("store", ctx.store.ping)}
    failed = [name for name, ok in checks.items() if not ok]
    body = {"status": "unavailable" if failed else "ok", "checks": checks, "failed": failed}
    return jsonify(body), 503 if failed else 200


@bp.get("/metrics")
def metrics() -> Response:
    """The service's metrics in the text format the scraper asks for (Prometheus or OpenMetrics)."""
    body, content_type = web_context().metrics.scrape(request.headers.get("Accept", ""))
    return Response(body, content_type=content_type)


def _check(name: str, probe: Any) -> bool:
    """Run one readiness probe; an exception counts as a failure, logged once per call."""
    try:
        return bool(probe())
    except Exception as exc:  # readiness must answer 503, not 500, whatever the part does
        log.warning("readiness_check_failed", check=name, error=repr(exc))
        return False
