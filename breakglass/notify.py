"""Notifications through Apprise when an incident opens, resolves or escalates.

The notifier is an :class:`~breakglass.events.Observers` listener called on
the core loop; it only queues the message. A small thread pool sends it with
the configured timeout, so a slow or failing receiver never delays
remediation: failures are logged and dropped.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import apprise
import structlog

from breakglass.config import NotifySettings

if TYPE_CHECKING:
    from breakglass.store import Store

log = structlog.get_logger("breakglass.notify")

# "reminder": an escalated incident whose target is still sick, every incidents.repeat_interval_seconds.
EVENTS = ("opened", "resolved", "escalated", "reminder")
MAX_BODY = 8000


def with_timeouts(url: str, timeout: float) -> str:
    """Add Apprise's connect/read timeout arguments (``cto``, ``rto``) unless the URL sets them."""
    query = urlsplit(url).query
    keys = {part.split("=", 1)[0] for part in query.split("&") if part}
    extra = [f"{k}={timeout:g}" for k in ("cto", "rto") if k not in keys]
    if not extra:
        return url
    return url + ("&" if query else ("" if url.endswith("?") else "?")) + "&".join(extra)


def incident_link(public_url: str, incident_id: Any) -> str:
    """The page of one incident."""
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


def compose(event: str, data: dict[str, Any], public_url: str, reason: str | None = None) -> tuple[str, str]:
    """The title and body of the message for one lifecycle event."""
    inc, target = data.get("incident"), data.get("target")
    title = f"breakglass: incident {inc} on {target} " + ("still escalated" if event == "reminder" else event)
    lines = []
    if event == "opened":
        title += f" ({data.get('trigger')})"
        if reason:
            lines.append(f"Reason: {reason}")
    elif data.get("reason"):
        lines.append(f"Why: {data['reason']}")
    if data.get("report"):
        lines.append(str(data["report"]))
    lines.append(f"Incident: {incident_link(public_url, inc)}")
    return title, "\n\n".join(lines)[:MAX_BODY]


class Notifier:
    """Send incident events to the configured Apprise URLs, in the background."""

    def __init__(self, settings: NotifySettings, public_url: str, *, store: Store | None = None) -> None:
        self.settings = settings
        self.public_url = public_url
        self.store = store
        self._urls = [with_timeouts(u, settings.timeout_seconds) for u in settings.urls]
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="breakglass-notify")
        self._pending: set[Future[bool]] = set()
        self._lock = threading.Lock()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        """Observers listener: queue a message for the events that matter; never raises or blocks."""
        if event not in EVENTS or not self._urls or data.get("incident") is None:
            return
        reason = None
        if event == "opened" and self.store is not None:
            inc = self.store.get_incident(int(data["incident"]))
            reason = inc.get("reason") if inc else None
        title, body = compose(event, data, self.public_url, reason)
        try:
            fut = self._pool.submit(self._send, title, body, event, data.get("incident"))
        except RuntimeError:  # the pool is shut down: the service is stopping
            log.warning("notify_dropped", event_name=event, incident=data.get("incident"))
            return
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(fut)

    def _send(self, title: str, body: str, event: str, incident: Any) -> bool:
        try:
            ap = apprise.Apprise()
            for url in self._urls:
                if not ap.add(url):
                    # Never log the URL itself: it often carries a token.
                    log.error("notify_bad_url", scheme=urlsplit(url).scheme)
            ok = bool(ap.notify(title=title, body=body)) if len(ap) else False
        except Exception as exc:  # a notifier must never take anything down
            log.error("notify_failed", event_name=event, incident=incident, error=repr(exc))
            return False
        if ok:
            log.info("notified", event_name=event, incident=incident, urls=len(self._urls))
        else:
            log.error("notify_failed", event_name=event, incident=incident, error="a receiver refused")
        return ok

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for queued messages (tests, shutdown); True when none is left."""
        with self._lock:
            pending = list(self._pending)
        from concurrent.futures import wait

        _, not_done = wait(pending, timeout=timeout)
        return not not_done

    def close(self) -> None:
        """Give queued messages one timeout to go out, then stop."""
        self.flush(self.settings.timeout_seconds)
        self._pool.shutdown(wait=False, cancel_futures=True)
