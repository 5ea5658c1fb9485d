"""``breakglass doctor``: check every prerequisite against the real hosts, with the fix.

``check-config`` looks at the file alone; the doctor logs in where the watchdog
will: the devvm over SSH (pinned host key, the key, passwordless sudo, the
commands the probes and runbook run) and the Proxmox host (pinned host key, the
key, the forced command answering ``status`` for the configured VM id and
rejecting anything else, the guest agent). Then the watchdog's own side: the
web bind and its auth, the secret files, the store folder.

One line per check, ✓ or ✗, and under every ✗ the fix. A check that needs an
earlier one that failed is shown as not checked (–). Exit 0 only when every
check passed.

To prove that the Proxmox door is locked the doctor sends one string that is
not a verb (``echo breakglass-doctor-unforced``) through the plain SSH seam,
not through ``PveClient``, which sends the six verbs only. The forced command
must reject it; if a shell runs it instead, the echo comes back and says so.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import asyncssh

from breakglass.agent.diagnose import EVIDENCE_COMMAND
from breakglass.config import Config, SshEndpoint, Target, read_secret
from breakglass.preflight import bind_problem
from breakglass.remote import DevvmSession, DevvmShell, RemoteError, Verb, parse_status
from breakglass.watchdog.parse import PROBE_COMMAND

# Commands the runbook runs besides those in the probe and evidence commands.
RUNBOOK_COMMANDS = ("systemctl", "journalctl", "rm", "ps", "head", "kill", "df", "cat")
NOT_A_VERB = "echo breakglass-doctor-unforced"
UNFORCED_MARK = "breakglass-doctor-unforced"
MIN_TOKEN_CHARS = 16
PASS, FAIL, SKIP = "✓", "✗", "–"


@dataclass(frozen=True)
class Check:
    """One prerequisite: what was checked, whether it holds, and the fix when it does not."""

    what: str
    ok: bool | None  # None: not checked, an earlier check it needs failed
    detail: str = ""
    fix: str = ""

    def lines(self) -> list[str]:
        """The check as printed: the mark and what, then the detail and fix when it failed."""
        mark = PASS if self.ok else (SKIP if self.ok is None else FAIL)
        out = [f"  {mark} {self.what}" + (f": {self.detail}" if self.detail else "")]
        if self.ok is False and self.fix:
            out += [f"      fix: {line}" for line in self.fix.splitlines()]
        return out


def guest_commands() -> tuple[str, ...]:
    """Every command name the probe, the evidence step and the runbook run in the guest."""
    names: list[str] = []
    for line in (PROBE_COMMAND, EVIDENCE_COMMAND):
        for part in line.replace("&&", ";").replace("|", ";").split(";"):
            words = part.split()
            if words and words[0] == "sudo":
                words = words[1:]
            if words:
                names.append(words[0])
    names += ["sudo", *RUNBOOK_COMMANDS]
    return tuple(dict.fromkeys(names))


def _public_key(ep: SshEndpoint) -> str:
    """The public half of the endpoint's key, for an authorized_keys line in a fix."""
    try:
        key = asyncssh.read_private_key(str(ep.key_file))
        return key.export_public_key("openssh").decode().strip()
    except (OSError, asyncssh.KeyImportError) as exc:
        return f"<public key of {ep.key_file}: {exc}>"


