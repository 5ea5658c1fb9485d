"""Guest command lines judged by a real shell parser: refused, read-only or mutating."""

from __future__ import annotations

import pytest

from breakglass.agent.guest_commands import judge

REFUSED = [
    ("sudo reboot", "pve"),
    ("uptime && sudo poweroff", "pve"),
    ("sudo shutdown -h now", "pve"),
    ("sudo systemctl kexec", "pve"),
    ("sudo init 0", "pve"),
    ("echo b | sudo tee /proc/sysrq-trigger", "sysrq"),
    ("echo o > /proc/sysrq-trigger", "sysrq"),
    ("sudo sysctl kernel.sysrq=1", "sysrq"),
    ("sudo bash -c 'systemctl poweroff'", "pve"),
    ("sudo sh -c \"sleep 1; reboot\"", "pve"),
    ("x=$(sudo halt)", "pve"),
    ("echo `sudo reboot`", "pve"),
    ("for i in 1; do sudo reboot; done", "pve"),
    ("sudo nohup env A=1 timeout 5 nice -n 5 shutdown -r now", "pve"),
    ("eval 'sudo reboot'", "pve"),
    ("sudo systemctl start reboot.target", "pve"),
    ("sudo busybox reboot", "pve"),
    ("sudo su -c 'systemctl halt'", "pve"),
    ("sudo systemctl stop ssh", "access"),
    ("sudo systemctl --now disable sshd.service", "access"),
    ("sudo systemctl mask networking", "access"),
    ("sudo service ssh stop", "access"),
    ("sudo pkill sshd", "access"),
    ("sudo ip link set eth0 down", "network"),
    ("sudo ifdown eth0", "network"),
    ("sudo iptables -P INPUT DROP", "network"),
    ("sudo kill -9 1", "guest down"),
    ("sudo kill -9 -1", "numeric PIDs"),
    ("$CMD --now", "computed at run time"),
    ("echo 'unterminated", "parser"),
]


@pytest.mark.parametrize(("line", "why"), REFUSED)
def test_commands_that_power_off_or_cut_access_are_refused_with_a_reason(line: str, why: str) -> None:
    j = judge(line)
    assert j.refused is not None, line
    assert why in j.refused


READ_ONLY = [
    "uptime; free -h; df -h; systemctl --failed",
    "sudo dmesg -T | tail -n 40",
    "journalctl -u nginx -n 50 --no-pager",
    "ps aux --sort=-rss | head -n 8",
    "systemctl status ssh --no-pager",
    "cat /proc/meminfo 2>/dev/null",
    "ip addr show",
    "grep -c processor /proc/cpuinfo",
]


@pytest.mark.parametrize("line", READ_ONLY)
def test_looking_is_read_only(line: str) -> None:
    j = judge(line)
    assert j.refused is None
    assert not j.mutating, line


MUTATING = [
    "sudo systemctl restart nginx",
    "sudo journalctl --vacuum-size=200M",
    "sudo rm -rf /tmp/*",
    "df -h > /tmp/df.txt",
    "sudo sed -i s/a/b/ /etc/x",
    "python3 -c 'import os'",
    "sudo bash /tmp/fix.sh",
    "uptime; sudo swapoff -a",
    "sudo loginctl terminate-user alice",
]


@pytest.mark.parametrize("line", MUTATING)
def test_changing_something_is_mutating(line: str) -> None:
    j = judge(line)
    assert j.refused is None
    assert j.mutating, line


def test_stops_and_kills_are_listed_for_the_allowlist_check() -> None:
    j = judge("sudo systemctl stop leaky-batch.service && sudo kill -9 4242 && sudo pkill -f leak.py")
    assert j.refused is None
    assert j.units_stopped == ["leaky-batch.service"]
    assert j.pids_killed == ["4242"]
    assert j.names_killed == ["leak.py"]
