"""A simulated sshd on loopback that behaves like the simulated machine would.

``SshFront`` owns one listening port and asks a login policy what a new
connection should see right now:

- ``ok``: a real SSH server (asyncssh) on the accepted socket;
- ``slow``: the same, after a delay before the banner;
- ``hang``: the TCP connection is accepted and no banner is ever sent; the
  socket is held until the policy changes or the client goes away;
- ``refuse``: nothing listens on the port, so clients get ECONNREFUSED. The
  listener is closed and re-opened on the same port when the policy changes
  back (``reconcile()`` is called every few tens of milliseconds).

Accepting sockets ourselves and handing each one to ``asyncssh.run_server``
is what makes per-connection behaviour possible; asyncssh's own listener
would answer every connection the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import asyncssh

log = logging.getLogger(__name__)

Login = Literal["ok", "refuse", "hang", "slow"]
SHELL_MESSAGE = "This host serves single commands only (ssh HOST COMMAND); interactive shells are off.\r\n"
_HANG_POLL_SECONDS = 0.05


class ExecOutcome(Protocol):
    """What one exec request produced (``SimVM``'s ``ExecResult`` has this shape)."""

    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...
    @property
    def exit_status(self) -> int: ...


Runner = Callable[[str], Awaitable[ExecOutcome]]


class _ExecSession(asyncssh.SSHServerSession[str]):
    """One SSH channel: runs the exec request's command, or turns a shell away."""

    def __init__(self, run: Runner, name: str) -> None:
        self._run = run
        self._name = name
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._command: str | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: object, term_modes: object) -> bool:
        # Accepting the pty lets `ssh HOST` print our refusal instead of a pty error.
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def session_started(self) -> None:
        assert self._chan is not None
        if self._command is None:
            self._chan.write_stderr(SHELL_MESSAGE)
            self._chan.exit(1)
            return
        self._task = asyncio.get_running_loop().create_task(self._execute(self._chan, self._command))

    async def _execute(self, chan: asyncssh.SSHServerChannel[str], command: str) -> None:
        try:
            result = await self._run(command)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: command %r crashed the simulator", self._name, command)
            chan.write_stderr("simulator error\n")
            chan.exit(255)
            return
        if chan.is_closing():
            return
        if result.stdout:
            chan.write(result.stdout)
        if result.stderr:
            chan.write_stderr(result.stderr)
        chan.exit(result.exit_status)

    def eof_received(self) -> bool:
        # Keep the channel half-open: the command may still be answering.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # The client closed the channel or the connection: a hung command ends here.
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _SshServer(asyncssh.SSHServer):
    """Public-key-only login for one user and one key; tracks its connection."""

    def __init__(self, front: SshFront) -> None:
        self._front = front
        self._conn: asyncssh.SSHServerConnection | None = None
        self._in_handshake = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._front._conns.add(conn)
        self._front.handshakes += 1
        self._in_handshake = True
        self._front.gauge.begin()

    def auth_completed(self) -> None:
        self._handshake_over()

    def _handshake_over(self) -> None:
        if self._in_handshake:
            self._in_handshake = False
            self._front.gauge.end()

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_over()
        if self._conn is not None:
            self._front._conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self._front.username and key.public_data == self._front.client_key.public_data

    def session_requested(self) -> asyncssh.SSHServerSession[str]:
        return _ExecSession(self._front.run, self._front.name)


