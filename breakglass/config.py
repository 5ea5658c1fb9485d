"""Typed configuration: YAML validated by pydantic, secrets from env or files.

One model for the whole service. Unknown keys are rejected everywhere, so a
typo is an error that names the key rather than a silently ignored setting.
Durations are seconds (``*_seconds``), ratios are 0..1 (``*_ratio``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_MODEL = "claude-sonnet-5-5"


class ConfigError(Exception):
    """A configuration problem, phrased as ``FILE: key.path: what is wrong``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshEndpoint(_Model):
    """How to reach one SSH server, with its host key pinned."""

    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1)
    key_file: Path
    known_hosts: Path


class Target(_Model):
    """One watched VM: its guest over SSH and its Proxmox host's forced command."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    vmid: int = Field(ge=100, le=999_999_999)
    devvm: SshEndpoint
    pve: SshEndpoint


class ProbeSettings(_Model):
    """How often and how patiently each target is probed."""

    # The defaults and why they are what they are: config/breakglass.example.yaml.
    interval_seconds: float = Field(10.0, gt=0)
    jitter_seconds: float = Field(0.0, ge=0)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    command_timeout_seconds: float = Field(5.0, gt=0)
    # The Proxmox host's status and forensics: on a wedged QEMU the forced command waits
    # out its QMP timeout, then asks `qm list` (deploy/pve/breakglass-verbs, 7 s at most).
    status_timeout_seconds: float = Field(8.0, gt=0)
    round_timeout_seconds: float = Field(9.0, gt=0)
    output_cap_bytes: int = Field(65536, ge=1024)
    keepalive_seconds: float = Field(30.0, ge=0)
    max_concurrent_handshakes: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _round_covers_commands(self) -> ProbeSettings:
        if self.round_timeout_seconds < self.connect_timeout_seconds:
            raise ValueError("round_timeout_seconds must be >= connect_timeout_seconds")
        if self.round_timeout_seconds < self.status_timeout_seconds:
            raise ValueError("round_timeout_seconds must be >= status_timeout_seconds")
        return self


class RuleSettings(_Model):
    """Thresholds, how long they must hold, and how long they take to clear."""

    ssh_slow_seconds: float = Field(5.0, gt=0)
    ssh_rounds: int = Field(3, ge=1)
    guest_agent_rounds: int = Field(3, ge=1)
    vm_not_running_rounds: int = Field(1, ge=1)
    mem_available_ratio: float = Field(0.03, gt=0, lt=1)
    swap_used_ratio: float = Field(0.90, gt=0, le=1)
    memory_for_seconds: float = Field(120.0, ge=0)
    disk_used_ratio: float = Field(0.98, gt=0, le=1)
    disk_rounds: int = Field(1, ge=1)
    load_per_cpu: float = Field(8.0, gt=0)
    load_for_seconds: float = Field(300.0, ge=0)
    failed_units_rounds: int = Field(2, ge=1)
    pve_rounds: int = Field(3, ge=1)
    clear_rounds: int = Field(2, ge=1)
    boot_grace_seconds: float = Field(180.0, ge=0)


class BudgetSettings(_Model):
    """The power-action budget: a sliding window plus a minimum gap."""

    max_actions: int = Field(3, ge=0)
    window_seconds: float = Field(6 * 3600.0, gt=0)
    min_gap_seconds: float = Field(600.0, ge=0)
    verb_timeout_seconds: float = Field(180.0, gt=0)
    dry_run: bool = False


class IncidentSettings(_Model):
    """Incident lifecycle timing."""

    cooldown_seconds: float = Field(600.0, ge=0)
    verify_rounds: int = Field(3, ge=1)
    verify_timeout_seconds: float = Field(600.0, gt=0)
    repeat_interval_seconds: float = Field(4 * 3600.0, gt=0)
    # How long the process working an incident holds it without renewing (it renews
    # every third of this). Another process sharing the store takes the incident over
    # only after its holder's lease lapsed: this is also how long an incident waits
    # after a crash (a clean stop lets go at once).
    lease_seconds: float = Field(30.0, gt=0)


class RetentionSettings(_Model):
    """How long stored history is kept; older probe readings are pruned on a schedule."""

    readings_seconds: float = Field(21600.0, gt=0)
    prune_interval_seconds: float = Field(600.0, gt=0)


class RemediationSettings(_Model):
    """What the runbook remediator may do in the guest."""

    journal_vacuum_size: str = Field("200M", pattern=r"^[0-9]+[KMG]?$")
    cleanup_paths: tuple[str, ...] = ("/var/tmp/breakglass-cleanup",)
    hog_allowlist: tuple[str, ...] = Field(
        (),
        description="Process names or unit names the remediator may stop when memory runs out.",
    )


class AgentSettings(_Model):
    """The Claude agent. The API key never lives in this file."""

    enabled: Literal["auto", "always", "never"] = "auto"
    model: str = Field(DEFAULT_MODEL, min_length=1)
    base_url: str | None = None
    api_key_env: str = "ANTHROPIC_API_KEY"
    api_key_file: Path | None = None
    max_turns: int = Field(40, ge=1, le=500)
    max_tokens_per_incident: int = Field(400_000, ge=1000)
    max_tokens_per_response: int = Field(4096, ge=256)
    wall_clock_seconds: float = Field(900.0, gt=0)
    runbooks_dir: Path | None = None

    def api_key(self) -> str | None:
        """Return the API key from the key file or the environment, if any."""
        if self.api_key_file is not None:
            return self.api_key_file.read_text(encoding="utf-8").strip() or None
        return os.environ.get(self.api_key_env) or None


class AuthSettings(_Model):
    """Web authentication: none (loopback only), a trusted proxy header, or a token."""

    mode: Literal["none", "proxy", "token"] = "none"
    proxy_header: str = "X-Forwarded-User"
    proxy_users: tuple[str, ...] = ()
    proxy_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    token_file: Path | None = None

    @model_validator(mode="after")
    def _mode_has_its_settings(self) -> AuthSettings:
        if self.mode == "proxy" and not self.proxy_users:
            raise ValueError("mode 'proxy' needs proxy_users (the allowed user names)")
        if self.mode == "token" and self.token_file is None:
            raise ValueError("mode 'token' needs token_file")
        return self


class WebSettings(_Model):
    """The page, the JSON API and the webhook."""

    bind: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    public_url: str | None = None
    threads: int = Field(16, ge=4, le=256)
    auth: AuthSettings = AuthSettings()
    webhook_token_file: Path | None = None
    api_token_file: Path | None = None
    alert_target_label: str = "target"


class NotifySettings(_Model):
    """Apprise URLs notified on incident opened, resolved and escalated."""

    urls: tuple[str, ...] = ()
    timeout_seconds: float = Field(10.0, gt=0)


class LogSettings(_Model):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Model):
    """The whole service configuration."""

    store_path: Path = Path("breakglass.db")
    targets: tuple[Target, ...] = Field(min_length=1)
    probe: ProbeSettings = ProbeSettings()
    rules: RuleSettings = RuleSettings()
    budget: BudgetSettings = BudgetSettings()
    incidents: IncidentSettings = IncidentSettings()
    retention: RetentionSettings = RetentionSettings()
    remediation: RemediationSettings = RemediationSettings()
    agent: AgentSettings = AgentSettings()
    web: WebSettings = WebSettings()
    notify: NotifySettings = NotifySettings()
    log: LogSettings = LogSettings()
    demo: bool = False
    sim_control_url: str | None = None

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: tuple[Target, ...]) -> tuple[Target, ...]:
        seen: set[str] = set()
        for t in targets:
            if t.name in seen:
                raise ValueError(f"duplicate target name {t.name!r}")
            seen.add(t.name)
        return targets

    def target(self, name: str) -> Target:
        """Return the target called ``name``; KeyError if there is none."""
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def _check_readable(path: Path, where: str, errors: list[str]) -> None:
    try:
        exists, is_file = path.exists(), path.is_file()
    except PermissionError:
        # A folder on the way that this user may not enter (e.g. keys owned by another user).
        errors.append(f"{where}: file {path} is not readable (a folder on its path is not searchable)")
        return
    if not exists:
        errors.append(f"{where}: file {path} does not exist")
    elif not is_file:
        errors.append(f"{where}: {path} is not a file")
    elif not os.access(path, os.R_OK):
        errors.append(f"{where}: file {path} is not readable")


def _with_paths_resolved(cfg: Config, base: Path) -> Config:
    """Make relative paths relative to the config file's folder."""

    def ep(e: SshEndpoint) -> SshEndpoint:
        return e.model_copy(
            update={"key_file": _resolve(e.key_file, base), "known_hosts": _resolve(e.known_hosts, base)}
        )

    targets = tuple(t.model_copy(update={"devvm": ep(t.devvm), "pve": ep(t.pve)}) for t in cfg.targets)
    agent = cfg.agent.model_copy(
        update={
            "api_key_file": cfg.agent.api_key_file and _resolve(cfg.agent.api_key_file, base),
            "runbooks_dir": cfg.agent.runbooks_dir and _resolve(cfg.agent.runbooks_dir, base),
        }
    )
    auth = cfg.web.auth.model_copy(
        update={"token_file": cfg.web.auth.token_file and _resolve(cfg.web.auth.token_file, base)}
    )
    web = cfg.web.model_copy(
        update={
            "auth": auth,
            "webhook_token_file": cfg.web.webhook_token_file
            and _resolve(cfg.web.webhook_token_file, base),
            "api_token_file": cfg.web.api_token_file and _resolve(cfg.web.api_token_file, base),
        }
    )
    return cfg.model_copy(
        update={
            "targets": targets,
            "agent": agent,
            "web": web,
            "store_path": _resolve(cfg.store_path, base),
        }
    )


