"""``breakglass trigger``: open (or attach to) an incident through the local JSON API."""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from breakglass.config import Config, read_secret

TIMEOUT_SECONDS = 15.0
# A wildcard bind is reached on loopback from the same host.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - mapped, not bound


def api_base(cfg: Config) -> str:
    """The local API's base URL from ``web.bind`` and ``web.port``."""
    host = cfg.web.bind.strip("[]")
    host = WILDCARDS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.web.port}"


def _default_target(cfg: Config, target: str | None) -> str | None:
    if target is not None:
        return target
    if len(cfg.targets) == 1:
        return cfg.targets[0].name
    return None


def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST a JSON body; the status and the decoded JSON answer (empty when not JSON)."""
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(  # noqa: S310 - an http URL built from the config
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as resp:  # noqa: S310 - http(s) URL built above
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        answer = {}
    return status, answer if isinstance(answer, dict) else {}


def trigger_command(cfg: Config, *, target: str | None, reason: str, authorize_power: bool = False) -> int:
    """Ask the running service to open an incident; exit 0 ok, 1 unreachable or 5xx, 2 bad usage."""
    name = _default_target(cfg, target)
    if name is None:
        names = ", ".join(t.name for t in cfg.targets)
        print(
            f"breakglass: several targets are configured ({names}); choose one with --target", file=sys.stderr
        )
        return 2
    try:
        token = read_secret(cfg.web.api_token_file)
    except OSError as exc:
        print(f"breakglass: cannot read web.api_token_file: {exc}", file=sys.stderr)
        return 2
    if not token:
        print("breakglass: set web.api_token_file in the config (the API token)", file=sys.stderr)
        return 2
    url = f"{api_base(cfg)}/api/v1/incidents"
    headers = {"Authorization": f"Bearer {token}", "X-Breakglass-Client": "cli"}
    # Without a login name in this environment the user is recorded as "api".
    with contextlib.suppress(OSError, KeyError):
        headers["X-Breakglass-User"] = getpass.getuser()
    try:
        body: dict[str, Any] = {"target": name, "reason": reason}
        if authorize_power:
            body["authorize_power"] = True
        status, answer = post_json(url, body, headers)
    except (OSError, urllib.error.URLError) as exc:
        print(f"breakglass: the service at {api_base(cfg)} is unreachable: {exc}", file=sys.stderr)
        return 1
    if status in (200, 201):
        how = "opened" if answer.get("created") else "attached to"
        print(f"{how} incident {answer.get('id')} on {name}")
        return 0
    detail = answer.get("detail") or answer.get("error") or f"HTTP {status}"
    print(f"breakglass: the service answered {status}: {detail}", file=sys.stderr)
    return 1 if status >= 500 else 2