def _reach_checks(side: str, ep: SshEndpoint, exc: RemoteError | None) -> list[Check]:
    """The two login checks (host key, then the key) from how connecting went."""
    where = f"{side} {ep.user}@{ep.host}:{ep.port}"
    answers = f"{where} answers SSH with the pinned host key"
    logs_in = f"{side} key {ep.key_file} logs in as {ep.user}"
    if exc is None:
        return [Check(answers, True), Check(logs_in, True)]
    if exc.kind == "host_key":
        fix = (
            f"collect the key with `ssh-keyscan -p {ep.port} -t ed25519 {ep.host}`, compare its "
            f"fingerprint (`ssh-keygen -l -f FILE`) with the host's console, then put that line in "
            f"{ep.known_hosts} in place of any old one"
        )
        return [Check(answers, False, str(exc), fix), Check(logs_in, None, "needs the host key")]
    if exc.kind == "auth":
        pub = _public_key(ep)
        if side == "pve":
            fix = (
                "install the forced command with this key on the Proxmox host: "
                f"deploy/pve/install.py install --vmid VMID --from WATCHDOG_ADDRESS --key '{pub}'"
            )
        else:
            fix = (
                f"on the devvm add this line to ~{ep.user}/.ssh/authorized_keys (mode 0600, owned by "
                f"{ep.user}):\nrestrict,from=\"WATCHDOG_ADDRESS\" {pub}"
            )
        return [Check(answers, True), Check(logs_in, False, str(exc), fix)]
    fix = (
        f"check that {ep.host} is up and sshd listens on port {ep.port}, that host and port in the "
        "config are right, and that no firewall drops the watchdog's address"
    )
    return [Check(answers, False, str(exc), fix), Check(logs_in, None, "needs an SSH answer")]


def _ssh(ep: SshEndpoint, cfg: Config) -> DevvmShell:
    return DevvmShell(
        ep,
        connect_timeout=cfg.probe.connect_timeout_seconds,
        command_timeout=cfg.probe.command_timeout_seconds,
    )


async def devvm_checks(cfg: Config, target: Target) -> list[Check]:
    """Log in to the devvm; check sudo and the commands the watchdog runs there."""
    ep = target.devvm
    sudo_what = "devvm `sudo -n true` works (passwordless sudo for repairs)"
    cmds_what = "devvm has the commands the probes and runbook run"
    try:
        async with _ssh(ep, cfg).session() as s:
            checks = _reach_checks("devvm", ep, None)
            checks.append(await _sudo_check(s, ep, sudo_what))
            checks.append(await _commands_check(s, cmds_what))
            return checks
    except RemoteError as exc:
        needs = "needs a login"
        skipped = [Check(sudo_what, None, needs), Check(cmds_what, None, needs)]
        return [*_reach_checks("devvm", ep, exc), *skipped]


async def _sudo_check(s: DevvmSession, ep: SshEndpoint, what: str) -> Check:
    r = await s.run("sudo -n true")
    if r.ok:
        return Check(what, True)
    said = (r.stderr.strip() or r.stdout.strip() or f"exit status {r.exit_status}")[:200]
    if r.exit_status == 127:
        fix = "install sudo on the devvm (apt-get install sudo)"
    else:
        fix = (
            f"on the devvm: echo '{ep.user} ALL=(ALL) NOPASSWD: ALL' | sudo tee /etc/sudoers.d/breakglass"
            "\nsudo chmod 0440 /etc/sudoers.d/breakglass"
            "\nsudo visudo --check --file=/etc/sudoers.d/breakglass"
        )
    return Check(what, False, "timed out" if r.timed_out else said, fix)


async def _commands_check(s: DevvmSession, what: str) -> Check:
    wanted = guest_commands()
    r = await s.run("command -v " + " ".join(shlex.quote(c) for c in wanted))
    if r.timed_out:
        return Check(what, False, "`command -v` timed out", "look at the devvm's load and its sshd")
    found = {line.strip().rsplit("/", 1)[-1] for line in r.stdout.splitlines() if line.strip()}
    missing = [c for c in wanted if c not in found]
    if not missing:
        return Check(what, True, ", ".join(wanted))
    return Check(
        what,
        False,
        f"missing: {', '.join(missing)}",
        "install them on the devvm (Debian: apt-get install procps coreutils util-linux systemd sudo) "
        "and make sure they are on the login user's PATH",
    )


