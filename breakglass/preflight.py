"""The checks ``serve`` runs before it listens, shared with ``check-config``.

``check-config`` passing means ``serve`` starts: both call
:func:`startup_problems`, which reports every problem at once (an unsafe
bind, an unusable auth token file, a port already taken).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket

from breakglass.config import Config, WebSettings, read_secret


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


def secrets_problems(cfg: Config) -> list[str]:
    """Token files that exist (load_config checked that) but cannot serve their purpose."""
    problems: list[str] = []
    if cfg.web.auth.mode == "token":
        try:
            if not read_secret(cfg.web.auth.token_file):
                problems.append(f"web.auth.token_file: {cfg.web.auth.token_file} is empty")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"web.auth.token_file: cannot read {cfg.web.auth.token_file}: {exc}")
    return problems


def port_problem(web: WebSettings) -> str | None:
    """Why ``web.bind``:``web.port`` cannot be listened on now (taken, or no such address), or None."""
    if web.port == 0:
        return None
    host = web.bind.strip("[]")
    try:
        infos = socket.getaddrinfo(host, web.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"web.bind: cannot resolve {web.bind!r}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with contextlib.closing(socket.socket(family, kind, proto)) as sock:
        # The same option the server sets: a port in TIME_WAIT is not "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"web.port: {web.bind}:{web.port} is already in use (another breakglass "
                    "or another service); stop it or choose another web.port"
                )
            return f"web.bind: cannot listen on {web.bind}:{web.port}: {exc.strerror or exc}"
    return None


def startup_problems(cfg: Config, *, check_port: bool = True) -> list[str]:
    """Everything that would stop ``serve`` from starting with ``cfg``; empty when it would start."""
    problems = [p for p in (bind_problem(cfg.web),) if p]
    problems += secrets_problems(cfg)
    if check_port and (p := port_problem(cfg.web)):
        problems.append(p)
    return problems
