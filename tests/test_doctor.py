"""`breakglass doctor` against the simulator: every prerequisite, and a fix for every miss."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml

from breakglass import cli
from breakglass.config import Config, load_config
from breakglass.doctor import Check, doctor_command, guest_commands, render
from breakglass.sim.runner import SimHandle

ROOT = Path(__file__).resolve().parent.parent
ALL_CHECKS = 12


def run_doctor(cfg: Config) -> tuple[int, str]:
    """Run the doctor and return its exit code and what it printed."""
    out = io.StringIO()
    code = doctor_command(cfg, out)
    return code, out.getvalue()


def line(report: str, start: str) -> str:
    """The one check line that begins (after its mark) with ``start``, and its fix lines."""
    lines = report.splitlines()
    for i, text in enumerate(lines):
        if re.match(r"  [✓✗–] " + re.escape(start), text):
            fixes = []
            for following in lines[i + 1:]:
                if not following.startswith("      fix: "):
                    break
                fixes.append(following)
            return "\n".join([text, *fixes])
    raise AssertionError(f"no line starting {start!r} in:\n{report}")


def marks(report: str) -> list[str]:
    """The mark of every check line, in order."""
    return [t[2] for t in report.splitlines() if re.match(r"  [✓✗–] ", t)]


def config_with(sim: SimHandle, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Config:
    """The simulator's config, changed by ``change``, written beside the original and loaded."""
    data = yaml.safe_load(sim.config_path.read_text(encoding="utf-8"))
    change(data)
    path = sim.config_path.parent / "changed.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_config(path)


def test_a_healthy_simulator_passes_every_check_and_exits_0(sim: SimHandle) -> None:
    code, report = run_doctor(sim.config)
    assert code == 0, report
    assert marks(report) == ["✓"] * ALL_CHECKS
    assert report.rstrip().endswith(f"all {ALL_CHECKS} checks passed")
    assert "VM 102 running, QMP running" in line(report, "pve forced command answers")


@pytest.mark.parametrize(
    ("mistake", "failing", "said", "fix"),
    [
        ("sudo_password", "devvm `sudo -n true` works", "a password is required",
         "NOPASSWD: ALL' | sudo tee /etc/sudoers.d/breakglass"),
        ("sudo_missing", "devvm `sudo -n true` works", "sudo: command not found", "apt-get install sudo"),
        ("sudo_missing", "devvm has the commands", "missing: sudo", "apt-get install"),
        ("command_missing", "devvm has the commands", "missing: journalctl", "apt-get install"),
        ("agent_off", "guest agent of VM 102 answers", "QEMU guest agent is not running",
         "qm set 102 --agent enabled=1"),
        ("pve_unforced", "pve forced command rejects", "a shell ran the string",
         "deploy/pve/install.py install --vmid 102"),
        ("pve_unforced", "pve forced command answers `status`", "a shell answered",
         "deploy/pve/install.py install --vmid 102 --from WATCHDOG_ADDRESS --key 'ssh-ed25519 "),
    ],
)
def test_each_setup_mistake_fails_its_line_with_the_fix(
    sim: SimHandle, mistake: str, failing: str, said: str, fix: str
) -> None:
    sim.vm.misconfigure(mistake)
    code, report = run_doctor(sim.config)
    assert code == 1
    got = line(report, failing)
    assert got.startswith("  ✗ "), got
    assert said in got
    assert fix in "\n".join(got.splitlines()[1:])


@pytest.mark.parametrize(
    ("fault", "failing", "said"),
    [
        ("sshd_dead", "devvm breakglass@", "connection refused"),
        ("pve_unreachable", "pve root@", "connection refused"),
        ("vm_stopped", "guest agent of VM 102 answers", "VM 102 is stopped"),
    ],
)
def test_a_fault_on_the_hosts_fails_its_line(sim: SimHandle, fault: str, failing: str, said: str) -> None:
    sim.inject(fault)
    code, report = run_doctor(sim.config)
    assert code == 1
    got = line(report, failing)
    assert got.startswith("  ✗ "), got
    assert said in got
    assert "fix: " in got


def test_an_unreachable_host_leaves_the_checks_that_need_it_unchecked(sim: SimHandle) -> None:
    sim.inject("pve_unreachable")
    _, report = run_doctor(sim.config)
    for start in ("pve key", "pve forced command answers", "pve forced command rejects", "guest agent"):
        assert line(report, start).startswith("  – "), report
    assert "sudo tee" not in report, "the devvm's checks still pass"


