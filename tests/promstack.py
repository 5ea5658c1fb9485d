"""Run the real stack on loopback: simulator, ``breakglass serve``, Prometheus, Alertmanager.

Shared by tests/test_observability.py and bench/detection_paths.py. Every
process is a child on 127.0.0.1 with ports the kernel picked, logs into the
work folder, and is killed by ``Stack.close()``. Every wait polls with a
deadline and says what it waited for when it gives up.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from breakglass.sim.statedir import free_port

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
PROMETHEUS_EXAMPLE = ROOT / "config" / "prometheus" / "prometheus.example.yml"
ALERTMANAGER_EXAMPLE = ROOT / "config" / "alertmanager.example.yml"
DASHBOARD = ROOT / "dashboards" / "devvm-health.json"
LOOPBACK = "127.0.0.1"
JOB = "breakglass"
# Large enough that the watchdog's own rules never fire within a test or benchmark run.
NEVER_ROUNDS = 100_000
NEVER_SECONDS = 1e7
_ROUND_RULES = ("ssh_rounds", "guest_agent_rounds", "vm_not_running_rounds", "disk_rounds",
                "failed_units_rounds", "pve_rounds")
_SECONDS_RULES = ("memory_for_seconds", "load_for_seconds")
_FOR = re.compile(r"^(\s*for:\s*)(\S+)[ \t]*$", re.MULTILINE)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

T = TypeVar("T")


def prometheus_binary() -> str | None:
    """The Prometheus server on PATH, if installed."""
    return shutil.which("prometheus")


def alertmanager_binary() -> str | None:
    """The Alertmanager server on PATH (Debian names it prometheus-alertmanager)."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
        except (OSError, ValueError) as exc:  # a server still starting refuses or answers half
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}{extra}")
        time.sleep(every)


def http(
    url: str,
    *,
    data: bytes | None = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One HTTP request to a loopback server: (status, body), 4xx and 5xx included."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document; ValueError on a non-200 answer."""
    status, body = http(url, timeout=timeout)
    if status != 200:
        raise ValueError(f"GET {url}: HTTP {status}: {body[:300]!r}")
    return json.loads(body)


@dataclass
class Child:
    """A child process with its log file."""

    name: str
    proc: subprocess.Popen[str]
    log: Path

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return int(self.proc.returncode)

    def tail(self, lines: int = 30) -> str:
        """The end of the log, for failure messages."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(name: str, argv: list[str], workdir: Path, *, stdout_pipe: bool = False) -> Child:
    """Start ``argv`` with stderr (and stdout unless piped) into ``workdir/name.log``."""
    log = workdir / f"{name}.log"
    with log.open("a", encoding="utf-8") as out:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=workdir,
        )
    return Child(name, proc, log)


# --- config files ----------------------------------------------------------------------------


def quiet_watchdog_config(
    sim_config: Path, *, dry_run: bool = False, quiet: bool = True, shipped_defaults: bool = False
) -> Path:
    """Write ``serve.yaml`` next to the simulator's config: its own rules slowed (``quiet``), or dry-run.

    Thresholds stay as they are (verification after a fix uses them); only the
    rounds and for-durations grow so that the watchdog's rules never fire and
    an incident can only come from outside (the webhook).
    """
    doc = yaml.safe_load(sim_config.read_text(encoding="utf-8"))
    if shipped_defaults:
        # Probe and rule settings as shipped, not the simulator profile's fast ones.
        doc.pop("probe", None)
        doc.pop("rules", None)
    rules = doc.setdefault("rules", {})
    if quiet:
        rules.update(dict.fromkeys(_ROUND_RULES, NEVER_ROUNDS))
        rules.update(dict.fromkeys(_SECONDS_RULES, NEVER_SECONDS))
    doc.setdefault("budget", {})["dry_run"] = dry_run
    # The runbook acts; a model is never reached from a test or a benchmark.
    doc.setdefault("agent", {})["enabled"] = "never"
    out = sim_config.with_name("serve.yaml")
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


def seconds(duration: str) -> float:
    """A Prometheus duration ("1m30s", "500ms") in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def duration(value: float) -> str:
    """Seconds as a Prometheus duration, to the millisecond."""
    ms = round(value * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def rules_with_for(src: Path, dest: Path, scale: float | None) -> Path:
    """Copy an alert rules file with every ``for:`` multiplied by ``scale`` (None: unchanged)."""
    text = src.read_text(encoding="utf-8")
    if scale is not None:
        text = _FOR.sub(lambda m: m.group(1) + duration(seconds(m.group(2)) * scale), text)
    dest.write_text(text, encoding="utf-8")
    return dest


def prometheus_config(
    dest: Path,
    *,
    scrape_target: str,
    rules: Path,
    alertmanager: str,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> Path:
    """The shipped prometheus.example.yml with test addresses, paths and intervals."""
    doc = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text(encoding="utf-8"))
    doc["global"]["scrape_interval"] = scrape_interval
    doc["global"]["evaluation_interval"] = evaluation_interval
    doc["rule_files"] = [str(rules)]
    doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager]
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == JOB]
    job["static_configs"][0]["targets"] = [scrape_target]
    dest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest


def alertmanager_config(
    dest: Path,
    *,
    webhook_url: str,
    token_file: Path,
    group_wait: str = "0s",
    group_interval: str = "1s",
) -> Path:
    """The shipped alertmanager.example.yml pointed at a test webhook, with short group timers."""
    doc = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    doc["route"]["group_wait"] = group_wait
    doc["route"]["group_interval"] = group_interval
    (receiver,) = [r for r in doc["receivers"] if r["name"] == "breakglass"]
    (hook,) = receiver["webhook_configs"]
    hook["url"] = webhook_url
    hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    dest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest


# --- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    """Simulator + serve + Alertmanager + Prometheus, all on loopback, in ``workdir``."""

    workdir: Path
    children: list[Child] = field(default_factory=list)
    sim_info: dict[str, Any] = field(default_factory=dict)
    serve_config: Path | None = None
    serve_url: str = ""
    prometheus_url: str = ""
    alertmanager_url: str = ""
    prometheus_yml: Path | None = None
    alertmanager_yml: Path | None = None
    rules_file: Path | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def start_sim(self, timeout: float = 20.0) -> dict[str, Any]:
        """``breakglass sim --profile test``; return its JSON line."""
        state = self.workdir / "sim"
        argv = [sys.executable, "-m", "breakglass.cli", "sim", "--state-dir", str(state), "--profile", "test"]
        child = spawn("sim", argv, self.workdir, stdout_pipe=True)
        self.children.append(child)
        assert child.proc.stdout is not None
        # One line, printed once every port is bound; bounded by the child's own exit.
        line = child.proc.stdout.readline()
        if not line:
            child.proc.wait(timeout)
            raise RuntimeError(f"breakglass sim exited before printing its ports:\n{child.tail()}")
        self.sim_info = json.loads(line)
        return self.sim_info

    def start_serve(self, config: Path, timeout: float = 30.0) -> str:
        """``breakglass serve -c config``; wait for /readyz; return its base URL."""
        port = yaml.safe_load(config.read_text(encoding="utf-8"))["web"]["port"]
        argv = [sys.executable, "-m", "breakglass.cli", "serve", "-c", str(config)]
        child = spawn("serve", argv, self.workdir)
        self.children.append(child)
        self.serve_config = config
        self.serve_url = f"http://{LOOPBACK}:{port}"

        def ready() -> bool:
            if not child.alive():
                raise RuntimeError(f"breakglass serve exited:\n{child.tail()}")
            return http(self.serve_url + "/readyz", timeout=1.0)[0] == 200

        wait_for(ready, timeout, "breakglass serve /readyz")
        return self.serve_url

    def start_alertmanager(
        self, config: Path, *, port: int | None = None, ready: bool = True, timeout: float = 20.0
    ) -> str:
        """Alertmanager (clustering off) on ``port`` or a free one; wait for /-/ready if ``ready``."""
        binary = alertmanager_binary()
        if binary is None:
            raise RuntimeError("Alertmanager is not installed (apt-get install prometheus-alertmanager)")
        port = port or free_port()
        data = self.workdir / "alertmanager-data"
        data.mkdir(exist_ok=True)
        self.alertmanager_url = f"http://{LOOPBACK}:{port}"
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.path={data}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--cluster.listen-address=",  # empty: no gossip port, no peers
            f"--web.external-url={self.alertmanager_url}",
            "--log.level=info",
        ]
        child = spawn("alertmanager", argv, self.workdir)
        self.children.append(child)
        self.alertmanager_yml = config
        if ready:
            self._wait_ready(child, self.alertmanager_url, timeout)
        return self.alertmanager_url

    def start_prometheus(self, config: Path, *, ready: bool = True, timeout: float = 20.0) -> str:
        """Prometheus on a free port with a fresh TSDB; wait for /-/ready if ``ready``."""
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("Prometheus is not installed (apt-get install prometheus)")
        port = free_port()
        tsdb = self.workdir / "prometheus-data"
        tsdb.mkdir(exist_ok=True)
        self.prometheus_url = f"http://{LOOPBACK}:{port}"
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]
        child = spawn("prometheus", argv, self.workdir)
        self.children.append(child)
        self.prometheus_yml = config
        if ready:
            self._wait_ready(child, self.prometheus_url, timeout)
        return self.prometheus_url

    def _wait_ready(self, child: Child, url: str, timeout: float) -> None:
        def ready() -> bool:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            return http(url + "/-/ready", timeout=1.0)[0] == 200

        wait_for(ready, timeout, f"{child.name} {url}/-/ready")

    def start_all(
        self,
        *,
        quiet_watchdog: bool = True,
        dry_run: bool = False,
        for_scale: float | None = None,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        group_wait: str = "0s",
        group_interval: str = "1s",
        shipped_defaults: bool = False,
    ) -> Stack:
        """Start the simulator, then Prometheus, serve and Alertmanager together; wait for all three.

        Prometheus goes first because it applies new scrape targets only every
        5 s: its wait overlaps serve's start instead of following it.
        """
        info = self.start_sim()
        sim_config = Path(info["config"])
        serve_yaml = quiet_watchdog_config(
            sim_config, dry_run=dry_run, quiet=quiet_watchdog, shipped_defaults=shipped_defaults
        )
        serve_port = yaml.safe_load(serve_yaml.read_text(encoding="utf-8"))["web"]["port"]
        am_port = free_port()
        self.rules_file = rules_with_for(ALERTS, self.workdir / "alerts.yml", for_scale)
        prom_yml = prometheus_config(
            self.workdir / "prometheus.yml",
            scrape_target=f"{LOOPBACK}:{serve_port}",
            rules=self.rules_file,
            alertmanager=f"{LOOPBACK}:{am_port}",
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
        )
        self.start_prometheus(prom_yml, ready=False)
        am_yml = alertmanager_config(
            self.workdir / "alertmanager.yml",
            webhook_url=f"http://{LOOPBACK}:{serve_port}/api/v1/alertmanager",
            token_file=sim_config.parent / "webhook_token",
            group_wait=group_wait,
            group_interval=group_interval,
        )
        self.start_alertmanager(am_yml, port=am_port, ready=False)
        self.start_serve(serve_yaml)
        self._wait_ready(self.child("alertmanager"), self.alertmanager_url, 20.0)
        self._wait_ready(self.child("prometheus"), self.prometheus_url, 20.0)
        return self

    def wait(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """``wait_for``, with the end of every child's log in the error when it times out."""
        try:
            return wait_for(check, timeout, what)
        except TimeoutError as exc:
            logs = "\n".join(f"--- {c.name} ---\n{c.tail(15)}" for c in self.children if c.name != "sim")
            raise TimeoutError(f"{exc}\n{logs}") from None

    def child(self, name: str) -> Child:
        """The running child called ``name``."""
        for c in self.children:
            if c.name == name:
                return c
        raise KeyError(name)

    def close(self) -> None:
        """Stop every child, newest first (Prometheus before the things it scrapes)."""
        for c in reversed(self.children):
            c.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- asking the servers -----------------------------------------------------------------

    def inject(self, fault: str) -> None:
        """Inject a fault through the simulator's control API."""
        url = self.sim_info["control_url"].rstrip("/") + "/faults"
        body = json.dumps({"fault": fault}).encode()
        status, text = http(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"inject {fault}: HTTP {status}: {text[:300]!r}")

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant PromQL query; the result list (ValueError on a query error)."""
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        body = get_json(f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode(params)}")
        return list(body["data"]["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range PromQL query, as Grafana's time series panels send it."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        body = get_json(f"{self.prometheus_url}/api/v1/query_range?{urllib.parse.urlencode(params)}")
        return list(body["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's pending and firing alerts."""
        return list(get_json(f"{self.prometheus_url}/api/v1/alerts")["data"]["alerts"])

    def firing(self, alertname: str) -> dict[str, Any] | None:
        """The firing alert called ``alertname``, if any."""
        for a in self.alerts():
            if a["labels"].get("alertname") == alertname and a["state"] == "firing":
                return a
        return None

    def incidents(self) -> list[dict[str, Any]]:
        """serve's incidents, newest first."""
        return list(get_json(f"{self.serve_url}/api/v1/incidents")["incidents"])

    def metric(self, name: str, **labels: str) -> float:
        """The sum of serve's samples called ``name`` whose labels include ``labels``."""
        status, body = http(self.serve_url + "/metrics")
        if status != 200:
            raise ValueError(f"GET /metrics: HTTP {status}")
        total = 0.0
        for line in body.decode().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            found = dict(re.findall(r'(\w+)="([^"]*)"', head))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(value)
        return total
