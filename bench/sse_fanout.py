"""Live-page fan-out: open SSE streams vs how fast /healthz, /metrics, the API and the webhook answer.

Two designs in one run, each serving the same Flask app over a real Store and
a real Core (no probe schedule, so only the web side works):

- ``waitress (baseline)``: the previous design. Each open stream holds one of
  ``web.threads`` (16) worker threads and polls the store every 0.5 s.
- ``breakglass``: ``breakglass serve``'s server. Streams live on the event
  loop, woken by the store's commits; requests run in the same 16 threads.

For each design: open N live pages (half incident pages on one active
incident, half the index), add a step to that incident every 0.5 s so the
streams carry events, then time sequential requests to each endpoint (1 s
client timeout for the baseline, which cannot answer; 5 s otherwise) and count
the incident streams that received the last step. breakglass is measured with
no page open too, right before, so the cost of the open pages is read on the
machine as it is at that moment. ``clients_cpu_ms`` is the CPU time the pages'
child process used while the requests ran: it shares the cores with the server.

    .venv/bin/python bench/sse_fanout.py [--streams 1000] [--baseline-streams 64] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import waitress

from breakglass.config import Config, SshEndpoint, Target, WebSettings
from breakglass.core import Core, CoreThread
from breakglass.metrics import Metrics
from breakglass.store import Store
from breakglass.web.app import create_app
from breakglass.web.server import WebServer

TOKEN = "bench-webhook-token"
STEP_EVENT = b"event: step"
STEP_EVERY = 0.5
THREADS = 16
WEBHOOK_BODY = json.dumps(
    {
        "version": "4",
        "groupKey": "bench",
        "status": "resolved",
        "receiver": "breakglass",
        "alerts": [
            {
                "status": "resolved",
                "labels": {"alertname": "BenchAlert", "target": "devvm"},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": "2026-01-01T00:01:00Z",
                "fingerprint": "bench",
            }
        ],
    }
).encode()


def _config(folder: Path) -> Config:
    (folder / "webhook_token").write_text(TOKEN + "\n")

    def ep(port: int) -> SshEndpoint:
        return SshEndpoint(
            host="127.0.0.1", port=port, user="ops", key_file=folder / "key", known_hosts=folder / "kh"
        )

    return Config(
        store_path=folder / "bench.db",
        targets=(Target(name="devvm", vmid=102, devvm=ep(1), pve=ep(2)),),
        web=WebSettings(threads=THREADS, webhook_token_file=folder / "webhook_token"),
    )


@dataclass
class Served:
    port: int
    store: Store
    incident: int
    threads: Callable[[], int]


@contextlib.contextmanager
def serve(design: str, folder: Path) -> Iterator[Served]:
    """One design serving the real app over a real Store and Core on an ephemeral port."""
    cfg = _config(folder)
    store = Store(cfg.store_path)
    core_thread = CoreThread(Core(cfg, store=store, metrics=Metrics()), schedule=False)
    handle = core_thread.start()
    app = create_app(cfg, store=store, metrics=Metrics(), core=handle)
    incident, _ = store.open_incident("devvm", "manual", "bench", "bench", {})
    server: Any
    if design == "breakglass":
        server = WebServer(app, host="127.0.0.1", port=0, threads=THREADS)
        store.on_commit(server.hub.changed)
    else:
        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=THREADS, connection_limit=5000)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield Served(server.effective_port, store, incident, threading.active_count)
    finally:
        server.close()
        thread.join(10)
        core_thread.stop()
        store.close()


def _clients(port: int, paths: list[str], pipe: Connection) -> None:
    """Child process: hold one SSE connection per path; answer "counts" with what each received."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    connected = [False] * len(paths)
    steps = [0] * len(paths)

    async def one(i: int, path: str) -> None:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
            await writer.drain()
            # Read in blocks and count, not line by line: these clients share the 2 cores with the
            # server, and a browser's parsing would not (it runs on the reader's machine).
            tail = b""
            try:
                while block := await reader.read(65536):
                    seen = tail + block
                    connected[i] = connected[i] or b"retry:" in seen
                    steps[i] += seen.count(STEP_EVENT) - tail.count(STEP_EVENT)
                    tail = seen[-2 * len(STEP_EVENT) :]
            finally:
                writer.close()

    async def main() -> None:
        tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(paths)]
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "stop":
                break
            pipe.send((sum(connected), list(steps), time.process_time()))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


