"""Run simulators: ``SimServer`` (async, one VM) and ``SimThread`` (a loop in a thread).

A ``SimServer`` is one simulated VM with its two SSH servers (the devvm and
its Proxmox host), its control API and its state folder. Many servers can
share one event loop, so a benchmark can run dozens of targets in one
process. ``SimThread`` runs that loop in a background thread for callers
that are not async themselves (tests, the demo) and hands out ``SimHandle``
objects whose methods are safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from breakglass.config import Config
from breakglass.sim import statedir
from breakglass.sim.control import ControlApi
from breakglass.sim.server import HandshakeGauge, SshFront
from breakglass.sim.vm import SimTiming, SimVM

log = logging.getLogger(__name__)

T = TypeVar("T")
RECONCILE_SECONDS = 0.05  # how soon a port opens or closes after the VM changes by itself (a boot ends)
_DOWN = frozenset({"stopped", "booting"})


class SimServer:
    """One simulated VM served over SSH on loopback, with its control API and state folder."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        profile: str = "test",
        *,
        target_name: str = "devvm",
        vmid: int = 102,
        timing: SimTiming | None = None,
        clock: Callable[[], float] = time.time,
        web_port: int | None = None,
        reconcile_seconds: float = RECONCILE_SECONDS,
    ) -> None:
        if profile not in statedir.PROFILES:
            raise ValueError(f"unknown profile {profile!r}; known: {', '.join(statedir.PROFILES)}")
        self.profile = profile
        self.target_name = target_name
        self.vmid = vmid
        self.paths = statedir.prepare_dir(state_dir)
        self.timing = timing or SimTiming.profile(profile)  # type: ignore[arg-type]
        self.vm = SimVM(self.timing, vmid=vmid, clock=clock)
        # A fleet benchmark runs hundreds of VMs that change only when told: it polls less often.
        self.reconcile_seconds = reconcile_seconds
        self.config: Config | None = None
        self.webhook_token = ""
        self.web_port = web_port or 0
        self._fixed_web_port = web_port is not None
        self._devvm: SshFront | None = None
        self.handshakes = HandshakeGauge()  # guest and host logins in flight, together
        self._pve: SshFront | None = None
        self._control: ControlApi | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def devvm_port(self) -> int:
        """The devvm's SSH port."""
        assert self._devvm is not None, "start() first"
        return self._devvm.port

    @property
    def pve_port(self) -> int:
        """The Proxmox host's SSH port."""
        assert self._pve is not None, "start() first"
        return self._pve.port

    @property
    def control_url(self) -> str:
        """The control API's base URL."""
        assert self._control is not None, "start() first"
        return self._control.url

    def info(self) -> dict[str, Any]:
        """What ``breakglass sim`` prints: ports, control URL and the files a client needs."""
        return {
            "devvm_port": self.devvm_port,
            "pve_port": self.pve_port,
            "control_url": self.control_url,
            "web_port": self.web_port,
            "config": str(self.paths.config),
            "client_key": str(self.paths.client_key),
            "known_hosts": str(self.paths.known_hosts),
            "webhook_token": self.webhook_token,
        }

    def target_entry(self) -> dict[str, Any]:
        """This VM as a config ``targets[]`` item, for configs that watch many simulators."""
        return statedir.target_entry(
            self.paths,
            name=self.target_name,
            vmid=self.vmid,
            devvm_port=self.devvm_port,
            pve_port=self.pve_port,
        )

    async def start(self) -> None:
        """Bind every port (the previous run's ones when free), write the state folder, serve."""
        loop = asyncio.get_running_loop()
        keys = await loop.run_in_executor(None, statedir.ensure_keys, self.paths)
        previous = statedir.load_ports(self.paths)
        self._devvm = SshFront(
            name=f"{self.target_name}/devvm",
            username=statedir.DEVVM_USER,
            host_key=keys.devvm_host,
            client_key=keys.client,
            login=self.vm.devvm_login,
            run=self.vm.devvm_exec,
            slow_seconds=self.timing.slow_latency_seconds,
            hang_seconds=self.timing.hang_seconds,
            gauge=self.handshakes,
        )
        self._pve = SshFront(
            name=f"{self.target_name}/pve",
            username=statedir.PVE_USER,
            host_key=keys.pve_host,
            client_key=keys.client,
            login=self.vm.pve_login,
            run=self.vm.pve_exec,
            slow_seconds=self.timing.slow_latency_seconds,
            hang_seconds=self.timing.hang_seconds,
            gauge=self.handshakes,
        )
        self._control = ControlApi(inject=self.inject, clear=self.clear, state=self.state)
        try:
            await self._devvm.start(previous.get("devvm_port"))
            await self._pve.start(previous.get("pve_port"))
            await self._control.start(previous.get("control_port"))
            web_port = self.web_port if self._fixed_web_port else statedir.free_port(previous.get("web_port"))
            self.web_port = web_port
            statedir.save_ports(
                self.paths,
                {
                    "devvm_port": self.devvm_port,
                    "pve_port": self.pve_port,
                    "control_port": self._control.port,
                    "web_port": web_port,
                },
            )
            self.config = await loop.run_in_executor(None, self._write_files, keys, web_port)
        except BaseException:
            await self.stop()
            raise
        self._ticker = loop.create_task(self._tick())
        log.info(
            "simulator %s: devvm port %d, pve port %d, control %s",
            self.target_name,
            self.devvm_port,
            self.pve_port,
            self.control_url,
        )

    def _write_files(self, keys: statedir.SimKeys, web_port: int) -> Config:
        statedir.write_known_hosts(self.paths, keys, self.devvm_port, self.pve_port)
        self.webhook_token = statedir.ensure_token(self.paths.webhook_token)
        document = statedir.config_document(
            self.paths,
            self.profile,
            targets=[self.target_entry()],
            web_port=web_port,
            control_url=self.control_url,
        )
        return statedir.write_config(self.paths, document)

    async def stop(self) -> None:
        """Close every port and connection; safe to call twice."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for part in (self._control, self._devvm, self._pve):
            if part is not None:
                await part.stop()

    async def reconcile(self) -> None:
        """Make the SSH ports match the VM now: refuse, listen, drop sessions of a VM that went down."""
        assert self._devvm is not None
        assert self._pve is not None
        if self.vm.state().get("vm") in _DOWN:
            # Sessions do not survive the machine they run on.
            await self._devvm.close_connections()
        if self._pve.login() != "ok":
            # A host that cannot be reached (refused or partitioned away) takes its
            # established connections with it: a watchdog's kept connection breaks too.
            await self._pve.close_connections()
        await self._devvm.reconcile()
        await self._pve.reconcile()

    async def _tick(self) -> None:
        # The VM changes by itself too (a boot finishes, a spike passes): follow it.
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("simulator %s: reconcile failed", self.target_name)
            await asyncio.sleep(self.reconcile_seconds)

    async def inject(self, fault: str) -> dict[str, Any]:
        """Inject ``fault`` (ValueError names the known ones) and return the new state."""
        self.vm.inject(fault)
        await self.reconcile()
        return self.state()

    async def clear(self) -> dict[str, Any]:
        """Clear every fault and return the new state."""
        self.vm.clear()
        await self.reconcile()
        return self.state()

    def state(self) -> dict[str, Any]:
        """The simulated VM's state (see ``SimVM.state``)."""
        return self.vm.state()