async def pve_checks(cfg: Config, target: Target) -> list[Check]:
    """Log in to the Proxmox host; check the forced command and the guest agent through it."""
    ep, vmid = target.pve, target.vmid
    install = (
        f"on the Proxmox host run deploy/pve/install.py install --vmid {vmid} "
        f"--from WATCHDOG_ADDRESS --key '{_public_key(ep)}'"
    )
    status_what = f"pve forced command answers `status` with JSON for VM {vmid}"
    reject_what = "pve forced command rejects anything but the six verbs"
    agent_what = f"guest agent of VM {vmid} answers"
    try:
        async with _ssh(ep, cfg).session() as s:
            checks = _reach_checks("pve", ep, None)
            status_check, agent_check = await _status_checks(
                s, vmid, install, status_what, agent_what, cfg.probe.status_timeout_seconds
            )
            checks.append(status_check)
            checks.append(await _reject_check(s, install, reject_what))
            checks.append(agent_check)
            return checks
    except RemoteError as exc:
        needs = "needs a login"
        skipped = [Check(w, None, needs) for w in (status_what, reject_what, agent_what)]
        return [*_reach_checks("pve", ep, exc), *skipped]


async def _status_checks(
    s: DevvmSession, vmid: int, install: str, what: str, agent_what: str, limit: float
) -> tuple[Check, Check]:
    r = await s.run(Verb.STATUS.value, timeout=limit)
    said = (r.stderr.strip() or r.stdout.strip())[:200]
    needs = Check(agent_what, None, "needs the status answer")
    if r.timed_out:
        return Check(what, False, "no answer in time", "run `qm status VMID --verbose` on the host and "
                     "see what hangs; raise probe.status_timeout_seconds if it is only slow"), needs
    if r.exit_status == 127 or "command not found" in said:
        return Check(what, False, f"a shell answered, not the forced command: {said}", install), needs
    if r.exit_status != 0:
        return Check(what, False, f"exit status {r.exit_status}: {said}", (
            f"VM {vmid} must exist on this node (`qm list`) and the authorized_keys line must be "
            f"command=\"/usr/local/bin/breakglass-verbs {vmid}\"; {install}"
        )), needs
    try:
        st = parse_status(r.stdout)
    except RemoteError as exc:
        return Check(what, False, str(exc), install), needs
    got = st.raw.get("vmid")
    if got != vmid:
        return Check(what, False, f"it answers for VM {got}, the config says {vmid}", (
            f"set targets[].vmid to the VM you mean, or reinstall the forced command for VM {vmid}: "
            f"{install}"
        )), needs
    qmp = f"QMP {st.qmp_status}" if st.qmp_ok else f"QMP not answering ({st.raw['qmp'].get('error')})"
    ok = Check(what, True, f"VM {vmid} {st.vm_status}, {qmp}")
    if st.vm_status == "stopped":
        return ok, Check(agent_what, False, f"VM {vmid} is stopped", f"start it: qm start {vmid}")
    if st.guest_agent_ok:
        return ok, Check(agent_what, True)
    error = st.raw.get("guest_agent", {}).get("error")
    return ok, Check(agent_what, False, str(error), (
        "in the guest: apt-get install qemu-guest-agent && systemctl enable --now qemu-guest-agent; "
        f"on the host: qm set {vmid} --agent enabled=1, then stop and start the VM once "
        "(a reboot from inside does not add the agent's device)"
    ))


async def _reject_check(s: DevvmSession, install: str, what: str) -> Check:
    r = await s.run(NOT_A_VERB)
    if UNFORCED_MARK in r.stdout:
        return Check(what, False, "a shell ran the string: the key is not bound to the forced command",
                     f"replace the key's line with the forced one (restrict,command=...): {install}")
    if r.exit_status == 1 and "rejected" in r.stderr:
        return Check(what, True)
    said = (r.stderr.strip() or r.stdout.strip() or "no output")[:200]
    return Check(what, False, f"exit status {r.exit_status}: {said}", install)


