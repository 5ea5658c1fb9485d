#!/usr/bin/python3 -I
"""Install (or remove) breakglass-verbs and its key line on a Proxmox host, in one step.

On the Proxmox host, as root, from a copy of deploy/pve/:

    python3 install.py install --vmid 102 --from 192.168.1.50 --key pve_ed25519.pub
    python3 install.py uninstall --vmid 102

From an administrator's machine, over SSH, without copying anything first:

    python3 deploy/pve/install.py --host root@192.168.1.127 install --vmid 102 \\
        --from 192.168.1.50 --key breakglass-keys/pve_ed25519.pub

install copies breakglass-verbs to /usr/local/bin (0755), makes its log folder
/var/log/breakglass-verbs (0750) with a 90-day tmpfiles rule, and writes one
line to root's authorized_keys:

    restrict,command="/usr/local/bin/breakglass-verbs 102",from="192.168.1.50" ssh-ed25519 AAAA...

replacing any earlier line for the same key or the same VM. ``--from`` is the
address (or comma-separated addresses/CIDRs) the watchdog connects from: there
is no default range. It then runs ``status`` through the installed command and
prints the answer. uninstall removes the VM's line and, when no other VM's line
is left, the command and the tmpfiles rule (the forensics in the log folder
stay). authorized_keys is rewritten in place, so Proxmox's link to
/etc/pve/priv/authorized_keys stays a link.

Exit 0 done, 1 installed but ``status`` failed, 2 bad arguments (nothing changed).
Standard library only; --root and --authorized-keys exist for tests.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

COMMAND = "/usr/local/bin/breakglass-verbs"
LOG_DIR = "/var/log/breakglass-verbs"
TMPFILES = "/etc/tmpfiles.d/breakglass-verbs.conf"
TMPFILES_LINE = f"d {LOG_DIR} 0750 root root 90d\n"
VMID = re.compile(r"[1-9][0-9]{2,8}")
FROM_ITEM = re.compile(r"!?[0-9A-Fa-f.:/*?]+")
KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com)"
                 r" [A-Za-z0-9+/]+={0,3}( [^\n\r\"]*)?")
# Set when this program is sent over SSH with the forced command's text inside it.
EMBEDDED_VERBS: str | None = None


class Usage(Exception):
    """A bad argument: the message names it, and nothing was changed."""


def parse_from(value: str) -> str:
    """Check the from= list: addresses, CIDRs or patterns, comma-separated."""
    items = value.split(",")
    if not value or not all(FROM_ITEM.fullmatch(item) for item in items):
        raise Usage(f"--from {value!r}: give the watchdog's address(es), e.g. 192.168.1.50 or 10.42.0.0/16")
    return value


def parse_key(value: str) -> str:
    """The public key line, from a .pub file or given as text; one key, no options."""
    path = Path(value).expanduser()
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else value.strip()
    if not KEY.fullmatch(text):
        raise Usage(f"--key: {value!r} is not one OpenSSH public key line (ssh-ed25519 AAAA... comment)")
    return text


def key_line(command: str, vmid: str, sources: str, key: str) -> str:
    """The authorized_keys line that binds the key to the forced command for one VM."""
    return f'restrict,command="{command} {vmid}",from="{sources}" {key}'


def _blob(line: str) -> str | None:
    """The base64 key in an authorized_keys line, whatever options come first."""
    m = re.search(r"(?:^|\s)(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-\S+|sk-\S+) ([A-Za-z0-9+/]+={0,3})", line)
    return m[1] if m else None


def _for_vm(line: str, vmid: str) -> bool:
    return re.search(r'command="\S*/breakglass-verbs ' + vmid + '"', line) is not None


def _rewrite(path: Path, lines: list[str]) -> None:
    """Write the file in place: a link (Proxmox's /etc/pve/priv one) stays a link."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        f.seek(0)
        f.write("".join(line + "\n" for line in lines))
        f.truncate()


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _verbs_source() -> str:
    if EMBEDDED_VERBS is not None:
        return EMBEDDED_VERBS
    return (Path(__file__).resolve().parent / "breakglass-verbs").read_text(encoding="utf-8")


def install(root: Path, keys: Path, vmid: str, sources: str, key: str) -> list[str]:
    """Install the command, its log folder and the key line; return what was done."""
    command = root / COMMAND.lstrip("/")
    command.parent.mkdir(parents=True, exist_ok=True)
    command.write_text(_verbs_source(), encoding="utf-8")
    command.chmod(0o755)
    (root / LOG_DIR.lstrip("/")).mkdir(mode=0o750, parents=True, exist_ok=True)
    tmpfiles = root / TMPFILES.lstrip("/")
    tmpfiles.parent.mkdir(parents=True, exist_ok=True)
    tmpfiles.write_text(TMPFILES_LINE, encoding="utf-8")
    new = key_line(str(command), vmid, sources, key)
    blob = _blob(key)
    kept = [ln for ln in _read_lines(keys) if not _for_vm(ln, vmid) and _blob(ln) != blob]
    _rewrite(keys, [*kept, new])
    return [f"installed {command}", f"log folder {root / LOG_DIR.lstrip('/')}", f"key line in {keys}:", new]


def uninstall(root: Path, keys: Path, vmid: str) -> list[str]:
    """Remove the VM's key line; the command too when no VM uses it any more."""
    lines = _read_lines(keys)
    kept = [ln for ln in lines if not _for_vm(ln, vmid)]
    done = [f"removed {len(lines) - len(kept)} key line(s) for VM {vmid} from {keys}"]
    if len(kept) != len(lines):
        _rewrite(keys, kept)
    if not any("/breakglass-verbs " in ln for ln in kept):
        for path in (root / COMMAND.lstrip("/"), root / TMPFILES.lstrip("/")):
            if path.exists():
                path.unlink()
                done.append(f"removed {path}")
        done.append(f"kept {root / LOG_DIR.lstrip('/')} (the forensics captures)")
    return done


def check(root: Path, vmid: str) -> tuple[bool, str]:
    """Run `status` through the installed command, as sshd would."""
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": "status"}
    proc = subprocess.run([sys.executable, "-I", str(root / COMMAND.lstrip("/")), vmid], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    said = (proc.stdout.strip() or proc.stderr.strip())[:400]
    return proc.returncode == 0, said


def remote(args: argparse.Namespace) -> int:
    """Send this program, with the forced command inside it, to the host over SSH and run it there."""
    here = Path(__file__).resolve()
    source = here.read_text(encoding="utf-8").replace(
        "EMBEDDED_VERBS: str | None = None", f"EMBEDDED_VERBS: str | None = {_verbs_source()!r}", 1)
    rest = ["--root", args.root]
    if args.authorized_keys:
        rest += ["--authorized-keys", args.authorized_keys]
    rest += [args.action, "--vmid", args.vmid]
    if args.action == "install":
        # The key is read here, where its file is, and sent as text.
        rest += ["--from", args.sources, "--key", parse_key(args.key)]
        rest += ["--no-check"] if args.no_check else []
    command = [*shlex.split(args.ssh_command), args.host, "python3 - " + shlex.join(rest)]
    return subprocess.run(command, input=source, text=True, timeout=300, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    """Arguments: install or uninstall, the VM id, and for install the address and key."""
    p = argparse.ArgumentParser(prog="install.py", description=__doc__.splitlines()[0])
    p.add_argument("--host", help="run on this host over SSH (user@host), from an admin machine")
    p.add_argument("--ssh-command", default="ssh", help="the ssh client and its options (default: ssh)")
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)
    p.add_argument("--authorized-keys", default=None, help="default: /root/.ssh/authorized_keys")
    sub = p.add_subparsers(dest="action", required=True)
    i = sub.add_parser("install", help="install the forced command and the key line")
    i.add_argument("--vmid", required=True)
    i.add_argument("--from", dest="sources", required=True, help="the watchdog's address(es)")
    i.add_argument("--key", required=True, help="the watchdog's Proxmox public key (file or text)")
    i.add_argument("--no-check", action="store_true", help="do not run `status` afterwards")
    u = sub.add_parser("uninstall", help="remove the key line (and the command when unused)")
    u.add_argument("--vmid", required=True)
    return p


def main(argv: list[str]) -> int:
    """Parse, validate everything first, then change the host."""
    args = build_parser().parse_args(argv)
    try:
        if not VMID.fullmatch(args.vmid):
            raise Usage(f"--vmid {args.vmid!r}: a Proxmox VM id is a number from 100")
        if args.action == "install":
            sources, key = parse_from(args.sources), parse_key(args.key)
        if args.host:
            return remote(args)
    except (Usage, OSError) as exc:
        print(f"install.py: {exc}", file=sys.stderr)
        return 2
    root = Path(args.root)
    keys = Path(args.authorized_keys) if args.authorized_keys else root / "root/.ssh/authorized_keys"
    if args.action == "uninstall":
        print("\n".join(uninstall(root, keys, args.vmid)))
        return 0
    print("\n".join(install(root, keys, args.vmid, sources, key)))
    if args.no_check:
        return 0
    ok, said = check(root, args.vmid)
    print(f"status through the installed command: {said}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