def test_a_changed_host_key_fails_the_host_key_line_with_the_keyscan_fix(
    sim: SimHandle, tmp_path: Path
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    pinned = sim.config.targets[0].devvm.known_hosts
    lines = pinned.read_text(encoding="utf-8").splitlines()
    port = sim.devvm_port
    kept = [ln for ln in lines if not ln.startswith(f"[127.0.0.1]:{port} ")]
    assert len(kept) == len(lines) - 1, lines
    wrong = tmp_path / "known_hosts"
    wrong.write_text("\n".join([*kept, f"[127.0.0.1]:{port} {other.strip()}"]) + "\n", encoding="utf-8")

    def change(d: dict[str, Any]) -> None:
        d["targets"][0]["devvm"]["known_hosts"] = str(wrong)

    code, report = run_doctor(config_with(sim, tmp_path, change))
    assert code == 1
    got = line(report, "devvm breakglass@")
    assert got.startswith("  ✗ ")
    assert "not the pinned key" in got
    assert f"ssh-keyscan -p {port} -t ed25519 127.0.0.1" in got
    assert line(report, "devvm key").startswith("  – ")
    assert line(report, "pve root@").startswith("  ✓ ")


def test_a_key_the_hosts_do_not_know_fails_the_login_lines_with_the_line_to_add(
    sim: SimHandle, tmp_path: Path
) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519", comment="stranger")
    key = tmp_path / "stranger_ed25519"
    key.write_bytes(stranger.export_private_key())
    key.chmod(0o600)

    def change(d: dict[str, Any]) -> None:
        for side in ("devvm", "pve"):
            d["targets"][0][side]["key_file"] = str(key)

    code, report = run_doctor(config_with(sim, tmp_path, change))
    assert code == 1
    pub = stranger.export_public_key("openssh").decode().strip()
    devvm = line(report, "devvm key")
    assert devvm.startswith("  ✗ ")
    assert f'restrict,from="WATCHDOG_ADDRESS" {pub}' in devvm
    pve = line(report, "pve key")
    assert pve.startswith("  ✗ ")
    assert f"--key '{pub}'" in pve
    assert line(report, "devvm breakglass@").startswith("  ✓ ")


def test_a_config_for_another_vm_id_fails_the_status_line(sim: SimHandle, tmp_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["targets"][0]["vmid"] = 103

    code, report = run_doctor(config_with(sim, tmp_path, change))
    assert code == 1
    got = line(report, "pve forced command answers `status` with JSON for VM 103")
    assert got.startswith("  ✗ ")
    assert "it answers for VM 102, the config says 103" in got


def test_binding_every_address_without_auth_fails_the_web_line(sim: SimHandle, tmp_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d.setdefault("web", {})["bind"] = "0.0.0.0"

    code, report = run_doctor(config_with(sim, tmp_path, change))
    assert code == 1
    got = line(report, "web bind 0.0.0.0")
    assert got.startswith("  ✗ ")
    assert "without authentication" in got
    assert "web.auth" in got


@pytest.mark.parametrize(
    ("text", "mode", "said"),
    [
        ("0123456789abcdef0123", 0o644, "readable by every user (mode 0644)"),
        ("short", 0o600, "token shorter than 16 characters"),
        ("", 0o600, "is empty"),
    ],
)
def test_a_token_file_that_is_open_short_or_empty_fails_the_secrets_line(
    sim: SimHandle, tmp_path: Path, text: str, mode: int, said: str
) -> None:
    token = tmp_path / "web_token"
    token.write_text(text, encoding="utf-8")
    token.chmod(mode)

    def change(d: dict[str, Any]) -> None:
        d.setdefault("web", {})["auth"] = {"mode": "token", "token_file": str(token)}

    code, report = run_doctor(config_with(sim, tmp_path, change))
    assert code == 1
    got = line(report, "keys and token files")
    assert got.startswith("  ✗ ")
    assert said in got
    assert "chmod 0400" in got


def test_a_store_path_under_a_file_fails_the_store_line(sim: SimHandle, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x", encoding="utf-8")

    def change(d: dict[str, Any]) -> None:
        d["store_path"] = str(blocker / "breakglass.db")

    code, report = run_doctor(config_with(sim, tmp_path, change))
    assert code == 1
    got = line(report, "store ")
    assert got.startswith("  ✗ ")
    assert "is not a folder" in got


def test_the_cli_exits_0_when_all_pass_and_2_naming_the_key_for_a_bad_config(
    sim: SimHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["doctor", "-c", str(sim.config_path)]) == 0
    assert f"all {ALL_CHECKS} checks passed" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: []\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        cli.main(["doctor", "-c", str(bad)])
    assert exited.value.code == 2
    assert "targets" in capsys.readouterr().err


def test_an_unchecked_line_counts_against_the_exit_code() -> None:
    out = io.StringIO()
    assert render([("t", [Check("a", True), Check("b", None, "needs a")])], out) == 1
    assert "1 of 2 checks did not pass" in out.getvalue()


def test_the_command_list_covers_every_command_the_runbook_runs() -> None:
    # Every f-string or string the runbook hands to its shell starts with a command name.
    source = (ROOT / "breakglass" / "agent" / "runbook.py").read_text(encoding="utf-8")
    sent = re.findall(r"sh, f?\"([^\"]+)\"", source)
    assert sent, "found no command in runbook.py"
    names = {c for cmd in sent for part in re.split(r"&&|\|\||;|\|", cmd)
             if (words := [w for w in part.split() if w != "sudo"]) for c in words[:1]}
    names.discard("PROBE_COMMAND")
    assert names <= set(guest_commands()), names - set(guest_commands())
