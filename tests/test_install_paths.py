"""The ways an operator installs the watchdog: a wheel under systemd, and the container's layout.

The wheel is built from this tree and installed into a fresh venv; the unit
file is checked by systemd-analyze against the breakglass that wheel installed.
The container is run as its image would run it: UID 10001, the documented
folder bind-mounted read-only at /etc/breakglass (a private mount namespace),
the production config from deploy/k8s/configmap.yaml, the store on a volume.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from breakglass.sim.runner import SimHandle
from breakglass.sim.statedir import free_port

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "breakglass.service"
SYSUSERS = ROOT / "deploy" / "systemd" / "breakglass.sysusers"
IMAGE_UID = 10001
MAX_EXPOSURE = 2.0
# Under `make test`'s xdist workers the module runs on one worker, so the wheel (a module
# fixture) is built once.
pytestmark = pytest.mark.xdist_group("wheel")


def production_config() -> dict:
    """The one production config: deploy/k8s/configmap.yaml's config.yaml (also the container's)."""
    doc = yaml.safe_load((ROOT / "deploy/k8s/configmap.yaml").read_text(encoding="utf-8"))
    return yaml.safe_load(doc["data"]["config.yaml"])


def need(tool: str) -> str:
    """The tool's path, or a loud skip naming the Debian package that brings it."""
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"SKIPPED LOUDLY: {tool} is not installed (Debian package: systemd)")
    return found


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this tree installed by pip, as the docs say.

    The wheel itself goes in the way an operator installs it; its dependencies
    are the ones already installed for this suite (a ``.pth`` line), so the
    test checks what the wheel ships without downloading the world each run.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(ROOT)],
                           timeout=300, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("breakglass-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "suite-deps.pth").write_text(f"{deps}\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install",
                           "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = "import breakglass; print(breakglass.__file__)"
    located = subprocess.run([str(venv / "bin/python"), "-c", where],
                             capture_output=True, text=True, timeout=60, check=True, cwd="/")
    assert located.stdout.startswith(str(site)), f"breakglass came from {located.stdout!r}, not the wheel"
    return venv


def test_the_wheel_installs_into_a_fresh_venv_with_its_command_and_data_files(
    wheel_venv: Path, sim: SimHandle
) -> None:
    exe = wheel_venv / "bin" / "breakglass"
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, check=True)
    for command in ("serve", "doctor", "check-config", "probe", "trigger"):
        assert command in help_text.stdout
    checked = subprocess.run([str(exe), "check-config", str(sim.config_path)], capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    # The page's templates, static files, the OpenAPI document and the agent's prompt ship too.
    probe = ("import importlib.resources as r; b = r.files('breakglass'); "
             "print(all((b / p).is_file() for p in ('web/templates/index.html', 'web/static/app.css', "
             "'web/openapi.yaml', 'agent/prompt.md')))")
    out = subprocess.run([str(wheel_venv / "bin/python"), "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True, cwd="/")
    assert out.stdout.strip() == "True"
    doctor = subprocess.run([str(exe), "doctor", "-c", str(sim.config_path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def unit_for(exe: Path, tmp_path: Path) -> Path:
    """The shipped unit with its command pointed at ``exe`` (verify checks the binary exists)."""
    text = UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/breakglass", str(exe))
    unit = tmp_path / "breakglass.service"
    unit.write_text(text, encoding="utf-8")
    return unit


def test_the_unit_file_passes_systemd_analyze_verify_with_the_wheels_command(
    wheel_venv: Path, tmp_path: Path
) -> None:
    analyze = need("systemd-analyze")
    unit = unit_for(wheel_venv / "bin" / "breakglass", tmp_path)
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "breakglass.service" not in proc.stderr, proc.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    unit = tmp_path / "breakglass.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("ExecStart=/usr/local/bin/breakglass",
                                                             "ExecStart=breakglass-not-a-path"),
                    encoding="utf-8")
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0


def test_the_units_hardening_rates_ok_in_systemd_analyze_security(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    unit = unit_for(Path(sys.executable), tmp_path)
    proc = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for breakglass\.service: ([0-9.]+) (\w+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m[1]) <= MAX_EXPOSURE, m[0]


def test_the_unit_runs_a_dedicated_user_with_its_state_directory_and_restarts_on_failure() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["User"] == ["breakglass"]
    assert settings["StateDirectory"] == ["breakglass"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["ExecStart"] == ["/usr/local/bin/breakglass serve -c /etc/breakglass/config.yaml"]
    # The production config keeps its store where StateDirectory= puts the folder.
    assert production_config()["store_path"].startswith("/var/lib/breakglass/")


def test_the_sysusers_file_creates_the_services_user(tmp_path: Path) -> None:
    sysusers = need("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run([sysusers, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc/passwd").read_text(encoding="utf-8")
    assert re.search(r"^breakglass:x:\d+:\d+:breakglass watchdog:/var/lib/breakglass:/usr/sbin/nologin$",
                     passwd, re.M), passwd


# --- the container's layout, run as the image runs it ---------------------------------------


def container_layout(base: Path, sim: SimHandle, port: int) -> Path:
    """The documented etc-breakglass folder, with the simulator as the hosts to watch."""
    etc = base / "etc-breakglass"
    (etc / "ssh").mkdir(parents=True)
    (etc / "tokens").mkdir()
    target = sim.config.targets[0]
    shutil.copy(target.devvm.key_file, etc / "ssh/devvm_ed25519")
    shutil.copy(target.pve.key_file, etc / "ssh/pve_ed25519")
    shutil.copy(target.devvm.known_hosts, etc / "ssh/known_hosts")
    for name in ("web_token", "webhook_token", "api_token"):
        (etc / "tokens" / name).write_text(f"{name}-0123456789abcdef0123456789\n", encoding="utf-8")
    cfg = production_config()
    # The watched hosts are the simulator's, on loopback; everything else stays as shipped.
    cfg["targets"][0]["devvm"].update(host="127.0.0.1", port=sim.devvm_port)
    cfg["targets"][0]["pve"].update(host="127.0.0.1", port=sim.pve_port)
    cfg["web"]["port"] = port
    (etc / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return etc


def as_image_user(etc: Path, data: Path, argv: list[str]) -> list[str]:
    """argv run as UID 10001 with etc at /etc/breakglass (read-only) and data at /var/lib/breakglass."""
    script = (
        'mount --bind "$1" /etc/breakglass && mount -o remount,bind,ro /etc/breakglass && '
        'mount --bind "$2" /var/lib/breakglass && shift 2 && '
        f'exec setpriv --reuid={IMAGE_UID} --regid={IMAGE_UID} --clear-groups -- "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(etc), str(data), *argv]


@pytest.fixture
def mount_points() -> Iterator[None]:
    """/etc/breakglass and /var/lib/breakglass exist to mount over; made here, removed after."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("SKIPPED LOUDLY: the container test needs root, unshare and setpriv (util-linux)")
    made: list[Path] = []
    for p in (Path("/etc/breakglass"), Path("/var/lib/breakglass")):
        # One step, not "exists? then mkdir": a directory that appears between the two (another
        # process on the machine making it) is one this fixture did not make, and keeps.
        try:
            p.mkdir(parents=True)
        except FileExistsError:
            continue
        made.append(p)
    yield
    for p in made:
        with contextlib.suppress(OSError):  # something put files in it meanwhile: left as it is
            p.rmdir()


def documented_permissions(etc: Path, data: Path) -> None:
    """What docs/operations.md tells the operator to run: the image's user owns its files."""
    for path in [etc, *etc.rglob("*"), data]:
        os.chown(path, IMAGE_UID, IMAGE_UID)
        os.chmod(path, 0o700 if path.is_dir() else 0o400)


def test_keys_the_admin_owns_with_mode_0600_cannot_be_read_by_the_images_user(
    sim: SimHandle, tmp_path: Path, mount_points: None
) -> None:
    etc = container_layout(tmp_path, sim, free_port())
    data = tmp_path / "data"
    data.mkdir()
    for path in etc.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.chmod(etc, 0o755)
    os.chmod(etc / "config.yaml", 0o644)
    exe = str(Path(sys.executable).parent / "breakglass")
    proc = subprocess.run(as_image_user(etc, data, [exe, "check-config", "/etc/breakglass/config.yaml"]),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "key_file: file /etc/breakglass/ssh/devvm_ed25519 is not readable" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_container_serves_on_every_address_with_auth_as_the_image_user(
    sim: SimHandle, tmp_path: Path, mount_points: None
) -> None:
    port = free_port()
    etc = container_layout(tmp_path, sim, port)
    data = tmp_path / "data"
    data.mkdir()
    documented_permissions(etc, data)
    exe = str(Path(sys.executable).parent / "breakglass")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(as_image_user(etc, data, [exe, "serve", "-c", "/etc/breakglass/config.yaml"]),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
        # Bound to every address (what a published port reaches), not loopback only.
        listening = Path("/proc/net/tcp").read_text(encoding="utf-8")
        assert re.search(rf"^\s*\d+: 00000000:{port:04X} 00000000:0000 0A ", listening, re.M)
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{base}/api/v1/status", timeout=5)
        assert denied.value.code == 401
        denied.value.close()
        token = (etc / "tokens/web_token").read_text(encoding="utf-8").strip()
        bearer = {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(f"{base}/api/v1/status", headers=bearer)
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200
        # The store was created on the volume, by the image's user.
        store = data / "breakglass.db"
        assert store.stat().st_uid == IMAGE_UID
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