async def cancel_leftovers() -> None:
    """Cancel and await every other task on this loop (connection handlers, hung commands)."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class SimHandle:
    """A started ``SimServer`` seen from another thread: ports, paths and thread-safe calls."""

    def __init__(self, server: SimServer, thread: SimThread) -> None:
        self.server = server
        self._thread = thread
        self.devvm_port = server.devvm_port
        self.pve_port = server.pve_port
        self.control_url = server.control_url
        self.config_path = server.paths.config
        self.state_dir = server.paths.root
        self.info = server.info()
        assert server.config is not None
        self.config: Config = server.config

    @property
    def vm(self) -> SimVM:
        """The simulated VM. It lives on the simulator's loop: change it through ``call``."""
        return self.server.vm

    def inject(self, fault: str) -> dict[str, Any]:
        """Inject a fault; returns once the ports reflect it."""
        return self._thread.run(self.server.inject(fault))

    def clear(self) -> dict[str, Any]:
        """Clear every fault; returns once the ports reflect it."""
        return self._thread.run(self.server.clear())

    def state(self) -> dict[str, Any]:
        """The VM's state, read on the simulator's loop."""
        return self._thread.call(self.server.state)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the simulator's loop (e.g. to poke ``vm`` directly)."""
        return self._thread.call(fn, *args)


class SimThread:
    """An event loop in a daemon thread hosting any number of ``SimServer``s."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[SimServer] = []

    def __enter__(self) -> SimThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SimThread:
        """Start the loop thread; returns once the loop runs."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=main, name="breakglass-sim", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def serve(self, state_dir: str | os.PathLike[str], profile: str = "test", **kwargs: Any) -> SimHandle:
        """Start one more simulator on this loop; returns once its ports are bound."""
        self.start()

        async def make() -> SimServer:
            # Built on the loop so that anything the VM creates belongs to it.
            server = SimServer(state_dir, profile, **kwargs)
            await server.start()
            return server

        server = self.run(make())
        self._servers.append(server)
        return SimHandle(server, self)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run a coroutine on the loop and wait for its result."""
        assert self._loop is not None, "start() first"
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a plain function on the loop and wait for its result."""

        async def wrapper() -> T:
            return functools.partial(fn, *args)()

        return self.run(wrapper())

    def stop(self) -> None:
        """Stop every simulator, then the loop, and join the thread."""
        if self._loop is None or self._thread is None:
            return
        loop, thread = self._loop, self._thread

        async def shutdown() -> None:
            await asyncio.gather(*(s.stop() for s in self._servers), return_exceptions=True)
            await cancel_leftovers()
            await loop.shutdown_default_executor()

        try:
            self.run(shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()
            self._loop, self._thread, self._servers = None, None, []
