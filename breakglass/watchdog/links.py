"""The SSH connections one target's probe rounds keep open between rounds.

A round makes exactly one new SSH login to the guest: its latency (TCP connect,
key exchange, authentication) is the reading an I/O stall shows first, so it is
measured afresh every round. The
guest readings then run over a kept connection to the guest, and the
Proxmox ``status`` over a kept connection to the host, both with SSH
keepalives. A kept connection that died (the guest rebooted, the host
restarted sshd) is replaced: on the guest side by the round's fresh login,
so the round still makes one handshake; on the host side by a new login.

Host keys are checked exactly as strictly as before: every new connection
verifies the server's key against the pinned known_hosts, and a kept
connection is dropped as soon as the known_hosts or key file changes, so the
next use verifies against the new pins.

``gate`` (a semaphore shared by every target) caps concurrent handshakes; a
login's latency and its timeout start once the gate is passed, so waiting in
the queue never reads as a slow guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncssh

from breakglass.config import ProbeSettings, SshEndpoint, Target
from breakglass.remote import (
    CommandResult,
    PveStatus,
    RemoteError,
    Verb,
    _connect,
    _endpoint_label,
    _run_on,
    credentials_stamp,
    status_from_dict,
    verb_json,
)

# Errors that mean the connection itself is gone, not that a command failed.
_DEAD = (asyncssh.Error, OSError, EOFError)


class _Dead(Exception):
    """The kept connection could not open a channel: it is gone."""


class Link:
    """One kept SSH connection to one endpoint, reopened when it fails."""

    def __init__(
        self,
        endpoint: SshEndpoint,
        settings: ProbeSettings,
        gate: asyncio.Semaphore | None,
        *,
        keepalive_seconds: float,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.gate = gate
        self.keepalive_seconds = keepalive_seconds
        self.handshakes = 0
        self._conn: asyncssh.SSHClientConnection | None = None
        self._stamp: object = None

    @property
    def is_open(self) -> bool:
        """True while a kept connection exists and has not closed."""
        return self._conn is not None and not self._conn.is_closed()

    async def handshake(self) -> tuple[asyncssh.SSHClientConnection, float]:
        """Open a new connection through the gate; return it and when its login started."""
        async with self.gate or contextlib.nullcontext():
            started = time.monotonic()
            stamp = credentials_stamp(self.endpoint)
            conn = await _connect(
                self.endpoint,
                self.settings.connect_timeout_seconds,
                keepalive_seconds=self.keepalive_seconds,
                light=True,
            )
        self.handshakes += 1
        conn.set_extra_info(breakglass_stamp=stamp)
        return conn, started

    def adopt(self, conn: asyncssh.SSHClientConnection) -> None:
        """Keep ``conn`` (a fresh, verified login) in place of the current connection."""
        self.drop()
        self._conn = conn
        self._stamp = conn.get_extra_info("breakglass_stamp")

    def drop(self) -> None:
        """Abort the kept connection, if any."""
        if self._conn is not None:
            self._conn.abort()
        self._conn = None

    def _usable(self) -> asyncssh.SSHClientConnection | None:
        if not self.is_open:
            self._conn = None
            return None
        # Re-pinned or rotated credentials: the kept connection was verified against the old ones.
        if credentials_stamp(self.endpoint, quiet=True) != self._stamp:
            self.drop()
            return None
        return self._conn

    async def run_kept(self, command: str, limit: float) -> CommandResult:
        """Run on the kept connection; _Dead when there is none or it is gone."""
        conn = self._usable()
        if conn is None:
            raise _Dead
        try:
            result = await _run_on(conn, command, limit, self.settings.output_cap_bytes)
        except _DEAD as exc:
            self.drop()
            raise _Dead from exc
        if result.timed_out:
            # A wedged peer may never answer on this connection again.
            self.drop()
        return result

    async def run(self, command: str, limit: float) -> CommandResult:
        """Run over the kept connection, opening (or reopening once) a connection if needed."""
        if self._usable() is not None:
            with contextlib.suppress(_Dead):
                return await self.run_kept(command, limit)
        conn, _ = await self.handshake()
        self.adopt(conn)
        try:
            return await self.run_kept(command, limit)
        except _Dead as exc:
            raise RemoteError(
                f"{_endpoint_label(self.endpoint)}: connection lost: {exc.__cause__}", kind="protocol"
            ) from None

    async def close(self) -> None:
        """Close the kept connection gracefully."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.connect_timeout_seconds):  # a cancel gets through
                    await conn.wait_closed()


class ProbeLinks:
    """A target's kept guest and host connections and its per-round fresh login."""

    def __init__(
        self, target: Target, settings: ProbeSettings, *, gate: asyncio.Semaphore | None = None
    ) -> None:
        keepalive = settings.keepalive_seconds
        self.settings = settings
        self.devvm = Link(target.devvm, settings, gate, keepalive_seconds=keepalive)
        self.pve = Link(target.pve, settings, gate, keepalive_seconds=keepalive)

    @property
    def handshakes(self) -> int:
        """SSH logins made so far, guest and host together."""
        return self.devvm.handshakes + self.pve.handshakes

    async def login(self) -> tuple[asyncssh.SSHClientConnection, float]:
        """A fresh login to the guest: the connection and the seconds connect + login took.

        No command runs on it: the readings that follow run a command on the guest
        anyway, and a guest that logs in but cannot start one fails them.
        """
        conn, started = await self.devvm.handshake()
        return conn, time.monotonic() - started

    async def readings(self, fresh: asyncssh.SSHClientConnection, command: str) -> CommandResult:
        """Run ``command`` on the kept guest connection; ``fresh`` replaces it when it is gone.

        ``fresh`` is closed unless it was kept, whatever happens (a round cut short included).
        """
        timeout = self.settings.command_timeout_seconds
        kept = False
        try:
            try:
                return await self.devvm.run_kept(command, timeout)
            except _Dead:
                pass
            self.devvm.adopt(fresh)
            kept = True
            try:
                return await self.devvm.run_kept(command, timeout)
            except _Dead as exc:
                raise RemoteError(
                    f"{_endpoint_label(self.devvm.endpoint)}: connection lost: {exc.__cause__}",
                    kind="protocol",
                ) from None
        finally:
            if not kept:
                fresh.close()

    async def status(self) -> PveStatus:
        """The Proxmox host's ``status`` over the kept host connection."""
        timeout = self.settings.status_timeout_seconds
        result = await self.pve.run(Verb.STATUS.value, timeout)
        return status_from_dict(verb_json(self.pve.endpoint, Verb.STATUS, result, timeout))

    async def close(self) -> None:
        """Close both kept connections."""
        await asyncio.gather(self.devvm.close(), self.pve.close())
