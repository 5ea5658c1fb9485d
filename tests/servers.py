"""Every server a test starts, stopped in one place, newest first, with its threads joined.

A test (or fixture) asks the ``servers`` fixture for what it needs; when the
test ends everything stops in the reverse order of starting, so a web server
(which uses the core) stops before the core, and the core (which talks to the
simulator) before the simulator. Each stop joins its threads; a thread a
server started that outlives the stop fails the test that started it.

Waitress, which some tests still use as "any other WSGI server", must not have
its sockets closed from another thread: its loop thread would be waiting on
them in ``select()``/``poll()`` and die with ``OSError: [Errno 9] Bad file
descriptor``. :class:`WaitressServer` has the loop close them itself.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import waitress
from flask import Flask
from harness import Running, start_core
from promstack import Stack
from suite_guard import process_wide_pools
from waitress import wasyncore
from waitress.channel import HTTPChannel

from breakglass.config import Config
from breakglass.sim.fake_messages import FakeMessagesServer, Script
from breakglass.sim.runner import SimHandle, SimThread
from breakglass.store import Store
from breakglass.web.server import WebServer

T = TypeVar("T")
STOP_SECONDS = 10.0


class WaitressServer:
    """``app`` under waitress on a loopback port, serving from a background thread until ``stop()``."""

    def __init__(self, app: Flask, *, threads: int = 4, **adjustments: Any) -> None:
        before = set(threading.enumerate())
        self._server: Any = waitress.create_server(
            app, host="127.0.0.1", port=0, threads=threads, **adjustments
        )
        # Its worker threads (started by create_server): waitress forgets each one just before
        # it ends, so the stop joins them itself.
        self._workers = [t for t in threading.enumerate() if t not in before]
        self.port = int(self._server.effective_port)
        self.url = f"http://127.0.0.1:{self.port}"
        name = f"waitress-loop-{self.port}"
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Close every socket from the loop's own thread, join the loop, then join the workers."""
        done = threading.Event()

        def close_everything() -> None:
            socket_map = self._server._map
            for obj in list(socket_map.values()):
                if isinstance(obj, HTTPChannel):
                    obj.handle_close()  # wakes a worker waiting to write; its next write fails
            wasyncore.close_all(socket_map)  # the map is empty: the loop ends
            done.set()

        if self._thread.is_alive():
            # Queue and write under the trigger's lock: were the loop (woken by a worker) to run
            # the thunk before our byte is written, the write would hit the pipe it just closed.
            trigger = self._server.trigger
            with trigger.lock:
                trigger.thunks.append(close_everything)
                trigger._physical_pull()
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"waitress's loop did not end within {timeout:g} s")
        if not done.is_set():  # the loop had ended already: nothing waits on the sockets
            close_everything()
        self._server.task_dispatcher.shutdown(timeout=timeout)
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._server.task_dispatcher.threads or any(t.is_alive() for t in self._workers):
            raise RuntimeError(f"waitress worker threads still running after {timeout:g} s")


class Servers:
    """Starts servers and remembers how to stop each one; also a context manager."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], object]]] = []
        self._sim: SimThread | None = None
        self._threads_before = set(threading.enumerate())

    def add(self, what: str, thing: T, stop: Callable[[], object]) -> T:
        """Register something already started; ``stop`` runs when the test ends."""
        self._stops.append((what, stop))
        return thing

    def web(self, app: Flask, *, threads: int = 4, store: Store | None = None) -> WebServer:
        """``app`` under breakglass's own server (what ``serve`` runs) on a loopback port.

        With ``store``, its commits wake the live pages, as ``serve`` wires them.
        """
        server = WebServer(app, host="127.0.0.1", port=0, threads=threads)
        if store is not None:
            store.on_commit(server.hub.changed)
        return self.run_web(server)

    def run_web(self, server: WebServer) -> WebServer:
        """Run an already built breakglass server from a background thread until the test ends."""
        thread = threading.Thread(target=server.run, name=f"web-loop-{server.effective_port}", daemon=True)
        thread.start()

        def stop() -> None:
            server.close()
            thread.join(STOP_SECONDS)
            if thread.is_alive():
                raise RuntimeError(f"the web server's loop did not end within {STOP_SECONDS:g} s")
            # Its pools are shut down without waiting: a request still in the app runs to its end.
            left = server.join(STOP_SECONDS)
            if left:
                raise RuntimeError(f"the web server's threads {left} still running after {STOP_SECONDS:g} s")

        return self.add(f"web server on port {server.effective_port}", server, stop)

    def waitress(self, app: Flask, *, threads: int = 4, **adjustments: Any) -> WaitressServer:
        """``app`` under waitress on a loopback port."""
        server = WaitressServer(app, threads=threads, **adjustments)
        return self.add(f"waitress on port {server.port}", server, server.stop)

    def sim(self, state_dir: Path, profile: str = "test", **kwargs: Any) -> SimHandle:
        """One more simulator; all of a test's simulators share one loop thread."""
        if self._sim is None:
            self._sim = self.add("simulator loop", SimThread().start(), self._stop_sim)
        return self._sim.serve(state_dir, profile, **kwargs)

    def _stop_sim(self) -> None:
        assert self._sim is not None
        self._sim.stop()
        self._sim = None

    def core(self, cfg: Config, store_path: Path | None = None) -> Running:
        """The real core (scheduler on) for ``cfg`` on its own loop thread, with its store."""
        running = start_core(cfg, store_path)
        return self.add(f"core for {running.target}", running, running.stop)

    def fake_messages(self, script: Script) -> FakeMessagesServer:
        """The scripted fake Messages API on a loopback port."""
        fake = FakeMessagesServer(script).start()
        return self.add(f"fake Messages API at {fake.base_url}", fake, fake.stop)

    def stack(self, workdir: Path) -> Stack:
        """A promstack ``Stack`` (simulator, serve, Prometheus, Alertmanager as children) in ``workdir``."""
        stack = Stack(workdir)
        return self.add(f"stack in {workdir}", stack, stack.close)

    def close(self, within: float = 5.0) -> None:
        """Stop everything, newest first; raise naming what failed to stop or left a thread running."""
        problems: list[str] = []
        while self._stops:
            what, stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the rest, then report
                problems.append(f"{what}: {''.join(traceback.format_exception(exc))}")
        deadline = time.monotonic() + within
        left = self._new_threads()
        while left and time.monotonic() < deadline:
            left[0].join(max(0.0, deadline - time.monotonic()))
            left = self._new_threads()
        problems += [f"thread {t.name!r} still running after every server stopped" for t in left]
        if problems:
            raise AssertionError("servers did not stop cleanly:\n" + "\n".join(problems))

    def _new_threads(self) -> list[threading.Thread]:
        # A library's process-wide pool (apprise's) may start during any test: the first one in
        # its process that sends, which under xdist depends on how the tests were shared out.
        allowed = self._threads_before | process_wide_pools()
        return [t for t in threading.enumerate() if t not in allowed and t.is_alive()]

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
