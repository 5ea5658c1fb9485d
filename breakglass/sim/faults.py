"""What each guest-side fault does to the devvm, in the guest's own terms.

Each function changes the guest's state the way the real failure would, and
leaves the traces a person would find (journal lines, kernel messages).
"""

from __future__ import annotations

from breakglass.sim import catalog as c
from breakglass.sim.guest import JOURNAL_FILE, Guest, archived_name, pg_line


def crash_postgres(g: Guest, at: float) -> None:
    """postgresql.service dies after failing to get its shared memory back."""
    unit = g.units["postgresql.service"]
    if unit.active != "active":
        return
    pid = unit.main_pid or 0
    g.log(at - 4, "postgres", pid, pg_line(at - 4, pid, "LOG:  server process (PID 30412) was "
                                                      "terminated by signal 9: Killed"), pri=4)
    g.log(at - 4, "postgres", pid, pg_line(at - 4, pid, "LOG:  terminating any other active "
                                                      "server processes"))
    g.log(at - 3, "postgres", pid, pg_line(at - 3, pid, "LOG:  all server processes terminated; "
                                                      "reinitializing"))
    g.log(at - 3, "postgres", pid, pg_line(at - 3, pid, "FATAL:  could not map anonymous shared "
                                                      "memory: Cannot allocate memory"), pri=2)
    g.log(at - 3, "postgres", pid, pg_line(at - 3, pid, "HINT:  This error usually means that "
             "PostgreSQL's request for a shared memory segment exceeded available memory, swap "
             "space, or huge pages."))
    g.log(at - 3, "postgres", pid, pg_line(at - 3, pid, "LOG:  database system is shut down"))
    for e in g.journal[-6:]:
        e.unit = "postgresql.service"
    g.fail_unit("postgresql.service", at - 3)


def kill_sshd(g: Guest, at: float) -> None:
    """sshd is killed (the listener is gone; the port refuses)."""
    if g.units["ssh.service"].active == "active":
        g.fail_unit("ssh.service", at, result="signal")


def fill_disk(g: Guest, at: float, size_kb: int = c.ROOT_BLOCKS_KB) -> None:
    """Journal, stale build artefacts and docker's build cache fill the root to ~99 %."""
    first = len(g.journal_archived) + 1
    for i in range(52):
        ts = at - (52 - i) * 40_000
        g.journal_archived.append((archived_name(first + i, ts), ts, JOURNAL_FILE))
    g.journal_archived.sort(key=lambda a: a[1])
    g.gone.discard(c.CLEANUP_DIR)
    for i in range(7):
        g.disk[f"{c.CLEANUP_DIR}/build-{4711 + i}"] = 307 * c.MiB
    target = int(size_kb * 1024 * 0.989)
    g.disk.pop("/var/lib/docker/buildkit", None)  # size it afresh on a second fill
    g.disk["/var/lib/docker/buildkit"] = max(0, target - g.used_bytes())
    for dt in (240, 120, 30):
        g.kmsg(at - dt, "systemd-journald[312]: Failed to write entry (22 items, 6412 bytes), "
                           "ignoring: No space left on device")
        g.log(at - dt, "systemd-journald", 312, "Failed to rotate /var/log/journal/"
                 f"{c.MACHINE_ID}/system.journal: No space left on device", pri=3)
    pg = g.units["postgresql.service"].main_pid
    if pg:
        g.log(at - 20, "postgres", pg, pg_line(at - 20, pg, 'ERROR:  could not extend file '
                 '"base/16384/24576": No space left on device'), "postgresql.service", pri=3)


def start_hog(g: Guest, at: float) -> None:
    """viktor's leaking batch job runs; memory and swap fill; the OOM killer fires."""
    g.start_unit(c.HOG_UNIT, at - 900)
    pid = g.units[c.HOG_UNIT].main_pid
    for minutes, rows in ((14, "1,204,332"), (10, "9,871,020"), (5, "21,448,913"), (1, "33,090,117")):
        g.log(at - minutes * 60, "python3", pid, f"leak.py: batch import running, {rows} rows "
              "cached in memory", c.HOG_UNIT)
    g.kmsg(at - 60, "python3 invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|"
                       "__GFP_COMP), order=0, oom_score_adj=0")
    g.kmsg(at - 60, "Out of memory: Killed process 1873 (node) total-vm:2214120kB, "
                       "anon-rss:604312kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:2140kB "
                       "oom_score_adj:200")


def stall_messages(g: Guest, at: float) -> None:
    """Hung-task reports that appear as the disk stops answering."""
    for task, pid in (("jbd2/sda1-8", 245), ("postgres", g.units["postgresql.service"]
                                             .main_pid or 1102)):
        g.kmsg(at, f"INFO: task {task}:{pid} blocked for more than 120 seconds.")
        g.kmsg(at, f"      Not tainted {c.KERNEL} {c.KERNEL_BUILD.split(' (')[0]}")
        g.kmsg(at, '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.')
        g.kmsg(at, f"task:{task:<15} state:D stack:0     pid:{pid:<5} ppid:2      "
                      "flags:0x00004000")


def soft_lockup(g: Guest, at: float) -> None:
    """A guest hang leaves a soft-lockup report nobody can read until reboot."""
    g.kmsg(at, "watchdog: BUG: soft lockup - CPU#2 stuck for 23s! [kworker/2:1:1187]")
