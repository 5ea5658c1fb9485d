"""Webhook throughput: Alertmanager's copies of one alert posted to a running ``breakglass serve``.

One simulated VM (in this process), stopped, and ``serve`` as a child process
in dry run with the simulator's config, so the incident stays open.
``--clients`` threads, each with its own keep-alive HTTP connection, post the
same firing alert (a version 4 notification) ``--requests`` times in all: the
first attaches to (or opens) the incident, every later one is a duplicate, as
from an HA pair of Alertmanagers retrying. The
table gives requests per second, latency percentiles and how many incidents
exist afterwards (one is right). A baseline of ``GET /healthz`` (no store, no
core) through the same server and clients is measured in the same run.

    .venv/bin/python bench/webhook.py [--requests 5000] [--clients 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from simchild import start_serve

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _row(label: str, wall: float, lat: list[float], bad: int) -> str:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return (
        f"{label:28} {len(lat) / wall:>9.0f} {statistics.median(lat) * 1000:>8.1f} "
        f"{p99 * 1000:>8.1f} {lat[-1] * 1000:>8.1f} {bad:>6}"
    )


def main(argv: list[str] | None = None) -> int:
    """Start a simulator and serve, measure both request kinds, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args(argv)
    from breakglass.sim.runner import SimThread

    with tempfile.TemporaryDirectory(prefix="bg-webhook-") as name, SimThread() as thread:
        tmp = Path(name)
        sim = thread.serve(tmp / "sim", "test")
        doc = yaml.safe_load(sim.config_path.read_text())
        port = _free_port()
        doc["web"] = {**doc.get("web", {}), "port": port, "threads": max(16, args.clients)}
        doc["budget"] = {**doc.get("budget", {}), "dry_run": True}
        doc["log"] = {"format": "json", "level": "warning"}
        doc["store_path"] = str(tmp / "breakglass.db")
        cfg = tmp / "serve.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        token = Path(doc["web"]["webhook_token_file"]).read_text().strip()
        proc = start_serve(cfg, tmp / "serve.log")
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print((tmp / "serve.log").read_text()[-2000:], file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            # The VM is down, as when Alertmanager fires: the incident stays open (dry run sends
            # nothing), so every later copy of the alert is a duplicate of it.
            sim.inject("vm_stopped")
            body = json.dumps(NOTIFICATION).encode()
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            hammer(port, "POST", "/api/v1/alertmanager", body, headers, args.clients, args.clients)  # warm-up
            base = hammer(port, "GET", "/healthz", b"", {}, args.requests, args.clients)
            hook = hammer(port, "POST", "/api/v1/alertmanager", body, headers, args.requests, args.clients)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/incidents", timeout=10) as resp:
                incidents: list[dict[str, Any]] = json.loads(resp.read())["incidents"]
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"{args.requests} requests over {args.clients} keep-alive clients; serve in a child process; "
        "2-core machine shared with other work"
    )
    print(f"{'request':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'non-2xx':>6}")
    print(_row("GET /healthz (baseline)", *base))
    print(_row("POST webhook, same alert", *hook))
    print(f"incidents afterwards: {len(incidents)} (one is right)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
