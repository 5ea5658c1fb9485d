"""The SSH seam: every byte to a guest or a Proxmox host goes through here.

``DevvmShell`` runs commands in the guest; ``PveClient`` sends one of six bare
verbs to the Proxmox host's forced command and nothing else. Both pin host
keys from the configured known_hosts file (checking is never disabled), bound
the connection by a connect timeout, bound every command by a command timeout
(a hung command becomes a timed-out result and its connection is closed) and
cap the output they keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import asyncssh
import asyncssh.logging
import asyncssh.packet

from breakglass.config import SshEndpoint

DEFAULT_OUTPUT_CAP = 65536



def _skip_unwanted_asyncssh_log_lines() -> None:
    """Make asyncssh ask its logger whether a line is wanted before it formats the line.

    asyncssh formats the arguments of every log line, and a summary of every packet sent
    or received, before the logger says the line is dropped (they are at DEBUG and INFO,
    which breakglass keeps off for asyncssh): about a twentieth of a probe round's client
    CPU for nothing. The check is moved first; a line that is wanted is written exactly
    as before. Both methods are asyncssh internals: their signatures are checked, and
    anything unexpected is left alone.
    """
    ssh_logger = asyncssh.logging.SSHLogger
    packets = asyncssh.packet.SSHPacketLogger
    log, log_packet = ssh_logger.log, packets._log_packet
    if getattr(log, "_checks_level_first", False):
        return
    expected = (
        (log, ["self", "level", "msg", "args", "kwargs"]),
        (log_packet, ["self", "msg", "pkttype", "pktid", "packet", "note"]),
    )
    if any(list(inspect.signature(fn).parameters) != names for fn, names in expected):
        return

    def checked_log(self: Any, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            log(self, level, msg, *args, **kwargs)

    def checked_log_packet(self: Any, msg: str, pkttype: int, pktid: Any, packet: Any, note: str) -> None:
        logger = self.logger
        if logger._debug_level >= 3 and logger.isEnabledFor(logging.DEBUG):
            log_packet(self, msg, pkttype, pktid, packet, note)

    checked_log._checks_level_first = True  # type: ignore[attr-defined]
    setattr(ssh_logger, "log", checked_log)  # noqa: B010 - a method replaced on the class
    setattr(packets, "_log_packet", checked_log_packet)  # noqa: B010


_skip_unwanted_asyncssh_log_lines()


def _log_in_with_the_key_at_once() -> None:
    """Make asyncssh's login send one signed public-key request, as RFC 4252 allows.

    asyncssh first sends a ``none`` request to learn the server's methods, then asks
    whether the key would be accepted (an unsigned request, answered ``PK_OK``), and
    signs only then: two round trips, four packets and two tasks more on every login,
    and a probe round logs in once per target. breakglass offers one key and allows
    ``publickey`` only, so neither question tells it anything; a key or method the
    server refuses is refused as before (``USERAUTH_FAILURE``: permission denied).
    A client allowing other methods still sends ``none`` first. Both methods replaced are
    asyncssh internals: they are checked, and anything unexpected is left alone.
    """
    auth = getattr(asyncssh, "auth", None)
    null, key = (getattr(auth, name, None) for name in ("_ClientNullAuth", "_ClientPublicKeyAuth"))
    null_start, key_start = (getattr(cls, "_start", None) for cls in (null, key))
    if null_start is None or key_start is None or getattr(null_start, "_key_at_once", False):
        return
    if any(list(inspect.signature(fn).parameters) != ["self"] for fn in (null_start, key_start)):
        return
    if not hasattr(key, "_send_signed_request"):
        return

    async def straight_to_the_key(self: Any) -> None:
        conn = self._conn
        if list(getattr(conn, "_preferred_auth", None) or ()) != [b"publickey"]:
            await null_start(self)
            return
        conn._auth_methods = [b"publickey"]
        conn.try_next_auth()  # this request is replaced by the key's

    async def signed_at_once(self: Any) -> None:
        self._keypair = await self._conn.public_key_auth_requested()
        if self._keypair is None:
            self._conn.try_next_auth(next_method=True)
            return
        await self._send_signed_request()

    straight_to_the_key._key_at_once = True  # type: ignore[attr-defined]
    setattr(null, "_start", straight_to_the_key)  # noqa: B010 - methods replaced on the classes
    setattr(key, "_start", signed_at_once)  # noqa: B010


_log_in_with_the_key_at_once()


class Verb(StrEnum):
    """The only commands the Proxmox host's forced command accepts."""

    STATUS = "status"
    FORENSICS = "forensics"
    RESET = "reset"
    STOP = "stop"
    START = "start"
    CYCLE = "cycle"