def _secret_files(cfg: Config) -> dict[str, Path]:
    files = {f"targets[{t.name}].{side}.key_file": getattr(t, side).key_file
             for t in cfg.targets for side in ("devvm", "pve")}
    optional = {
        "web.auth.token_file": cfg.web.auth.token_file,
        "web.webhook_token_file": cfg.web.webhook_token_file,
        "web.api_token_file": cfg.web.api_token_file,
        "agent.api_key_file": cfg.agent.api_key_file,
    }
    files.update({k: v for k, v in optional.items() if v is not None})
    return files


def web_check(cfg: Config) -> Check:
    """The page's bind address is safe for its auth mode."""
    what = f"web bind {cfg.web.bind}:{cfg.web.port} with auth {cfg.web.auth.mode}"
    problem = bind_problem(cfg.web)
    if problem:
        return Check(what, False, problem, "set web.auth (token or proxy), or web.bind: 127.0.0.1")
    if cfg.web.auth.mode == "proxy" and not cfg.web.auth.proxy_addresses:
        fix = "list the proxy's addresses in web.auth.proxy_addresses"
        return Check(what, False, "no proxy_addresses", fix)
    return Check(what, True)


def secrets_check(cfg: Config) -> Check:
    """Keys and tokens are readable here, non-empty, long enough and not readable by everyone."""
    what = "keys and token files are readable by this user and by no one else"
    problems: list[str] = []
    tokens = {"web.auth.token_file", "web.webhook_token_file", "web.api_token_file"}
    for where, path in _secret_files(cfg).items():
        try:
            mode = path.stat().st_mode
            text = read_secret(path)
        except OSError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if mode & stat.S_IROTH:
            problems.append(f"{where}: {path} is readable by every user (mode {stat.S_IMODE(mode):04o})")
        if not text:
            problems.append(f"{where}: {path} is empty")
        elif where in tokens and len(text) < MIN_TOKEN_CHARS:
            problems.append(f"{where}: token shorter than {MIN_TOKEN_CHARS} characters")
    if not problems:
        return Check(what, True)
    return Check(what, False, "; ".join(problems), (
        "chmod 0400 (or 0440 with the service's group) each file, owned by the user the service runs "
        "as (UID 10001 in the image); make tokens with `openssl rand -hex 32`"
    ))


def store_check(cfg: Config) -> Check:
    """The store's folder (or the nearest existing parent) takes a new file."""
    path = cfg.store_path
    what = f"store {path} is writable"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    fix = f"make {path.parent} a folder the service's user can write (SQLite adds -wal and -shm files there)"
    if not folder.is_dir():
        return Check(what, False, f"{folder} is not a folder", fix)
    if path.exists() and not os.access(path, os.W_OK):
        return Check(what, False, f"{path} is not writable", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".breakglass-doctor-"):
            pass
    except OSError as exc:
        return Check(what, False, f"cannot create a file in {folder}: {exc}", fix)
    return Check(what, True)


async def run_checks(cfg: Config) -> list[tuple[str, list[Check]]]:
    """Every check, grouped by target and then the watchdog's own side."""
    groups: list[tuple[str, list[Check]]] = []
    for t in cfg.targets:
        devvm, pve = await asyncio.gather(devvm_checks(cfg, t), pve_checks(cfg, t))
        groups.append((f"target {t.name} (VM {t.vmid})", [*devvm, *pve]))
    groups.append(("watchdog", [web_check(cfg), secrets_check(cfg), store_check(cfg)]))
    return groups


def render(groups: Iterable[tuple[str, list[Check]]], out: TextIO) -> int:
    """Print the report; return 0 when every check passed, else 1."""
    total = failed = 0
    for title, checks in groups:
        print(title, file=out)
        for check in checks:
            total += 1
            failed += check.ok is not True
            for line in check.lines():
                print(line, file=out)
    if failed:
        print(f"{failed} of {total} checks did not pass", file=out)
        return 1
    print(f"all {total} checks passed", file=out)
    return 0


def doctor_command(cfg: Config, out: TextIO | None = None) -> int:
    """Run every check against the real hosts and print one line each; 0 only when all pass."""
    return render(asyncio.run(run_checks(cfg)), out or sys.stdout)
