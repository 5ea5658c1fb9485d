"""Parsers for what the guest prints, on fixture text."""

from __future__ import annotations

from pathlib import Path

import pytest

from breakglass.watchdog import parse

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_it_reads_the_three_load_averages():
    assert parse.parse_loadavg("0.52 0.58 0.59 1/467 12345\n") == parse.Load(0.52, 0.58, 0.59)


@pytest.mark.parametrize("text", ["", "0.52 0.58", "a b c 1/2 3", "bash: cat: command not found"])
def test_it_gives_no_load_for_text_that_is_not_loadavg(text):
    assert parse.parse_loadavg(text) is None


@pytest.mark.parametrize(
    ("text", "expected"), [("4\n", 4), ("  16 ", 16), ("0", None), ("x", None), ("", None)]
)
def test_it_reads_nproc_as_a_positive_integer(text, expected):
    assert parse.parse_nproc(text) == expected


def test_it_reads_meminfo_in_bytes_and_derives_swap_used():
    mem = parse.parse_meminfo(fixture("probe_sick.txt"))
    assert mem.total == 4030284 * 1024
    assert mem.available == 82044 * 1024
    assert mem.swap_total == 1048572 * 1024
    assert mem.swap_used == (1048572 - 10240) * 1024


def test_it_leaves_missing_meminfo_fields_unknown():
    mem = parse.parse_meminfo("MemTotal: 1000 kB\nHugePages_Total: 0\n")
    assert mem == parse.Memory(total=1024000, available=None, swap_total=None, swap_used=None)


def test_it_computes_the_root_disk_ratio_as_df_does():
    df = (
        "Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
        "/dev/sda1         61611820 25374812  33074684      44% /\n"
    )
    ratio = parse.parse_df_used_ratio(df)
    assert ratio == pytest.approx(25374812 / (25374812 + 33074684))
    assert round(ratio * 100) == 43  # df rounds the same ratio up to 44%


def test_it_reads_a_full_disk_as_one():
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda1 100 100 0 100% /\n"
    assert parse.parse_df_used_ratio(df) == 1.0


def test_it_ignores_df_rows_for_other_mount_points():
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sdb1 10 5 5 50% /srv\n"
    assert parse.parse_df_used_ratio(df) is None


def test_it_lists_failed_units_with_or_without_bullets():
    assert parse.parse_failed_units(fixture("systemctl_failed_bullets.txt")) == (
        "postgresql.service",
        "systemd-networkd-wait-online.service",
    )
    assert parse.parse_failed_units("") == ()
    assert parse.parse_failed_units("0 loaded units listed.\n") == ()


def test_it_splits_the_healthy_probe_output_into_its_parts():
    sections = parse.split_probe_output(fixture("probe_healthy.txt"))
    assert sections.loadavg.startswith("0.52 ")
    assert sections.nproc == "4"
    assert sections.meminfo[0].startswith("MemTotal:")
    assert sections.meminfo[-1].startswith("DirectMap4k:")
    assert sections.df[0].startswith("Filesystem")
    assert sections.df[1].endswith(" /")
    assert sections.failed_units == []


def test_it_splits_the_sick_probe_output_into_its_parts():
    sections = parse.split_probe_output(fixture("probe_sick.txt"))
    assert sections.nproc == "2"
    assert len(sections.meminfo) == 5
    assert parse.parse_df_used_ratio("\n".join(sections.df)) == 1.0
    assert parse.parse_failed_units("\n".join(sections.failed_units)) == (
        "postgresql.service",
        "nginx.service",
    )


def test_it_splits_a_chain_that_stopped_early_without_inventing_parts():
    sections = parse.split_probe_output("0.1 0.2 0.3 1/2 3\n")
    assert sections.nproc == ""
    assert sections.meminfo == []
    assert sections.df == []