def _file_errors(cfg: Config) -> list[str]:
    errors: list[str] = []
    for i, t in enumerate(cfg.targets):
        for side in ("devvm", "pve"):
            e: SshEndpoint = getattr(t, side)
            _check_readable(e.key_file, f"targets[{i}].{side}.key_file", errors)
            _check_readable(e.known_hosts, f"targets[{i}].{side}.known_hosts", errors)
    optional = {
        "agent.api_key_file": cfg.agent.api_key_file,
        "web.auth.token_file": cfg.web.auth.token_file,
        "web.webhook_token_file": cfg.web.webhook_token_file,
        "web.api_token_file": cfg.web.api_token_file,
    }
    for where, path in optional.items():
        if path is not None:
            _check_readable(path, where, errors)
    if cfg.agent.runbooks_dir is not None and not cfg.agent.runbooks_dir.is_dir():
        errors.append(f"agent.runbooks_dir: {cfg.agent.runbooks_dir} is not a directory")
    return errors


def parse_config(data: Any, *, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate a parsed YAML document; raise ConfigError naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_loc(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    cfg = _with_paths_resolved(cfg, base or Path.cwd())
    errors = _file_errors(cfg)
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file; raise ConfigError on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file does not exist") from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: {where}invalid YAML: {problem}") from None
    return parse_config(data, source=str(p), base=p.resolve().parent)


def read_secret(path: Path | None) -> str | None:
    """Return a secret file's stripped text, or None when no file is configured."""
    if path is None:
        return None
    return path.read_text(encoding="utf-8").strip() or None


# path -> (inode, size, mtime in ns) of the file last read, and what it held.
_CURRENT_SECRETS: dict[Path, tuple[tuple[int, int, int], str | None]] = {}


def current_secret(path: Path | None) -> str | None:
    """``read_secret`` for a file read on every request: a ``stat``, and a read only when it changed.

    A secret replaced in place, by a rename or by a Kubernetes secret update (a new
    inode behind the symlink) is used from the next call on, as with reading every time.
    """
    if path is None:
        return None
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    known = _CURRENT_SECRETS.get(path)
    if known is not None and known[0] == key:
        return known[1]
    value = read_secret(path)
    _CURRENT_SECRETS[path] = (key, value)
    return value
