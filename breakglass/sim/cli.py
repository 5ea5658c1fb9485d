"""``breakglass sim``: run a simulator, or drive a running one through its control URL.

``run`` prints exactly one JSON line on stdout (ports, control URL, paths)
and serves until SIGINT or SIGTERM; everything else goes to stderr, so a
parent process can read that line and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Any

from breakglass.config import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_TIMEOUT_SECONDS = 5.0

log = logging.getLogger(__name__)


def run(state_dir: str | None, profile: str) -> int:
    """Serve a simulator from ``state_dir`` (a new temp folder when None) until signalled."""
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    folder = state_dir or tempfile.mkdtemp(prefix="breakglass-sim-")
    try:
        return asyncio.run(_serve(folder, profile))
    except ConfigError as exc:
        print(f"breakglass sim: the generated config is invalid\n{exc}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:
        print(f"breakglass sim: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAIL


async def _serve(folder: str, profile: str) -> int:
    from breakglass.sim.runner import SimServer, cancel_leftovers

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    server = SimServer(folder, profile)
    await server.start()
    try:
        sys.stdout.write(json.dumps(server.info()) + "\n")
        sys.stdout.flush()
        print(
            f"breakglass sim ({profile}): {server.paths.config}\n"
            f"  web port for breakglass serve: {server.web_port} (named in the config)\n"
            f"  breakglass serve -c {server.paths.config}   # then open http://127.0.0.1:{server.web_port}/\n"
            f"  breakglass probe -c {server.paths.config}\n"
            f"  breakglass sim inject io_stall --control {server.control_url}\n"
            f"  breakglass sim clear --control {server.control_url}",
            file=sys.stderr,
            flush=True,
        )
        await done.wait()
    finally:
        await server.stop()
        await cancel_leftovers()
    return EXIT_OK


def _request(control_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """Send one control request; return (HTTP status, decoded JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - the scheme is checked by the caller
        control_url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_SECONDS) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"null")
        except ValueError:
            payload = {"error": f"HTTP {exc.code}"}
        return exc.code, payload


def _drive(control_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    if not control_url.startswith(("http://", "https://")):
        print(f"breakglass sim: --control must be an http:// URL, got {control_url!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        status, payload = _request(control_url, method, path, body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"breakglass sim: cannot reach the simulator at {control_url}: {reason}", file=sys.stderr)
        return EXIT_FAIL
    if status >= 400:
        error = payload.get("error") if isinstance(payload, dict) else payload
        print(f"breakglass sim: {error}", file=sys.stderr)
        return EXIT_USAGE if status < 500 else EXIT_FAIL
    print(json.dumps(payload, indent=2, sort_keys=True))
    return EXIT_OK


def inject(control_url: str, fault: str) -> int:
    """Inject ``fault`` into the simulator at ``control_url`` and print its new state."""
    return _drive(control_url, "POST", "/faults", {"fault": fault})


def clear(control_url: str) -> int:
    """Clear every fault of the simulator at ``control_url`` and print its new state."""
    return _drive(control_url, "DELETE", "/faults")
