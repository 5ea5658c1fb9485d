"""The simulated devvm's fixed inventory: units, their processes, boot messages, disk layout."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
MiB = 1024**2

HOSTNAME = "devvm"
MACHINE_ID = "6f1c2a9e8d7b4c3fa51e0b2d9c8f7a61"
KERNEL = "6.1.0-27-amd64"
KERNEL_BUILD = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)"
CPUS = 4
MEM_TOTAL_KB = 16_370_540
SWAP_TOTAL_KB = 4_194_300
ROOT_DEVICE = "/dev/sda1"
ROOT_BLOCKS_KB = 65_739_772  # a 64 GiB virtual disk, less the partition table and ext4 metadata
SWAP_DEVICE = "/dev/sda5"
CLEANUP_DIR = "/var/tmp/breakglass-cleanup"
JOURNAL_DIR = f"/var/log/journal/{MACHINE_ID}"
LOGIN_USER = "breakglass"
HOG_COMMAND = "python3 /opt/batch/leak.py"
HOG_UNIT = "leaky-batch.service"


@dataclass(frozen=True)
class ProcSpec:
    """One process a unit (or the session) starts: who runs it and how big it is."""

    user: str
    command: str
    rss_kb: int
    vsz_kb: int
    cpu_pct: float = 0.0
    stat: str = "Ss"
    tty: str = "?"


@dataclass(frozen=True)
class UnitSpec:
    """A systemd service the devvm has, with what it runs when active."""

    name: str
    description: str
    exec_start: str
    procs: tuple[ProcSpec, ...]
    enabled: bool = True
    docs: str = ""
    path: str = "/lib/systemd/system"


_PG = "/usr/lib/postgresql/15/bin/postgres"

UNITS: tuple[UnitSpec, ...] = (
    UnitSpec(
        "systemd-journald.service", "Journal Service", "/lib/systemd/systemd-journald",
        (ProcSpec("root", "/lib/systemd/systemd-journald", 48_212, 90_112),),
        docs="man:systemd-journald.service(8) man:journald.conf(5)",
    ),
    UnitSpec(
        "systemd-udevd.service", "Rule-based Manager for Device Events and Files",
        "/lib/systemd/systemd-udevd",
        (ProcSpec("root", "/lib/systemd/systemd-udevd", 7_240, 25_420),),
        docs="man:systemd-udevd.service(8) man:udev(7)",
    ),
    UnitSpec(
        "systemd-timesyncd.service", "Network Time Synchronization",
        "/lib/systemd/systemd-timesyncd",
        (ProcSpec("systemd-timesync", "/lib/systemd/systemd-timesyncd", 6_912, 90_208, stat="Ssl"),),
        docs="man:systemd-timesyncd.service(8)",
    ),
    UnitSpec(
        "dbus.service", "D-Bus System Message Bus",
        "/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile "
        "--systemd-activation --syslog-only",
        (ProcSpec("messagebus", "/usr/bin/dbus-daemon --system --address=systemd: --nofork "
                  "--nopidfile --systemd-activation --syslog-only", 5_208, 9_088),),
        docs="man:dbus-daemon(1)",
    ),
    UnitSpec(
        "systemd-logind.service", "User Login Management", "/lib/systemd/systemd-logind",
        (ProcSpec("root", "/lib/systemd/systemd-logind", 7_812, 16_504),),
        docs="man:sd-login(3) man:systemd-logind.service(8)",
    ),
    UnitSpec(
        "qemu-guest-agent.service", "QEMU Guest Agent", "/usr/sbin/qemu-ga",
        (ProcSpec("root", "/usr/sbin/qemu-ga", 4_104, 80_604, stat="Ssl"),),
    ),
    UnitSpec(
        "cron.service", "Regular background program processing daemon", "/usr/sbin/cron -f $EXTRA_OPTS",
        (ProcSpec("root", "/usr/sbin/cron -f", 2_816, 6_608),),
        docs="man:cron(8)",
    ),
    UnitSpec(
        "ssh.service", "OpenBSD Secure Shell server", "/usr/sbin/sshd -D $SSHD_OPTS",
        (ProcSpec("root", "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups", 9_104, 15_432),),
        docs="man:sshd(8) man:sshd_config(5)",
    ),
    UnitSpec(
        "containerd.service", "containerd container runtime", "/usr/bin/containerd",
        (ProcSpec("root", "/usr/bin/containerd", 52_416, 2_140_264, 0.2, "Ssl"),),
        docs="https://containerd.io",
    ),
    UnitSpec(
        "docker.service", "Docker Application Container Engine",
        "/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock",
        (
            ProcSpec("root", "/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock",
                     98_304, 2_520_116, 0.3, "Ssl"),
            ProcSpec("root", "/usr/bin/containerd-shim-runc-v2 -namespace moby -id "
                     "7c1e0f3b9a24 -address /run/containerd/containerd.sock", 12_288, 720_364,
                     stat="Sl"),
            ProcSpec("999", "redis-server *:6379", 14_520, 62_004, 0.1, "Ssl"),
            ProcSpec("root", "/usr/bin/containerd-shim-runc-v2 -namespace moby -id "
                     "d41a77c02e5f -address /run/containerd/containerd.sock", 12_160, 720_364,
                     stat="Sl"),
            ProcSpec("1000", "/usr/share/opensearch/jdk/bin/java -Xms2g -Xmx2g "
                     "-XX:+UseG1GC -Dopensearch.path.home=/usr/share/opensearch "
                     "org.opensearch.bootstrap.OpenSearch", 2_364_212, 6_912_448, 1.4, "Ssl"),
        ),
        docs="https://docs.docker.com",
    ),
    UnitSpec(
        "postgresql.service", "PostgreSQL Cluster 15-main",
        f"{_PG} -D /var/lib/postgresql/15/main -c config_file=/etc/postgresql/15/main/postgresql.conf",
        (
            ProcSpec("postgres", f"{_PG} -D /var/lib/postgresql/15/main -c "
                     "config_file=/etc/postgresql/15/main/postgresql.conf", 30_208, 219_012),
            ProcSpec("postgres", "postgres: 15/main: checkpointer ", 78_120, 219_148),
            ProcSpec("postgres", "postgres: 15/main: background writer ", 9_012, 219_012),
            ProcSpec("postgres", "postgres: 15/main: walwriter ", 10_240, 219_012),
            ProcSpec("postgres", "postgres: 15/main: autovacuum launcher ", 8_832, 220_588),
            ProcSpec("postgres", "postgres: 15/main: logical replication launcher ", 7_168, 220_572),
        ),
        docs="man:postgres(1)",
        path="/etc/systemd/system",
    ),
    UnitSpec(
        "nginx.service", "A high performance web server and a reverse proxy server",
        "/usr/sbin/nginx -g daemon on; master_process on;",
        (
            ProcSpec("root", "nginx: master process /usr/sbin/nginx -g daemon on; master_process on;",
                     1_612, 10_300),
            *(ProcSpec("www-data", "nginx: worker process", 5_436, 11_052, stat="S")
              for _ in range(CPUS)),
        ),
        docs="man:nginx(8)",
    ),
    UnitSpec(
        HOG_UNIT, "Nightly batch import (viktor)", "/usr/bin/python3 /opt/batch/leak.py",
        (ProcSpec("viktor", HOG_COMMAND, 0, 0, 41.7, "Rs"),),
        enabled=False,
        path="/etc/systemd/system",
    ),
)

UNIT_BY_NAME = {u.name: u for u in UNITS}

# Processes that are not a system unit's: kernel threads, init, the login user's work.
KERNEL_THREADS: tuple[str, ...] = (
    "[kthreadd]", "[rcu_gp]", "[rcu_par_gp]", "[kworker/0:0H-events_highpri]",
    "[mm_percpu_wq]", "[ksoftirqd/0]", "[rcu_preempt]", "[migration/0]", "[ksoftirqd/1]",
    "[ksoftirqd/2]", "[ksoftirqd/3]", "[kcompactd0]", "[khugepaged]", "[kswapd0]",
    "[kworker/1:1H-kblockd]", "[jbd2/sda1-8]", "[ext4-rsv-conver]", "[kworker/u8:2-events_unbound]",
)

USER_PROCS: tuple[ProcSpec, ...] = (
    ProcSpec("breakglass", "tmux new-session -d -s dev", 4_212, 10_836),
    ProcSpec("breakglass", "-bash", 5_404, 8_872, stat="Ss+", tty="pts/1"),
    ProcSpec("breakglass", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java -Xmx3g "
             "-Dfile.encoding=UTF-8 -cp /home/breakglass/.gradle/wrapper/dists/gradle-8.5-bin/"
             "lib/gradle-launcher-8.5.jar org.gradle.launcher.daemon.bootstrap.GradleDaemon 8.5",
             2_148_604, 6_893_212, 2.1, "Ssl"),
    ProcSpec("breakglass", "node /home/breakglass/app/node_modules/.bin/vite --host",
             422_180, 11_204_316, 0.4, "Sl+", "pts/1"),
    ProcSpec("breakglass", "/usr/lib/code-server/lib/node /usr/lib/code-server --bind-addr "
             "127.0.0.1:8080", 384_016, 1_214_908, 0.6, "Ssl"),
)

# Compiler jobs that make the load spike; short-lived, so they vanish with it.
SPIKE_PROC = ProcSpec("breakglass", "/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus -quiet -O2 "
                      "src/engine/render.cpp", 212_400, 268_112, 31.2, "R+", "pts/1")

# Disk usage of the healthy root filesystem, by directory (bytes). The remainder
# that makes the root 41 % full is added to /usr by guest.py.
BASE_DISK: dict[str, int] = {
    "/boot": 118 * MiB,
    "/etc": 8 * MiB,
    "/root": 24 * MiB,
    "/tmp": 18 * MiB,
    "/opt/batch": 12 * MiB,
    "/opt/code-server": 372 * MiB,
    "/home/breakglass": int(6.1 * GiB),
    "/home/viktor": int(1.2 * GiB),
    "/var/cache/apt": 412 * MiB,
    "/var/lib/apt": 208 * MiB,
    "/var/lib/dpkg": 61 * MiB,
    "/var/lib/docker": int(9.8 * GiB),
    "/var/lib/postgresql": int(2.9 * GiB),
    "/var/log/nginx": 18 * MiB,
    "/var/log/postgresql": 14 * MiB,
    "/var/log/apt": 2 * MiB,
}
EMPTY_DIRS: tuple[str, ...] = (CLEANUP_DIR, "/srv", "/mnt", "/media")

BOOT_DMESG: tuple[str, ...] = (
    f"Linux version {KERNEL} (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0, "
    f"GNU ld (GNU Binutils for Debian) 2.40) {KERNEL_BUILD}",
    f"Command line: BOOT_IMAGE=/boot/vmlinuz-{KERNEL} root=UUID=3b9c1f0e-5d2a-4c7b-9e61-"
    "8a4f2d0c7b15 ro quiet",
    "BIOS-provided physical RAM map:",
    "DMI: QEMU Standard PC (i440FX + PIIX, 1996), BIOS rel-1.16.3-0-ga6ed6b701f0a-prebuilt.qemu.org "
    "04/01/2014",
    "Hypervisor detected: KVM",
    "smpboot: Allowing 4 CPUs, 0 hotplug CPUs",
    f"Memory: {MEM_TOTAL_KB - 312_000}K/{MEM_TOTAL_KB + 406_000}K available",
    "smp: Brought up 1 node, 4 CPUs",
    "virtio_scsi virtio1: 1/0/0 default/read/poll queues",
    "scsi 2:0:0:0: Direct-Access     QEMU     QEMU HARDDISK    2.5+ PQ: 0 ANSI: 5",
    "sd 2:0:0:0: [sda] 134217728 512-byte logical blocks: (68.7 GB/64.0 GiB)",
    "sd 2:0:0:0: [sda] Attached SCSI disk",
    " sda: sda1 sda2 < sda5 >",
    "EXT4-fs (sda1): mounted filesystem with ordered data mode. Quota mode: none.",
    "systemd[1]: systemd 252.31-1~deb12u1 running in system mode (+PAM +AUDIT +SELINUX +APPARMOR "
    "+IMA +SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID +CURL +ELFUTILS +FIDO2 +IDN2 -IDN "
    "+IPTC +KMOD +LIBCRYPTSETUP +LIBFDISK +PCRE2 -PWQUALITY +P11KIT +QRENCODE +TPM2 +BZIP2 +LZ4 "
    "+XZ +ZLIB +ZSTD -BPF_FRAMEWORK -XKBCOMMON +UTMP +SYSVINIT default-hierarchy=unified)",
    "systemd[1]: Detected virtualization kvm.",
    f"systemd[1]: Hostname set to <{HOSTNAME}>.",
    "EXT4-fs (sda1): re-mounted. Quota mode: none.",
    f"Adding {SWAP_TOTAL_KB}k swap on {SWAP_DEVICE}.  Priority:-2 extents:1 across:"
    f"{SWAP_TOTAL_KB}k FS",
    "virtio_net virtio2 ens18: renamed from eth0",
    "bridge: filtering via arp/ip/ip6tables is no longer available by default.",
    "Initializing XFRM netlink socket",
    "br-4e2a19c07f3d: port 1(veth8a1c2f4) entered forwarding state",
)
