"""deploy/pve/install.py: the Proxmox side in one step, into a fake root and through a real sshd."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openssh import FAKE_QM, OpenSshHost

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "deploy" / "pve" / "install.py"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHJ0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0a2V5dGU breakglass-pve"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG90aGVya2V5b3RoZXJrZXlvdGhlcmtleW90aGVya2U admin@laptop"


class FakeHost:
    """A Proxmox host's file tree in a temp folder, with a fake qm the check step calls."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.root.mkdir()
        self.keys = self.root / "root" / ".ssh" / "authorized_keys"
        qm = tmp / "qm"
        qm.write_text(f"#!{sys.executable}\n" + FAKE_QM.read_text(encoding="utf-8"), encoding="utf-8")
        qm.chmod(0o755)
        self.env = {**os.environ, "BREAKGLASS_VERBS_QM": str(qm),
                    "BREAKGLASS_VERBS_LOG_DIR": str(tmp / "log"), "FAKE_QM_RECORD": str(tmp / "calls")}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run install.py against this tree."""
        return subprocess.run([sys.executable, str(INSTALL), "--root", str(self.root), *args],
                              env=self.env, capture_output=True, text=True, timeout=60, check=False)

    @property
    def command(self) -> Path:
        return self.root / "usr/local/bin/breakglass-verbs"

    def lines(self) -> list[str]:
        return self.keys.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    """A fresh fake Proxmox host."""
    return FakeHost(tmp_path)


def test_install_copies_the_command_and_writes_the_forced_key_line_for_the_given_address(
    host: FakeHost,
) -> None:
    proc = host.run("install", "--vmid", "102", "--from", "192.168.1.50", "--key", KEY)
    assert proc.returncode == 0, proc.stderr
    assert host.command.read_bytes() == (ROOT / "deploy/pve/breakglass-verbs").read_bytes()
    assert stat.S_IMODE(host.command.stat().st_mode) == 0o755
    assert stat.S_IMODE((host.root / "var/log/breakglass-verbs").stat().st_mode) == 0o750
    tmpfiles = (host.root / "etc/tmpfiles.d/breakglass-verbs.conf").read_text(encoding="utf-8")
    assert tmpfiles == "d /var/log/breakglass-verbs 0750 root root 90d\n"
    assert host.lines() == [
        f'restrict,command="{host.command} 102",from="192.168.1.50" {KEY}'
    ]
    assert stat.S_IMODE(host.keys.stat().st_mode) == 0o600
    # The check step ran status through the installed command.
    assert '"status": "running"' in proc.stdout


def test_installing_again_replaces_the_keys_line_and_keeps_every_other_line(host: FakeHost) -> None:
    host.keys.parent.mkdir(parents=True)
    host.keys.write_text(f"{OTHER}\n", encoding="utf-8")
    assert host.run("install", "--vmid", "102", "--from", "10.1.2.3", "--key", KEY,
                    "--no-check").returncode == 0
    assert host.run("install", "--vmid", "102", "--from", "192.168.7.0/24,192.168.8.9", "--key", KEY,
                    "--no-check").returncode == 0
    assert host.lines() == [
        OTHER, f'restrict,command="{host.command} 102",from="192.168.7.0/24,192.168.8.9" {KEY}'
    ]


def test_proxmox_s_link_to_the_cluster_wide_file_stays_a_link(host: FakeHost) -> None:
    shared = host.root / "etc/pve/priv/authorized_keys"
    shared.parent.mkdir(parents=True)
    shared.write_text(f"{OTHER}\n", encoding="utf-8")
    host.keys.parent.mkdir(parents=True)
    host.keys.symlink_to(shared)
    assert host.run("install", "--vmid", "102", "--from", "192.168.1.50", "--key", KEY,
                    "--no-check").returncode == 0
    assert host.keys.is_symlink()
    assert shared.read_text(encoding="utf-8").splitlines()[1].endswith(KEY)


def test_uninstall_removes_the_vms_line_and_the_command_once_no_vm_uses_it(host: FakeHost) -> None:
    for vmid, key in (("102", KEY), ("105", OTHER)):
        assert host.run("install", "--vmid", vmid, "--from", "192.168.1.50", "--key", key,
                        "--no-check").returncode == 0
    assert host.run("uninstall", "--vmid", "102").returncode == 0
    assert [ln.split(",")[1] for ln in host.lines()] == [f'command="{host.command} 105"']
    assert host.command.exists(), "VM 105 still uses it"
    proc = host.run("uninstall", "--vmid", "105")
    assert proc.returncode == 0
    assert host.lines() == []
    assert not host.command.exists()
    assert not (host.root / "etc/tmpfiles.d/breakglass-verbs.conf").exists()
    assert (host.root / "var/log/breakglass-verbs").is_dir(), "the forensics stay"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--vmid", "12", "--from", "192.168.1.50", "--key", KEY], "--vmid"),
        (["--vmid", "102", "--from", "", "--key", KEY], "--from"),
        (["--vmid", "102", "--from", '1.2.3.4",command="/bin/sh', "--key", KEY], "--from"),
        (["--vmid", "102", "--from", "192.168.1.50", "--key", f'command="/bin/sh" {KEY}'], "--key"),
        (["--vmid", "102", "--from", "192.168.1.50", "--key", KEY + "\nssh-rsa AAAA x"], "--key"),
        (["--vmid", "102", "--from", "192.168.1.50", "--key", "/no/such/file.pub"], "--key"),
    ],
)
def test_a_bad_argument_exits_2_naming_it_and_changes_nothing(
    host: FakeHost, args: list[str], named: str
) -> None:
    proc = host.run("install", *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"install.py: {named}")
    assert list(host.root.iterdir()) == []


def test_the_documents_no_longer_hard_code_a_network_range_in_from() -> None:
    for doc in ("docs/operations.md", "deploy/pve/README.md", "deploy/pve/breakglass-verbs", "README.md"):
        assert 'from="10.0.0.0/8"' not in (ROOT / doc).read_text(encoding="utf-8"), doc


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[OpenSshHost]:
    """A real sshd whose Proxmox key line install.py will replace."""
    h = OpenSshHost(tmp_path / "sshd")
    yield h
    h.stop()


def ssh(h: OpenSshHost, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    """Run one command through the real ssh client against the test sshd."""
    argv = ["ssh", "-i", str(key), "-p", str(h.port), "-o", f"UserKnownHostsFile={h.known_hosts}",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-F", "/dev/null", "root@127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_one_step_from_an_admin_machine_over_real_ssh_installs_a_working_locked_door(
    sshd: OpenSshHost, tmp_path: Path
) -> None:
    fake_root = tmp_path / "pve-root"
    fake_root.mkdir()
    ssh_command = (f"ssh -i {sshd.devvm_key} -p {sshd.port} -o UserKnownHostsFile={sshd.known_hosts} "
                   "-o BatchMode=yes -o IdentitiesOnly=yes -F /dev/null")
    pub = sshd.pve_key.with_name(sshd.pve_key.name + ".pub")
    proc = subprocess.run(
        [sys.executable, str(INSTALL), "--host", "root@127.0.0.1", "--ssh-command", ssh_command,
         "--root", str(fake_root), "--authorized-keys", str(sshd.authorized_keys),
         "install", "--vmid", "102", "--from", "127.0.0.1", "--key", str(pub)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = fake_root / "usr/local/bin/breakglass-verbs"
    line = next(ln for ln in sshd.authorized_keys.read_text(encoding="utf-8").splitlines()
                if "breakglass-verbs" in ln)
    assert line.startswith(f'restrict,command="{installed} 102",from="127.0.0.1" ssh-ed25519 ')
    status = ssh(sshd, sshd.pve_key, "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["vmid"] == 102
    rejected = ssh(sshd, sshd.pve_key, "status; id")
    assert rejected.returncode == 1
    assert "rejected" in rejected.stderr


def test_a_from_address_other_than_the_watchdogs_locks_the_key_out(sshd: OpenSshHost, tmp_path: Path) -> None:
    fake_root = tmp_path / "pve-root"
    fake_root.mkdir()
    pub = sshd.pve_key.with_name(sshd.pve_key.name + ".pub")
    proc = subprocess.run(
        [sys.executable, str(INSTALL), "--root", str(fake_root), "--authorized-keys",
         str(sshd.authorized_keys), "install", "--vmid", "102", "--from", "192.0.2.10", "--key",
         str(pub), "--no-check"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    denied = ssh(sshd, sshd.pve_key, "status")
    assert denied.returncode == 255
    assert "Permission denied" in denied.stderr