def _reset(sock: socket.socket) -> None:
    """Close with an RST, so the peer learns at once that nobody is there."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class HandshakeGauge:
    """Connections between the TCP accept and a completed login: now, and the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def begin(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def end(self) -> None:
        self.now -= 1


class SshFront:
    """One simulated sshd on ``host:port`` whose behaviour follows ``login()``."""

    def __init__(
        self,
        *,
        name: str,
        username: str,
        host_key: asyncssh.SSHKey,
        client_key: asyncssh.SSHKey,
        login: Callable[[], Login],
        run: Runner,
        slow_seconds: float,
        hang_seconds: float,
        host: str = "127.0.0.1",
        gauge: HandshakeGauge | None = None,
    ) -> None:
        self.name = name
        self.username = username
        self.client_key = client_key
        self.login = login
        self.run = run
        self._host_key = host_key
        self._slow_seconds = slow_seconds
        self._hang_seconds = hang_seconds
        self._host = host
        self._port = 0
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Accepted sockets nobody else owns yet; whatever is left here at stop() is closed.
        self._socks: set[socket.socket] = set()
        self._conns: set[asyncssh.SSHServerConnection] = set()
        # SSH connections this sshd has taken (the TCP accept got as far as asyncssh).
        self.handshakes = 0
        # Logins in flight, shared by the fronts of one simulated VM (guest and host).
        self.gauge = gauge or HandshakeGauge()
        self._options: asyncssh.SSHServerConnectionOptions | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        """The port this front listens on (or will listen on again after a refusal)."""
        return self._port

    @property
    def listening(self) -> bool:
        """Whether the port is open right now."""
        return self._listener is not None

    async def start(self, preferred_port: int | None = None) -> int:
        """Bind the port (``preferred_port`` if free, else a new one) and start serving."""
        # Building the options reads the keys once, not on every connection.
        self._options = await asyncssh.SSHServerConnectionOptions.construct(
            server_factory=lambda: _SshServer(self),
            server_host_keys=[self._host_key],
            login_timeout=30.0,
            allow_pty=True,
            x11_forwarding=False,
            agent_forwarding=False,
            allow_scp=False,
            rdns_lookup=False,
        )
        sock = None
        if preferred_port:
            try:
                sock = self._bind(preferred_port)
            except OSError:
                log.info("%s: port %d is taken, using a new one", self.name, preferred_port)
        if sock is None:
            sock = self._bind(0)
        self._port = int(sock.getsockname()[1])
        if self.login() == "refuse":
            sock.close()  # keep the port number; reconcile() opens it when logins may succeed
        else:
            self._listen_on(sock)
        return self._port

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Re-binding the same port right after closing it must not hit TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _listen_on(self, sock: socket.socket) -> None:
        # A reader callback rather than a sock_accept() task: cancelling a task can drop a
        # socket that was accepted in the same instant; a callback cannot.
        self._listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept_ready, sock)

    async def reconcile(self) -> None:
        """Open or close the port to match what a login would see now."""
        if self._stopped:
            return
        refuse = self.login() == "refuse"
        if refuse and self._listener is not None:
            self._close_listener()
        elif not refuse and self._listener is None:
            try:
                self._listen_on(self._bind(self._port))
            except OSError as exc:
                # Someone else took the port while it was closed; try again on the next tick.
                log.warning("%s: cannot re-listen on port %d: %s", self.name, self._port, exc)

    async def close_connections(self) -> None:
        """Drop every established SSH connection (the machine behind them went away)."""
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.wait_closed()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _accept_ready(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(64):  # drain a burst, but let other callbacks run
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("%s: accept failed: %s", self.name, exc)
                return
            sock.setblocking(False)
            self._socks.add(sock)
            task = loop.create_task(self._handle(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, sock: socket.socket) -> None:
        mode = self.login()
        if mode == "refuse":
            # Accepted in the instant before the listener closed: behave like a closed port.
            self._socks.discard(sock)
            _reset(sock)
            return
        if mode == "hang":
            await self._hold(sock)
            return
        if mode == "slow":
            await asyncio.sleep(self._slow_seconds)
        await self._serve(sock)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            # Returns once the client has logged in; the connection then runs on its own.
            await asyncssh.run_server(sock, options=self._options)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            # asyncssh aborted its transport, which closes the socket.
            log.debug("%s: login did not complete: %s", self.name, exc)
        # From here asyncssh owns the socket. (On cancellation it stays in _socks for stop().)
        self._socks.discard(sock)

    async def _hold(self, sock: socket.socket) -> None:
        """Keep a connection open without a banner until the hang ends or the client leaves."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._hang_seconds
        recv: asyncio.Future[bytes] = asyncio.ensure_future(loop.sock_recv(sock, 4096))
        try:
            while self.login() == "hang" and loop.time() < deadline:
                done, _ = await asyncio.wait({recv}, timeout=_HANG_POLL_SECONDS)
                if not done:
                    continue
                if recv.exception() is not None or not recv.result():
                    return  # the client gave up
                # The client's version string (or anything else) is read and ignored.
                recv = asyncio.ensure_future(loop.sock_recv(sock, 4096))
        finally:
            recv.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await recv
            # The hang is over but the banner was never sent: this connection is spoilt.
            self._socks.discard(sock)
            sock.close()

    async def stop(self) -> None:
        """Close the port, every pending login and every connection."""
        self._stopped = True
        self._close_listener()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.close_connections()
        # Sockets whose handler was cancelled before it could hand them on or close them.
        for sock in self._socks:
            sock.close()
        self._socks.clear()
