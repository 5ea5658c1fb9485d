"""This machine's real OpenSSH sshd on loopback, with the shipped forced command behind a key.

One sshd plays both hosts: root logs in with the devvm key to a shell (sudo
works for root), and with the Proxmox key only into ``deploy/pve/breakglass-verbs``
with a fake ``qm`` (tests/fixtures/pve/fake_qm.py) on its side. sshd's
``SetEnv`` hands the forced command its test settings, as nothing else can.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breakglass.sim.statedir import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "pve" / "breakglass-verbs"
FAKE_QM = Path(__file__).resolve().parent / "fixtures" / "pve" / "fake_qm.py"
SSHD = "/usr/sbin/sshd"


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, timeout=30)
    return path.with_name(path.name + ".pub").read_text(encoding="utf-8").strip()


class OpenSshHost:
    """A running sshd in ``root``: its port, keys, known_hosts, and a config for breakglass."""

    def __init__(self, root: Path, *, forced: bool = True, vmid: int = 102) -> None:
        if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
            pytest.skip(f"SKIPPED LOUDLY: {SSHD} or ssh-keygen is missing (apt-get install openssh-server)")
        if os.geteuid() != 0:
            pytest.skip("SKIPPED LOUDLY: sshd must run as root to log in as root")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_dir = root / "verbs-log"
        self.record = root / "qm-calls.jsonl"
        bin_dir = root / "bin"
        bin_dir.mkdir()
        self.qm = bin_dir / "qm"
        self.qm.write_text(f"#!{sys.executable}\n" + FAKE_QM.read_text(encoding="utf-8"), encoding="utf-8")
        self.qm.chmod(self.qm.stat().st_mode | stat.S_IXUSR)
        host_pub = _keygen(root / "host_ed25519", "sshd-host")
        self.devvm_key = root / "devvm_ed25519"
        self.pve_key = root / "pve_ed25519"
        devvm_pub = _keygen(self.devvm_key, "breakglass-devvm")
        pve_pub = _keygen(self.pve_key, "breakglass-pve")
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n", encoding="utf-8")
        pve_line = (f'restrict,command="{SCRIPT} {vmid}" {pve_pub}' if forced
                    else f"restrict {pve_pub}")
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text(f"restrict {devvm_pub}\n{pve_line}\n", encoding="utf-8")
        env = {
            "BREAKGLASS_VERBS_QM": str(self.qm),
            "BREAKGLASS_VERBS_LOG_DIR": str(self.log_dir),
            "BREAKGLASS_VERBS_QMP_TIMEOUT": "0.4",
            "BREAKGLASS_VERBS_AGENT_TIMEOUT": "0.4",
            "BREAKGLASS_VERBS_PROC": str(root / "proc"),
            "FAKE_QM_RECORD": str(self.record),
            "FAKE_QM_SCENARIO": "running",
        }
        config = root / "sshd_config"
        config.write_text(
            "\n".join([
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {root / 'host_ed25519'}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                # The temp folders are not root-owned all the way up, as StrictModes wants.
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()),
                "",
            ]),
            encoding="utf-8",
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self.stderr = root / "sshd.stderr"
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=err)
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited {self.proc.returncode}: {self.stderr.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"sshd did not listen on {self.port} in 15 s: {self.stderr.read_text()}")

    def config_yaml(self, *, vmid: int = 102) -> str:
        """A breakglass config watching this sshd as both the devvm and the Proxmox host."""
        def side(key: Path) -> str:
            return (f"      host: 127.0.0.1\n      port: {self.port}\n      user: root\n"
                    f"      key_file: {key}\n      known_hosts: {self.known_hosts}\n")

        return (f"store_path: {self.root / 'store' / 'breakglass.db'}\n"
                f"targets:\n  - name: devvm\n    vmid: {vmid}\n    devvm:\n{side(self.devvm_key)}"
                f"    pve:\n{side(self.pve_key)}"
                "probe:\n  connect_timeout_seconds: 5\n  command_timeout_seconds: 10\n")

    def stop(self) -> None:
        """Stop sshd and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
