"""`breakglass doctor` against this machine's real OpenSSH sshd and the shipped forced command."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openssh import OpenSshHost


@pytest.fixture
def forced(tmp_path: Path) -> Iterator[OpenSshHost]:
    """sshd with the Proxmox key bound to breakglass-verbs 102."""
    host = OpenSshHost(tmp_path / "sshd")
    yield host
    host.stop()


@pytest.fixture
def unforced(tmp_path: Path) -> Iterator[OpenSshHost]:
    """sshd where the Proxmox key was added without command=: a root shell."""
    host = OpenSshHost(tmp_path / "sshd", forced=False)
    yield host
    host.stop()


def doctor(host: OpenSshHost, tmp_path: Path, *, vmid: int = 102) -> subprocess.CompletedProcess[str]:
    """Run `breakglass doctor` as an operator would, in a child process."""
    config = tmp_path / "config.yaml"
    config.write_text(host.config_yaml(vmid=vmid), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "breakglass.cli", "doctor", "-c", str(config)],
                          capture_output=True, text=True, timeout=120, check=False)


def check_line(report: str, start: str) -> str:
    """The check line that begins with ``start`` (after its mark)."""
    for text in report.splitlines():
        if re.match(r"  [✓✗–] " + re.escape(start), text):
            return text
    raise AssertionError(f"no line {start!r} in:\n{report}")


def test_doctor_passes_against_real_sshd_and_the_shipped_forced_command(
    forced: OpenSshHost, tmp_path: Path
) -> None:
    proc = doctor(forced, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 12 checks passed" in proc.stdout
    assert "VM 102 running, QMP running" in check_line(proc.stdout, "pve forced command answers")
    # The forced command really ran: it logged the status call and the rejected probe string.
    log = (forced.log_dir / "verbs.log").read_text(encoding="utf-8")
    assert '"verb": "status"' in log
    assert "breakglass-doctor-unforced" in log


def test_a_key_added_without_the_forced_command_fails_both_door_checks(
    unforced: OpenSshHost, tmp_path: Path
) -> None:
    proc = doctor(unforced, tmp_path)
    assert proc.returncode == 1
    status = check_line(proc.stdout, "pve forced command answers")
    assert status.startswith("  ✗ ")
    assert "a shell answered" in status
    reject = check_line(proc.stdout, "pve forced command rejects")
    assert reject.startswith("  ✗ ")
    assert "a shell ran the string" in reject
    assert "deploy/pve/install.py install --vmid 102" in proc.stdout


def test_a_forced_command_for_another_vm_fails_the_status_line(forced: OpenSshHost, tmp_path: Path) -> None:
    proc = doctor(forced, tmp_path, vmid=103)
    assert proc.returncode == 1
    status = check_line(proc.stdout, "pve forced command answers")
    assert "it answers for VM 102, the config says 103" in status


def test_a_vm_id_the_node_does_not_have_fails_the_status_line_in_qms_words(tmp_path: Path) -> None:
    host = OpenSshHost(tmp_path / "sshd", vmid=999)
    try:
        proc = doctor(host, tmp_path, vmid=999)
    finally:
        host.stop()
    assert proc.returncode == 1
    status = check_line(proc.stdout, "pve forced command answers")
    assert status.startswith("  ✗ ")
    assert "exit status 1" in status
    assert "999.conf' does not exist" in status
    assert "VM 999 must exist on this node" in proc.stdout
