"""``breakglass serve`` and ``breakglass demo``: wire store, core, web and run them."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from breakglass.config import Config, WebSettings
from breakglass.core import Core, CoreThread
from breakglass.log import configure_logging
from breakglass.metrics import Metrics
from breakglass.notify import Notifier
from breakglass.preflight import startup_problems
from breakglass.store import Store
from breakglass.web.app import create_app
from breakglass.web.server import WebServer

log = structlog.get_logger("breakglass.service")


# Descriptors per watched target (two kept SSH connections and a fresh login per round), and
# what the rest of the service holds (the store, the listening socket, pages, log files).
FDS_PER_TARGET = 3
FDS_FOR_THE_SERVICE = 256


def raise_fd_limit(targets: int = 0) -> int:
    """Raise the soft limit on open files to the hard limit; log and return the limit in force.

    Each watched target holds two kept SSH connections and a fresh login per round, so a
    fleet of hundreds needs thousands of descriptors; the usual soft limit is 1024. When
    even the hard limit is too low for ``targets``, a warning says how many are needed and
    how to raise it (the service still starts: logins beyond the limit fail and say so).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("fd_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    log.info("fd_limit", open_files_limit=soft, hard_limit=None if hard == resource.RLIM_INFINITY else hard)
    needed = targets * FDS_PER_TARGET + FDS_FOR_THE_SERVICE
    if soft < needed:
        log.warning(
            "fd_limit_low",
            open_files_limit=soft,
            needed=needed,
            targets=targets,
            fix="raise the hard limit: LimitNOFILE= in the systemd unit, ulimit -Hn, or a container's nofile",
        )
    return soft


def make_server(app: Any, web: WebSettings) -> WebServer:
    """breakglass's server for ``app`` on ``web.bind``:``web.port`` (epoll: descriptors past 1024 work)."""
    return WebServer(app, host=web.bind, port=web.port, threads=web.threads)


def serve(cfg: Config, *, on_ready: Callable[[str], None] | None = None) -> int:
    """Run the watchdog and its web server until SIGINT/SIGTERM; return the exit code."""
    configure_logging(cfg.log)
    problems = startup_problems(cfg)
    if problems:
        for problem in problems:
            print(f"breakglass: {problem}", file=sys.stderr)
        return 2
    raise_fd_limit(len(cfg.targets))
    cfg.store_path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.store_path, retention_seconds=cfg.retention.readings_seconds)
    metrics = Metrics()
    core = Core(cfg, store=store, metrics=metrics)
    # Local URL until the server knows its port; public_url wins when configured.
    notifier = Notifier(cfg.notify, cfg.web.public_url or "", store=store)
    core.observers.add(notifier)
    thread = CoreThread(core)
    handle = thread.start()
    app = create_app(cfg, store=store, metrics=metrics, core=handle)
    try:
        server = make_server(app, cfg.web)
    except OSError as exc:
        # Taken between the check and now: the same one line, never a traceback.
        print(
            f"breakglass: cannot listen on {cfg.web.bind}:{cfg.web.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        thread.stop()
        notifier.close()
        store.close()
        return 2
    # Every committed write wakes the live pages (no polling).
    store.on_commit(server.hub.changed)
    host = cfg.web.bind if ":" not in cfg.web.bind else f"[{cfg.web.bind}]"
    url = f"http://{host}:{server.effective_port}/"
    notifier.public_url = cfg.web.public_url or url
    log.info("serving", url=url, targets=[t.name for t in cfg.targets], dry_run=cfg.budget.dry_run)
    if on_ready is not None:
        on_ready(url)
    try:
        server.run(handle_signals=True)
        log.info("stopping")
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        server.close()
        thread.stop()
        notifier.close()
        store.close()
    return 0


def demo(*, state_dir: str | None, port: int) -> int:
    """Start the simulator and the full service against it; print the page's URL."""
    from breakglass.sim.runner import SimThread

    # A folder of our own (keys, tokens, database) is removed on exit; a given one is kept.
    temp = None if state_dir else tempfile.TemporaryDirectory(prefix="breakglass-demo-")
    folder = Path(state_dir) if state_dir else Path(temp.name)  # type: ignore[union-attr]
    try:
        with SimThread() as thread:
            # The config the simulator writes names the port served, so `trigger -c` reaches it.
            sim = thread.serve(folder, "demo", web_port=port)
            cfg = sim.config

            def ready(url: str) -> None:
                print(json.dumps({"url": url, **sim.info}), flush=True)
                print(
                    f"\nbreakglass demo: open {url}\n  config: {sim.config_path}\n",
                    file=sys.stderr,
                    flush=True,
                )

            return serve(cfg, on_ready=ready)
    finally:
        if temp is not None:
            temp.cleanup()
