"""Webhook throughput: Alertmanager's copies of one alert posted to a running ``breakglass serve``.

One simulated VM (in this process), stopped, and ``serve`` as a child process
in dry run with the simulator's config, so the incident stays open.
``--clients`` threads, each with its own keep-alive HTTP connection, post the
same firing alert (a version 4 notification) ``--requests`` times in all: the
first attaches to (or opens) the incident, every later one is a duplicate, as
from an HA pair of Alertmanagers retrying. The
table gives requests per second, latency percentiles, the serve process's
CPU time per request (utime + stime from /proc: what the rate would be on an
idle core, whatever else the machine runs) and how many incidents exist
afterwards (one is right). A baseline of ``GET /healthz`` (no store, no
core) through the same server and clients is measured in the same run.

``--baseline REV`` measures the serve of an older git revision (via ``git
archive``) the same way in the same run; ``--rounds N`` repeats both,
alternating which goes first.

    .venv/bin/python bench/webhook.py [--requests 5000] [--clients 16] [--baseline 9e34c75] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from simchild import proc_cpu, source_tree, start_serve

from breakglass.sim.statedir import free_port

ALERT = {
    "status": "firing",
    "labels": {"alertname": "BreakglassSshFailing", "target": "devvm", "component": "devvm"},
    "annotations": {"summary": "devvm: SSH login failing"},
    "startsAt": "2026-11-28T10:00:00Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus:9090/graph",
    "fingerprint": "c0ffee0123456789",
}
NOTIFICATION = {
    "version": "4",
    "groupKey": '{}:{alertname="BreakglassSshFailing"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "breakglass",
    "groupLabels": {"alertname": "BreakglassSshFailing"},
    "commonLabels": {"alertname": "BreakglassSshFailing"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [ALERT],
}


def hammer(
    port: int, method: str, path: str, body: bytes, headers: dict[str, str], total: int, clients: int
) -> tuple[float, list[float], int]:
    """``total`` requests over ``clients`` keep-alive connections: wall seconds, latencies, non-2xx."""
    latencies: list[float] = []
    bad = 0
    lock = threading.Lock()
    per = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]

    def client(n: int) -> None:
        nonlocal bad
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        errors = 0
        for _ in range(n):
            started = time.perf_counter()
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - started)
            errors += not 200 <= resp.status < 300
        conn.close()
        with lock:
            latencies.extend(mine)
            bad += errors

    threads = [threading.Thread(target=client, args=(n,)) for n in per]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, bad


def measured(
    pid: int,
    port: int,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    total: int,
    clients: int,
) -> tuple[float, list[float], int, float]:
    """``hammer`` plus the serve process's CPU seconds over it."""
    cpu = proc_cpu(pid)
    wall, lat, bad = hammer(port, method, path, body, headers, total, clients)
    return wall, lat, bad, proc_cpu(pid) - cpu


def _row(label: str, wall: float, lat: list[float], bad: int, cpu: float) -> str:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return (
        f"{label:28} {len(lat) / wall:>9.0f} {statistics.median(lat) * 1000:>8.1f} "
        f"{p99 * 1000:>8.1f} {lat[-1] * 1000:>8.1f} {bad:>7} {cpu / len(lat) * 1e6:>11.0f}"
    )


def run(
    code: str, tmp: Path, sim_config: Path, requests: int, clients: int
) -> tuple[tuple[float, list[float], int, float], tuple[float, list[float], int, float], int]:
    """One serve of ``code`` (HEAD or a git revision): healthz, then the webhook; and the incidents."""
    folder = tmp / f"serve-{code}"
    folder.mkdir(exist_ok=True)
    doc = yaml.safe_load(sim_config.read_text())
    port = free_port()
    doc["web"] = {**doc.get("web", {}), "port": port, "threads": max(16, clients)}
    doc["budget"] = {**doc.get("budget", {}), "dry_run": True}
    doc["log"] = {"format": "json", "level": "warning"}
    doc["store_path"] = str(folder / "breakglass.db")
    env = dict(os.environ)
    if code != "HEAD":
        env["PYTHONPATH"] = str(source_tree(code, tmp))
        # Settings newer than the baseline (its config refuses unknown keys); defaults otherwise.
        doc.get("incidents", {}).pop("lease_seconds", None)
    cfg = folder / "serve.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    token = Path(doc["web"]["webhook_token_file"]).read_text().strip()
    proc = start_serve(cfg, folder / "serve.log", env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print((folder / "serve.log").read_text()[-2000:], file=sys.stderr)
                    raise SystemExit(1) from None
                time.sleep(0.2)
        body = json.dumps(NOTIFICATION).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        hammer(port, "POST", "/api/v1/alertmanager", body, headers, clients, clients)  # warm-up
        base = measured(proc.pid, port, "GET", "/healthz", b"", {}, requests, clients)
        hook = measured(proc.pid, port, "POST", "/api/v1/alertmanager", body, headers, requests, clients)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/incidents", timeout=10) as resp:
            incidents: list[dict[str, Any]] = json.loads(resp.read())["incidents"]
    finally:
        proc.terminate()
        proc.wait(30)
    return base, hook, len(incidents)


def main(argv: list[str] | None = None) -> int:
    """Start a simulator and serve (and the baseline's), measure both request kinds, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--baseline", help="also measure the serve of this git revision (e.g. 9e34c75)")
    ap.add_argument("--rounds", type=int, default=1, help="measure each serve this many times, alternating")
    args = ap.parse_args(argv)
    from breakglass.sim.runner import SimThread

    codes = ["HEAD", *([args.baseline] if args.baseline else [])]
    rows: list[tuple[str, str, tuple[float, list[float], int, float]]] = []
    incidents: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bg-webhook-") as name, SimThread() as thread:
        tmp = Path(name)
        sim = thread.serve(tmp / "sim", "test")
        # The VM is down, as when Alertmanager fires: the incident stays open (dry run sends
        # nothing), so every later copy of the alert is a duplicate of it.
        sim.inject("vm_stopped")
        for n in range(args.rounds):
            # Alternate which serve goes first, so neither always meets the same load.
            for code in codes if n % 2 == 0 else codes[::-1]:
                base, hook, incidents[code] = run(code, tmp, sim.config_path, args.requests, args.clients)
                rows.append((code, "GET /healthz (baseline)", base))
                rows.append((code, "POST webhook, same alert", hook))
    print(
        f"{args.requests} requests over {args.clients} keep-alive clients; serve in a child process; "
        "2-core machine shared with other work"
    )
    print(
        f"{'code':8} {'request':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'non-2xx':>7} "
        f"{'serve CPU us/req':>11}"
    )
    for code, label, row in rows:
        print(f"{code:8} " + _row(label, *row))
    for code, count in incidents.items():
        print(f"{code}: incidents afterwards: {count} (one is right)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
