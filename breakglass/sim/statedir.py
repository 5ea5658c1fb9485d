"""The simulator's state folder: keys, ports, known_hosts and a ready config.yaml.

Everything a watchdog needs to talk to a simulator lives in one folder, so
restarting ``breakglass sim --state-dir DIR`` keeps the same host keys, the
same client key and (when they are still free) the same ports: a config that
worked before keeps working.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import yaml

from breakglass.config import Config, load_config

PROFILES: dict[str, dict[str, Any]] = {
    # Seconds everywhere: tests must see a whole incident in a few seconds.
    "test": {
        "probe": {
            "interval_seconds": 1.0,
            "jitter_seconds": 0.0,
            "connect_timeout_seconds": 1.0,
            "command_timeout_seconds": 2.0,
            "status_timeout_seconds": 2.0,
            "round_timeout_seconds": 4.0,
        },
        "rules": {
            "ssh_rounds": 2,
            "memory_for_seconds": 2.0,
            "load_for_seconds": 3.0,
            "boot_grace_seconds": 3.0,
            "clear_rounds": 1,
        },
        "budget": {"max_actions": 3, "window_seconds": 3600.0, "min_gap_seconds": 1.0},
        "incidents": {
            "cooldown_seconds": 3.0,
            "verify_rounds": 2,
            "verify_timeout_seconds": 15.0,
            "lease_seconds": 3.0,
        },
        # auto: the model agent runs when ANTHROPIC_API_KEY is set (the test suite unsets it).
        "agent": {"enabled": "auto"},
        "demo": False,
    },
    # Human scale: slow enough to watch, fast enough to finish a story in minutes.
    "demo": {
        "probe": {
            "interval_seconds": 5.0,
            "jitter_seconds": 1.0,
            "connect_timeout_seconds": 3.0,
            "command_timeout_seconds": 10.0,
            "round_timeout_seconds": 20.0,
        },
        "rules": {
            "ssh_rounds": 3,
            "memory_for_seconds": 30.0,
            "load_for_seconds": 60.0,
            "boot_grace_seconds": 40.0,
            "clear_rounds": 2,
        },
        "budget": {"max_actions": 3, "window_seconds": 6 * 3600.0, "min_gap_seconds": 60.0},
        "incidents": {
            "cooldown_seconds": 60.0,
            "verify_rounds": 3,
            "verify_timeout_seconds": 180.0,
            "lease_seconds": 15.0,
        },
        "agent": {"enabled": "auto"},
        "demo": True,
    },
}

DEVVM_USER = "breakglass"
PVE_USER = "root"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class StatePaths:
    """Where each file of one simulator's state folder lives."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    @property
    def devvm_host_key(self) -> Path:
        return self.root / "devvm_host_ed25519"

    @property
    def pve_host_key(self) -> Path:
        return self.root / "pve_host_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def store(self) -> Path:
        return self.root / "breakglass.db"

    @property
    def webhook_token(self) -> Path:
        return self.root / "webhook_token"

    @property
    def api_token(self) -> Path:
        return self.root / "api_token"

    @property
    def ports(self) -> Path:
        return self.root / "ports.json"


@dataclass(frozen=True)
class SimKeys:
    """The three key pairs of one simulator: two host keys and the watchdog's client key."""

    client: asyncssh.SSHKey
    devvm_host: asyncssh.SSHKey
    pve_host: asyncssh.SSHKey


def prepare_dir(state_dir: str | os.PathLike[str]) -> StatePaths:
    """Create the state folder (owner-only when new) and return its paths."""
    root = Path(state_dir).expanduser().resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return StatePaths(root)


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret so that it is never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def _load_or_make_key(path: Path, comment: str) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    _write_private(path, key.export_private_key())
    key.write_public_key(path.with_name(path.name + ".pub"))
    return key


def ensure_keys(paths: StatePaths) -> SimKeys:
    """Load the folder's keys, generating any that are missing."""
    return SimKeys(
        client=_load_or_make_key(paths.client_key, "breakglass-watchdog"),
        devvm_host=_load_or_make_key(paths.devvm_host_key, "breakglass-sim-devvm"),
        pve_host=_load_or_make_key(paths.pve_host_key, "breakglass-sim-pve"),
    )


def ensure_token(path: Path) -> str:
    """Return the token stored in ``path``, creating a random one if there is none."""
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    _write_private(path, (token + "\n").encode())
    return token