class Streams:
    """N open SSE clients in a child process (as browsers are), counting what each received."""

    def __init__(self, port: int, paths: list[str]) -> None:
        self._pipe, child = multiprocessing.get_context("spawn").Pipe()
        self._proc = multiprocessing.get_context("spawn").Process(
            target=_clients, args=(port, paths, child), daemon=True
        )
        self._proc.start()
        self.cpu_seconds = 0.0  # the clients' CPU time so far, as of the last counts()

    def counts(self) -> tuple[int, list[int]]:
        """(streams connected, step events received per stream)."""
        self._pipe.send("counts")
        connected, steps, self.cpu_seconds = self._pipe.recv()
        return int(connected), list(steps)

    def close(self) -> None:
        self._pipe.send("stop")
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)


def timed(port: int, method: str, path: str, timeout: float) -> float | None:
    """Seconds for one request to answer in full, or None when it did not within ``timeout``."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        conn.request(method, path, body=WEBHOOK_BODY if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status >= 500:
            return None
    except OSError:
        return None
    finally:
        conn.close()
    return time.perf_counter() - started


ENDPOINTS = (
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/status"),
    ("POST", "/api/v1/alertmanager"),
)


def measure(design: str, n: int, requests: int, folder: Path) -> list[dict[str, Any]]:
    timeout = 1.0 if design != "breakglass" else 5.0
    rows = []
    with serve(design, folder) as s:
        half = n // 2
        paths = [f"/incidents/{s.incident}/events"] * half + ["/events"] * (n - half)
        streams = Streams(s.port, paths)
        try:
            deadline = time.monotonic() + (30 if design == "breakglass" else 3)
            while streams.counts()[0] < n and time.monotonic() < deadline:
                time.sleep(0.2)
            stop = threading.Event()

            def steps() -> None:
                while not stop.wait(STEP_EVERY):
                    s.store.add_step(s.incident, "note", {"text": "bench step"})

            writer = threading.Thread(target=steps, daemon=True)
            writer.start()
            streams.counts()
            clients_cpu = streams.cpu_seconds
            try:
                for method, path in ENDPOINTS:
                    times = [timed(s.port, method, path, timeout) for _ in range(requests)]
                    ok = sorted(t for t in times if t is not None)
                    rows.append(
                        {
                            "design": design,
                            "streams": n,
                            "endpoint": f"{method} {path}",
                            "answered": f"{len(ok)}/{requests}",
                            "p50_ms": statistics.median(ok) * 1000 if ok else None,
                            "p95_ms": ok[min(len(ok) - 1, int(len(ok) * 0.95))] * 1000 if ok else None,
                            "p99_ms": ok[min(len(ok) - 1, int(len(ok) * 0.99))] * 1000 if ok else None,
                            "threads": s.threads(),
                        }
                    )
            finally:
                stop.set()
                writer.join(5)
            streams.counts()
            clients_cpu = streams.cpu_seconds - clients_cpu
            # The last step: how many incident pages show it within 10 s.
            connected, before = streams.counts()
            s.store.add_step(s.incident, "note", {"text": "last step"})
            wait_until = time.monotonic() + (10 if design == "breakglass" else 2)
            fresh = 0
            while time.monotonic() < wait_until:
                _, after = streams.counts()
                fresh = sum(1 for i in range(half) if after[i] > before[i])
                if fresh >= half:
                    break
                time.sleep(0.2)
            for row in rows:
                row["connected"] = connected
                row["delivered"] = f"{fresh}/{half}"
                row["clients_cpu_ms"] = round(clients_cpu * 1000)
        finally:
            streams.close()
    return rows


def _fmt(v: Any) -> str:
    return "timeout" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--baseline-streams", type=int, default=64)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--step-every", type=float, default=0.5, help="seconds between incident steps")
    args = p.parse_args()
    global STEP_EVERY
    STEP_EVERY = args.step_every
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * args.streams + 1024)), hard))
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="breakglass-bench-") as tmp:
        base = Path(tmp) / "baseline"
        base.mkdir()
        rows += measure("waitress (baseline)", args.baseline_streams, 5, base)
        # The same server with no page open: what the open pages cost, on the machine as it is now.
        for n in (0, args.streams):
            new = Path(tmp) / f"breakglass-{n}"
            new.mkdir()
            rows += measure("breakglass", n, args.requests, new)
    cols = [
        "design",
        "streams",
        "connected",
        "delivered",
        "endpoint",
        "answered",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "threads",
        "clients_cpu_ms",
    ]
    print(
        f"machine: {os.cpu_count()} cores, load average {load_before:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end (shared)"
    )
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols))


if __name__ == "__main__":
    main()