POWER_VERBS: frozenset[Verb] = frozenset({Verb.RESET, Verb.STOP, Verb.START, Verb.CYCLE})

# Whether retrying can help is decided where the error is raised.
_PERMANENT_KINDS = frozenset({"host_key", "auth"})


class RemoteError(Exception):
    """An SSH connection, login or output problem; ``permanent`` says retrying will not help."""

    def __init__(self, message: str, *, kind: str, permanent: bool | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.permanent = kind in _PERMANENT_KINDS if permanent is None else permanent

    @property
    def short(self) -> str:
        """A few words fit for a table cell or a reading: 'refused', 'timeout', ..."""
        if self.kind in ("refused", "timeout"):
            return self.kind
        return f"{self.kind}: {self}"


class HostKeyError(RemoteError):
    """The server's host key is unknown or is not the pinned one."""

    def __init__(self, message: str, *, where: str = "", changed: bool = True) -> None:
        super().__init__(message, kind="host_key", permanent=True)
        self.where = where
        self.changed = changed

    @property
    def short(self) -> str:
        """Which host, and whether its key changed or was never pinned."""
        what = "changed, not the pinned key" if self.changed else "unknown, none pinned"
        return f"host key mismatch: {self.where} key {what}"


@dataclass(frozen=True)
class CommandResult:
    """What one command did: exit status (None when timed out) and capped output."""

    command: str
    exit_status: int | None
    stdout: str
    stderr: str
    duration_seconds: float
    timed_out: bool = False
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the command finished in time with exit status 0."""
        return self.exit_status == 0 and not self.timed_out


def truncation_marker(dropped: int) -> str:
    """The line appended to output that was cut at the cap."""
    return f"\n[... output truncated: {dropped} bytes dropped ...]"


class _CappedBuffer:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        # A multibyte character cut at the cap decodes to U+FFFD rather than failing.
        out = self.kept.decode("utf-8", errors="replace")
        return out + truncation_marker(self.dropped) if self.dropped else out


def cap_output(data: bytes, cap: int) -> tuple[str, bool]:
    """Return ``data`` decoded and cut to ``cap`` bytes with a marker, and whether it was cut."""
    buf = _CappedBuffer(cap)
    buf.add(data)
    return buf.text(), buf.dropped > 0


def _endpoint_label(ep: SshEndpoint) -> str:
    return f"{ep.user}@{ep.host}:{ep.port}"


def _host_key_error(ep: SshEndpoint, exc: Exception) -> HostKeyError:
    """Say whether the key is unknown (nothing pinned) or changed (not the pinned key)."""
    try:
        trusted, *_ = asyncssh.match_known_hosts(str(ep.known_hosts), ep.host, ep.host, ep.port)
    except (OSError, ValueError):
        trusted = []
    where = f"{ep.host} port {ep.port}"
    if trusted:
        msg = (
            f"host key of {where} is not the pinned key in {ep.known_hosts} "
            "(the host key changed); refusing to connect"
        )
    else:
        msg = (
            f"host key of {where} is unknown: no key pinned for it in {ep.known_hosts}; "
            "refusing to connect"
        )
    return HostKeyError(f"{msg} ({exc})", where=f"{ep.host}:{ep.port}", changed=bool(trusted))


# Probe rounds log in to every target every round: curve25519 key exchange and AES-GCM
# cost about a third less client CPU than asyncssh's defaults (ML-KEM hybrid exchange,
# ChaCha20-Poly1305) and are what OpenSSH itself used by default until 9.0. Agent and
# power-verb connections keep asyncssh's defaults.
PROBE_KEX_ALGS = ("curve25519-sha256", "curve25519-sha256@libssh.org", "mlkem768x25519-sha256")
PROBE_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")


@dataclass(frozen=True)
class _Credentials:
    """An endpoint's pinned host keys and client key, parsed once, with the files' identity.

    ``options`` holds the connection options built from them (see ``_client_options``):
    they go with these parsed files, so re-read files start with none.
    """

    stamp: tuple[tuple[int, int, int], ...]
    known_hosts: asyncssh.SSHKnownHosts
    client_keys: Sequence[asyncssh.SSHKeyPair]
    options: dict[tuple[Any, ...], asyncssh.SSHClientConnectionOptions] = field(
        default_factory=dict, compare=False, repr=False
    )


# Parsed credentials per (key file, known_hosts file). A connect only stats the two
# files; an edited, replaced or rotated file (new inode, mtime or size) is read again,
# so a re-pinned or revoked host key takes effect on the next connection.
_CREDENTIALS: dict[tuple[Path, Path], _Credentials] = {}


# The files are looked at (stat) at most this often per endpoint: a fleet's rounds check
# them several times a second, and a changed pin takes effect within this delay.
STAMP_MAX_AGE_SECONDS = 1.0
_STAMPS: dict[tuple[Path, Path], tuple[float, tuple[tuple[int, int, int], ...]]] = {}


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def credentials_stamp(ep: SshEndpoint, *, quiet: bool = False) -> tuple[tuple[int, int, int], ...] | None:
    """The identity (inode, mtime, size) of the endpoint's key and known_hosts files.

    RemoteError(kind="auth") when one cannot be read, or None with ``quiet``.
    """
    key = (ep.key_file, ep.known_hosts)
    now = time.monotonic()
    seen = _STAMPS.get(key)
    if seen is not None and now - seen[0] < STAMP_MAX_AGE_SECONDS:
        return seen[1]
    try:
        stamp = (_stamp(ep.key_file), _stamp(ep.known_hosts))
        _STAMPS[key] = (now, stamp)
        return stamp
    except OSError as exc:
        _STAMPS.pop(key, None)
        if quiet:
            return None
        raise RemoteError(
            f"{_endpoint_label(ep)}: cannot read key or known_hosts: {exc}", kind="auth"
        ) from None


def credentials(ep: SshEndpoint) -> tuple[asyncssh.SSHKnownHosts, Sequence[asyncssh.SSHKeyPair]]:
    """The endpoint's known_hosts and client key, parsed once and re-read when a file changes."""
    creds = _credentials(ep)
    return creds.known_hosts, creds.client_keys


def _credentials(ep: SshEndpoint) -> _Credentials:
    label = _endpoint_label(ep)
    stamp = credentials_stamp(ep)
    assert stamp is not None
    key = (ep.key_file, ep.known_hosts)
    cached = _CREDENTIALS.get(key)
    if cached is not None and cached.stamp == stamp:
        return cached
    try:
        known = asyncssh.read_known_hosts(str(ep.known_hosts))
    except (OSError, ValueError) as exc:
        raise RemoteError(f"{label}: cannot read known_hosts {ep.known_hosts}: {exc}", kind="auth") from None
    try:
        keys = asyncssh.load_keypairs([str(ep.key_file)])
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise RemoteError(f"{label}: cannot load key {ep.key_file}: {exc}", kind="auth") from None
    creds = _CREDENTIALS[key] = _Credentials(stamp, known, keys)
    return creds


# asyncssh.connect() builds its options in a worker thread on every call (a thread
# hand-off and a GIL round trip, about a fifth of a probe login's client CPU), and
# building them is most of the rest of a connect's set-up (a user name look-up, stringprep,
# algorithm lists). Here they are built once per endpoint and set of parsed credentials
# (``_client_options``) and handed, as a copy, to asyncssh's own connect step. That step is
# internal: its signature is checked once, and anything unexpected uses the public call.
_ASYNCSSH_CONNECT: Any = getattr(asyncssh.connection, "_connect", None)
_FAST_CONNECT = _ASYNCSSH_CONNECT is not None and list(
    inspect.signature(_ASYNCSSH_CONNECT).parameters
) == ["options", "config", "loop", "flags", "sock", "conn_factory", "msg"]


def _client_options(
    ep: SshEndpoint, creds: _Credentials, connect_timeout: float, keepalive_seconds: float, light: bool
) -> asyncssh.SSHClientConnectionOptions:
    """A private copy of the connect options for ``ep``, built once per endpoint and settings.

    The copy matters: asyncssh's connect step keeps the connection's login waiter on the
    options object, so two connections must never share one. Nothing else on it changes.
    """
    key = (ep.host, ep.port, ep.user, connect_timeout, keepalive_seconds, light)
    options = creds.options.get(key)
    if options is None:
        options = asyncssh.SSHClientConnectionOptions(
            None,
            config=None,
            host=ep.host,
            port=ep.port,
            tunnel=(),
            family=(),
            local_addr=(),
            **_connect_kwargs(ep, creds, connect_timeout, keepalive_seconds, light),
        )
        creds.options[key] = options
    return copy.copy(options)


async def _open(
    ep: SshEndpoint, creds: _Credentials, connect_timeout: float, keepalive_seconds: float, light: bool
) -> asyncssh.SSHClientConnection:
    """``asyncssh.connect(ep.host, port=ep.port, config=None, **options)``, without the worker thread."""
    if not _FAST_CONNECT:
        kwargs = _connect_kwargs(ep, creds, connect_timeout, keepalive_seconds, light)
        return await asyncssh.connect(ep.host, port=ep.port, config=None, **kwargs)
    loop = asyncio.get_running_loop()
    options = _client_options(ep, creds, connect_timeout, keepalive_seconds, light)

    def factory() -> asyncssh.SSHClientConnection:
        return asyncssh.SSHClientConnection(loop, options, wait="auth")

    # Not wait_for: on Python 3.11 it returns the connection when a cancel lands as the login
    # ends, and a stopped round or incident would go on with it.
    async with asyncio.timeout(options.connect_timeout):
        conn: asyncssh.SSHClientConnection = await _ASYNCSSH_CONNECT(
            options, None, loop, 0, None, factory, "Opening SSH connection to"
        )
    return conn


def host_key_algs(known: asyncssh.SSHKnownHosts, ep: SshEndpoint) -> list[str] | None:
    """The host key algorithms to offer: the pinned keys' first, then the usual ones.

    Offering only the pinned algorithms (asyncssh's default) turns a host whose key
    changed to another algorithm into a failed key exchange, which the server may end
    before the client reads why (a lost connection, not a host key error). Offering the
    rest after them changes nothing about trust: whatever key the host presents must
    still be a pinned one. None (asyncssh's default) when no key but a CA is pinned.
    """
    trusted = known.match(ep.host, ep.host, ep.port if ep.port != 22 else None)[0]
    if not trusted:
        return None
    pinned = [alg.decode() for key in trusted for alg in key.sig_algorithms]
    usual = [alg.decode() for alg in asyncssh.public_key.get_default_public_key_algs()]
    return list(dict.fromkeys(pinned + usual))


def _connect_kwargs(
    ep: SshEndpoint, creds: _Credentials, connect_timeout: float, keepalive_seconds: float, light: bool
) -> dict[str, Any]:
    """The asyncssh connect options for ``ep``: its pinned keys and key, nothing from outside."""
    algs: dict[str, Any] = {"kex_algs": PROBE_KEX_ALGS, "encryption_algs": PROBE_CIPHERS} if light else {}
    offered = host_key_algs(creds.known_hosts, ep)
    if offered is not None:
        algs["server_host_key_algs"] = offered
    # Every default that could reach outside the config is switched off:
    # no ~/.ssh/config, no agent, no default keys, no password prompts.
    # The pinned keys are an already parsed known_hosts: checking is the same.
    return {
        "username": ep.user,
        "known_hosts": creds.known_hosts,
        "client_keys": creds.client_keys,
        "agent_path": None,
        "agent_forwarding": False,
        "password": None,
        "kbdint_auth": False,
        "password_auth": False,
        "gss_auth": False,
        "preferred_auth": "publickey",
        "connect_timeout": connect_timeout,
        "login_timeout": connect_timeout,
        "keepalive_interval": keepalive_seconds,
        "keepalive_count_max": 3,
        **algs,
    }


async def _connect(
    ep: SshEndpoint,
    connect_timeout: float,
    *,
    keepalive_seconds: float = 0.0,
    light: bool = False,
) -> asyncssh.SSHClientConnection:
    """Open an authenticated connection or raise RemoteError saying what went wrong.

    ``keepalive_seconds`` > 0 sends SSH keepalives, so a kept connection that died is noticed.
    ``light`` prefers the cheapest strong algorithms (probe rounds log in every round).
    """
    label = _endpoint_label(ep)
    creds = _credentials(ep)
    try:
        return await _open(ep, creds, connect_timeout, keepalive_seconds, light)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise _host_key_error(ep, exc) from None
    except asyncssh.KeyExchangeFailed as exc:
        # A pinned key of another algorithm than the server offers fails the
        # key exchange instead of the key check: still a changed host key.
        if "host key" in str(exc):
            raise _host_key_error(ep, exc) from None
        raise RemoteError(f"{label}: key exchange failed: {exc}", kind="protocol") from None
    except asyncssh.PermissionDenied as exc:
        raise RemoteError(
            f"{label}: login refused for key {ep.key_file}: {exc}", kind="auth"
        ) from None
    except asyncssh.KeyImportError as exc:
        raise RemoteError(f"{label}: cannot load key {ep.key_file}: {exc}", kind="auth") from None
    except (TimeoutError, asyncssh.ConnectionLost) as exc:
        # A server that accepts TCP and then never speaks (or drops us) looks the same.
        kind = "timeout" if isinstance(exc, TimeoutError) else "protocol"
        detail = f"no SSH login within {connect_timeout:g}s" if kind == "timeout" else str(exc)
        raise RemoteError(f"{label}: {detail}", kind=kind) from None
    except ConnectionRefusedError:
        raise RemoteError(f"{label}: connection refused", kind="refused") from None
    except asyncssh.Error as exc:
        raise RemoteError(f"{label}: SSH error: {exc}", kind="protocol") from None
    except OSError as exc:
        if not ep.key_file.is_file() or not ep.known_hosts.is_file():
            raise RemoteError(
                f"{label}: cannot read key or known_hosts: {exc}", kind="auth"
            ) from None
        raise RemoteError(f"{label}: unreachable: {exc}", kind="unreachable") from None


class _Collect(asyncssh.SSHClientSession[bytes]):
    """One command's channel: output straight into capped buffers, ``done`` when it closes.

    Callbacks rather than asyncssh's process streams: no reader tasks and no stream
    hand-offs, a few fewer trips round the event loop per command (about a twentieth of
    a probe round's client CPU). What it does mirrors the streams: a channel lost before
    the command's end of output fails ``done`` with why; lost after it, it just ends.
    """

    def __init__(self, cap: int, done: asyncio.Future[None]) -> None:
        self.out, self.err = _CappedBuffer(cap), _CappedBuffer(cap)
        self.done = done
        self.eof = False

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        (self.err if datatype == asyncssh.EXTENDED_DATA_STDERR else self.out).add(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True  # stay half open until the exit status and close arrive, as streams do

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():  # the wait for it was cancelled (a timeout, a stopped round)
            return
        if exc is not None and not self.eof:
            self.done.set_exception(exc)
        else:
            self.done.set_result(None)


async def _run_on(
    conn: asyncssh.SSHClientConnection, command: str, limit: float, cap: int
) -> CommandResult:
    """Run one command on an open connection; on timeout return what arrived so far."""
    started = time.monotonic()
    session = _Collect(cap, asyncio.get_running_loop().create_future())
    chan: asyncssh.SSHClientChannel[bytes] | None = None
    exit_status: int | None = None
    timed_out = False
    try:
        async with asyncio.timeout(limit):
            chan, _ = await conn.create_session(lambda: session, command, encoding=None)
            chan.write_eof()  # nothing on stdin
            await session.done
            exit_status = chan.get_exit_status()
            if exit_status is None or exit_status < 0:
                # Killed by a signal, no exit status: use ssh(1)'s 255 rather than
                # None, which would read as "timed out".
                exit_status = 255
    except TimeoutError:
        timed_out = True
    finally:
        if chan is not None:
            chan.close()
    out, err = session.out, session.err
    return CommandResult(
        command=command,
        exit_status=None if timed_out else exit_status,
        stdout=out.text(),
        stderr=err.text(),
        duration_seconds=time.monotonic() - started,
        timed_out=timed_out,
        truncated=bool(out.dropped or err.dropped),
    )


class DevvmSession:
    """Several commands over one connection; closed for good after a command times out."""

    def __init__(self, conn: asyncssh.SSHClientConnection, shell: DevvmShell) -> None:
        self._conn = conn
        self._shell = shell
        self._closed = False

    # The per-call ``timeout`` is part of the shared interface; it is applied inside.
    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult:  # noqa: ASYNC109
        """Run one command on this session's connection."""
        if self._closed:
            raise RemoteError(
                f"{_endpoint_label(self._shell.endpoint)}: "
                "session closed after a command timed out",
                kind="protocol",
            )
        try:
            result = await _run_on(
                self._conn, command, timeout or self._shell.command_timeout, self._shell.output_cap
            )
        except asyncssh.Error as exc:
            raise RemoteError(
                f"{_endpoint_label(self._shell.endpoint)}: SSH error: {exc}", kind="protocol"
            ) from None
        if result.timed_out:
            # A wedged guest may never answer on this connection again; drop it.
            self._closed = True
            self._conn.abort()
        return result


class DevvmShell:
    """Runs commands on the guest as the configured user (sudo allowed by the caller's command)."""

    def __init__(
        self,
        endpoint: SshEndpoint,
        *,
        connect_timeout: float,
        command_timeout: float,
        output_cap: int = DEFAULT_OUTPUT_CAP,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.output_cap = output_cap

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[DevvmSession]:
        """Open one connection for several commands; it is closed on exit, whatever happens."""
        conn = await _connect(self.endpoint, self.connect_timeout)
        try:
            yield DevvmSession(conn, self)
        finally:
            # A graceful close when all went well; DevvmSession already aborted
            # the connection if a command hung.
            conn.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.connect_timeout):  # a cancel still gets through
                    await conn.wait_closed()

    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult:  # noqa: ASYNC109
        """Connect, run one command, disconnect; RemoteError only for connect or login problems."""
        async with self.session() as s:
            return await s.run(command, timeout=timeout)

    async def login(self) -> float:
        """Connect, authenticate and run ``true``; return the seconds it took."""
        started = time.monotonic()
        async with self.session() as s:
            result = await s.run("true", timeout=self.connect_timeout)
        if result.timed_out:
            raise RemoteError(
                f"{_endpoint_label(self.endpoint)}: logged in but `true` did not finish "
                f"within {self.connect_timeout:g}s",
                kind="timeout",
            )
        if result.exit_status != 0:
            raise RemoteError(
                f"{_endpoint_label(self.endpoint)}: logged in but `true` exited "
                f"{result.exit_status}: {result.stderr.strip()[:200]}",
                kind="protocol",
            )
        return time.monotonic() - started


@dataclass(frozen=True)
class PveStatus:
    """The Proxmox host's view of the VM, parsed from the ``status`` verb's JSON."""

    vm_status: str
    qmp_ok: bool
    qmp_status: str | None
    guest_agent_ok: bool
    uptime_seconds: float | None
    raw: dict[str, Any]


_VM_STATUSES = frozenset({"running", "stopped", "paused"})


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RemoteError(
            f"{what}: output is not JSON ({exc}): {text[:200]!r}", kind="bad_output"
        ) from None
    if not isinstance(data, dict):
        raise RemoteError(
            f"{what}: expected a JSON object, got {type(data).__name__}", kind="bad_output"
        )
    return data


def _ok_flag(data: dict[str, Any], key: str) -> bool:
    part = data.get(key)
    if not isinstance(part, dict) or not isinstance(part.get("ok"), bool):
        raise RemoteError(f"status output: missing '{key}.ok' (a boolean)", kind="bad_output")
    return bool(part["ok"])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_status(text: str) -> PveStatus:
    """Parse the ``status`` verb's JSON; RemoteError(kind="bad_output") names what is missing."""
    return status_from_dict(_json_object(text, "status output"))


def status_from_dict(data: dict[str, Any]) -> PveStatus:
    """Build a PveStatus from the already decoded ``status`` JSON object."""
    status = data.get("status")
    if not isinstance(status, str):
        raise RemoteError("status output: missing 'status' (a string)", kind="bad_output")
    qmp_ok = _ok_flag(data, "qmp")
    agent_ok = _ok_flag(data, "guest_agent")
    qmp_status = data["qmp"].get("status")
    uptime = data.get("uptime_seconds")
    return PveStatus(
        vm_status=status if status in _VM_STATUSES else "unknown",
        qmp_ok=qmp_ok,
        qmp_status=qmp_status if isinstance(qmp_status, str) else None,
        guest_agent_ok=agent_ok,
        uptime_seconds=float(uptime) if isinstance(uptime, int | float) and _is_number(uptime) else None,
        raw=data,
    )


def verb_json(ep: SshEndpoint, verb: Verb, result: CommandResult, timeout: float) -> dict[str, Any]:
    """The JSON object a verb printed; RemoteError for a timeout, a failure or bad output."""
    label = f"{_endpoint_label(ep)} {verb}"
    if result.timed_out:
        raise RemoteError(f"{label}: no answer within {timeout:g}s", kind="timeout")
    if result.exit_status != 0:
        raise RemoteError(
            f"{label}: exit status {result.exit_status}: {result.stderr.strip()[:200]}",
            kind="protocol",
        )
    return _json_object(result.stdout, f"{verb} output")


class PveClient:
    """Sends only the six verbs to the Proxmox host's forced command."""

    def __init__(
        self,
        endpoint: SshEndpoint,
        *,
        connect_timeout: float,
        status_timeout: float,
        power_timeout: float | None = None,
        output_cap: int = DEFAULT_OUTPUT_CAP,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        # status and forensics: on a wedged QEMU the host waits out QMP, then asks `qm list`.
        self.status_timeout = status_timeout
        # A real cycle (qm stop, then qm start) takes far longer than a status query.
        self.power_timeout = power_timeout or status_timeout
        self.output_cap = output_cap

    async def run(self, verb: Verb) -> CommandResult:
        """Send one verb; ValueError before connecting if ``verb`` is not a Verb member."""
        # Only enum members pass: a str that happens to equal "status" is refused too,
        # so no caller can smuggle free text through by accident.
        if not isinstance(verb, Verb):
            raise ValueError(f"not a Proxmox verb: {verb!r}; use one of {', '.join(Verb)}")
        shell = DevvmShell(
            self.endpoint,
            connect_timeout=self.connect_timeout,
            command_timeout=self.power_timeout if verb in POWER_VERBS else self.status_timeout,
            output_cap=self.output_cap,
        )
        return await shell.run(verb.value)

    async def _json_verb(self, verb: Verb) -> dict[str, Any]:
        return verb_json(self.endpoint, verb, await self.run(verb), self.status_timeout)

    async def status(self) -> PveStatus:
        """Ask the host for the VM's status."""
        return status_from_dict(await self._json_verb(Verb.STATUS))

    async def forensics(self) -> dict[str, Any]:
        """Ask the host for the forensics snapshot (status plus config, blockstats, QMP)."""
        return await self._json_verb(Verb.FORENSICS)