def load_ports(paths: StatePaths) -> dict[str, int]:
    """Return the ports the previous run used (empty when there was none or the file is bad)."""
    try:
        data = json.loads(paths.ports.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int) and 0 < v < 65536}


def save_ports(paths: StatePaths, ports: dict[str, int]) -> None:
    """Remember the ports so a restart can ask for the same ones."""
    paths.ports.write_text(json.dumps(ports, sort_keys=True) + "\n", encoding="utf-8")


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a TCP listener could bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# A port picked now for a server another process binds later must not be handed out meanwhile.
# The kernel hands out ports on its own (a bind to port 0, the local end of every outgoing
# connection) only from net.ipv4.ip_local_port_range, so picks come from below it: from
# PICK_LOW up, each process from its own pid-derived place, then one after another.
PICK_LOW = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_pick_lock = threading.Lock()
_span: int | None = None  # ports from PICK_LOW up to the ephemeral range
_next_pick = PICK_LOW


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default range starts here


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port(preferred: int | None = None, host: str = LOOPBACK) -> int:
    """Return ``preferred`` if it is free, else a free port the kernel does not hand out itself.

    Falls back to a port the kernel picks when the ephemeral range leaves too little room below it.
    """
    global _next_pick, _span
    if preferred and port_is_free(preferred, host):
        return preferred
    with _pick_lock:
        if _span is None:  # read once: the range is a machine setting
            _span = _ephemeral_low() - PICK_LOW
            _next_pick = PICK_LOW + (os.getpid() * 7919) % max(_span, 1)
        if _span >= 1000:
            for _ in range(_span):
                port = _next_pick
                _next_pick = PICK_LOW + (port - PICK_LOW + 1) % _span
                if port_is_free(port, host):
                    return port
    return _kernel_port(host)


def write_known_hosts(paths: StatePaths, keys: SimKeys, devvm_port: int, pve_port: int) -> None:
    """Pin both servers' host keys for the ports they listen on now."""
    lines = [
        f"[{LOOPBACK}]:{devvm_port} {keys.devvm_host.export_public_key('openssh').decode().strip()}",
        f"[{LOOPBACK}]:{pve_port} {keys.pve_host.export_public_key('openssh').decode().strip()}",
    ]
    paths.known_hosts.write_text("\n".join(lines) + "\n", encoding="utf-8")


def target_entry(
    paths: StatePaths, *, name: str, vmid: int, devvm_port: int, pve_port: int
) -> dict[str, Any]:
    """The config's ``targets[]`` item for one simulated VM (benchmarks combine several)."""

    def endpoint(port: int, user: str) -> dict[str, Any]:
        return {
            "host": LOOPBACK,
            "port": port,
            "user": user,
            "key_file": str(paths.client_key),
            "known_hosts": str(paths.known_hosts),
        }

    return {
        "name": name,
        "vmid": vmid,
        "devvm": endpoint(devvm_port, DEVVM_USER),
        "pve": endpoint(pve_port, PVE_USER),
    }


def config_document(
    paths: StatePaths,
    profile: str,
    *,
    targets: list[dict[str, Any]],
    web_port: int,
    control_url: str | None,
) -> dict[str, Any]:
    """Build the whole config mapping for ``profile`` (``test`` or ``demo``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    numbers = PROFILES[profile]
    return {
        "store_path": str(paths.store),
        "targets": targets,
        "probe": dict(numbers["probe"]),
        "rules": dict(numbers["rules"]),
        "budget": dict(numbers["budget"]),
        "incidents": dict(numbers["incidents"]),
        "agent": dict(numbers["agent"]),
        "web": {
            "bind": LOOPBACK,
            "port": web_port,
            "webhook_token_file": str(paths.webhook_token),
            "api_token_file": str(paths.api_token),
        },
        "demo": numbers["demo"],
        "sim_control_url": control_url,
    }


def write_config(paths: StatePaths, document: dict[str, Any]) -> Config:
    """Write ``config.yaml`` and return it loaded, so a broken document fails here, loudly."""
    ensure_token(paths.webhook_token)
    ensure_token(paths.api_token)
    header = "# Written by `breakglass sim`; regenerated on every start of the simulator.\n"
    text = header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    tmp = paths.config.with_name(paths.config.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(tmp)
    except Exception:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # Readers never see a half-written file.
    tmp.replace(paths.config)
    return cfg
