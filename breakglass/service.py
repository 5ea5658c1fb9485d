"""``breakglass serve`` and ``breakglass demo``: wire store, core, web and run them."""

from __future__ import annotations

import ipaddress
import json
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog
import waitress

from breakglass.config import Config, WebSettings
from breakglass.core import Core, CoreThread
from breakglass.log import configure_logging
from breakglass.metrics import Metrics
from breakglass.notify import Notifier
from breakglass.store import Store
from breakglass.web.app import create_app

log = structlog.get_logger("breakglass.service")


def bind_problem(web: WebSettings) -> str | None:
    """Why serving on ``web.bind`` would be unsafe, or None when it is fine."""
    if web.auth.mode != "none":
        return None
    host = web.bind.strip("[]")
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        f"refusing to serve on {web.bind} without authentication: set web.auth.mode to "
        "'proxy' (with web.auth.proxy_users and proxy_addresses) or 'token' (with "
        "web.auth.token_file), or bind 127.0.0.1"
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(cfg: Config, *, on_ready: Callable[[str], None] | None = None) -> int:
    """Run the watchdog and its web server until SIGINT/SIGTERM; return the exit code."""
    configure_logging(cfg.log)
    problem = bind_problem(cfg.web)
    if problem:
        print(f"breakglass: {problem}", file=sys.stderr)
        return 2
    cfg.store_path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.store_path)
    metrics = Metrics()
    core = Core(cfg, store=store, metrics=metrics)
    # Local URL until the server knows its port; public_url wins when configured.
    notifier = Notifier(cfg.notify, cfg.web.public_url or "", store=store)
    core.observers.add(notifier)
    thread = CoreThread(core)
    handle = thread.start()
    app = create_app(cfg, store=store, metrics=metrics, core=handle)
    server = waitress.create_server(
        app, host=cfg.web.bind, port=cfg.web.port, threads=cfg.web.threads, ident="breakglass"
    )
    host = cfg.web.bind if ":" not in cfg.web.bind else f"[{cfg.web.bind}]"
    url = f"http://{host}:{server.effective_port}/"
    notifier.public_url = cfg.web.public_url or url
    log.info("serving", url=url, targets=[t.name for t in cfg.targets], dry_run=cfg.budget.dry_run)
    if on_ready is not None:
        on_ready(url)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.run()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        thread.stop()
        notifier.close()
        store.close()
    return 0


def demo(*, state_dir: str | None, port: int) -> int:
    """Start the simulator and the full service against it; print the page's URL."""
    from breakglass.sim.runner import SimThread

    folder = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="breakglass-demo-"))
    with SimThread() as thread:
        sim = thread.serve(folder, "demo")
        cfg = sim.config.model_copy(update={"web": sim.config.web.model_copy(update={"port": port})})

        def ready(url: str) -> None:
            print(json.dumps({"url": url, **sim.info}), flush=True)
            print(f"\nbreakglass demo: open {url}\n", file=sys.stderr, flush=True)

        return serve(cfg, on_ready=ready)
