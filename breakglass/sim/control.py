"""The simulator's control API: a tiny HTTP/1.1 server on loopback.

``POST /faults`` with ``{"fault": NAME}`` injects a fault, ``DELETE /faults``
clears them all, ``GET /state`` returns the simulated VM's state (the
``power_log`` in it is the ground truth of every power verb the Proxmox side
accepted). Every answer is JSON; a problem with the request is a 400 whose
``error`` says what was wrong. It runs on the simulator's own event loop, so
it touches the simulated VM without any locking.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
_HEADER_TIMEOUT_SECONDS = 10.0


class ControlError(Exception):
    """A request the API cannot act on; becomes a JSON error with ``status``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlApi:
    """Serve ``/faults`` and ``/state`` for one simulator."""

    def __init__(
        self,
        *,
        inject: Callable[[str], Awaitable[dict[str, Any]]],
        clear: Callable[[], Awaitable[dict[str, Any]]],
        state: Callable[[], dict[str, Any]],
        host: str = "127.0.0.1",
    ) -> None:
        self._inject = inject
        self._clear = clear
        self._state = state
        self._host = host
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self._host}:{self.port}"

    async def start(self, preferred_port: int | None = None) -> int:
        """Listen on ``preferred_port`` if it is free, else on a new port; return the port."""
        server = None
        if preferred_port:
            with contextlib.suppress(OSError):
                server = await asyncio.start_server(
                    self._client, self._host, preferred_port, reuse_address=True
                )
        if server is None:
            server = await asyncio.start_server(self._client, self._host, 0, reuse_address=True)
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._server is not None:
            self._server.close()
            # close_clients() exists from 3.13; on 3.11 open keep-alive clients would block wait_closed.
            with contextlib.suppress(AttributeError):
                self._server.close_clients()  # type: ignore[attr-defined]
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._answer(reader)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            writer.close()
            return
        payload = json.dumps(body, default=str).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(head + payload)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[HTTPStatus, Any]:
        try:
            async with asyncio.timeout(_HEADER_TIMEOUT_SECONDS):  # not wait_for: a stop is never lost
                method, path, body = await _read_request(reader)
            return HTTPStatus.OK, await self._route(method, path, body)
        except ControlError as exc:
            return exc.status, {"error": str(exc)}

    async def _route(self, method: str, path: str, body: bytes) -> Any:
        path = path.split("?", 1)[0]
        routes = {("/faults", "POST"), ("/faults", "DELETE"), ("/state", "GET")}
        if (path, method) not in routes:
            if any(p == path for p, _ in routes):
                allowed = ", ".join(sorted(m for p, m in routes if p == path))
                raise ControlError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {path}: use {allowed}")
            raise ControlError(HTTPStatus.NOT_FOUND, f"no such path {path}; try /faults or /state")
        if path == "/state":
            return self._state()
        if method == "DELETE":
            return await self._clear()
        fault = _fault_name(body)
        try:
            return await self._inject(fault)
        except ValueError as exc:
            raise ControlError(HTTPStatus.BAD_REQUEST, str(exc)) from None


def _fault_name(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        message = f'body is not JSON ({exc}); send {{"fault": NAME}}'
        raise ControlError(HTTPStatus.BAD_REQUEST, message) from None
    if not isinstance(data, dict) or not isinstance(data.get("fault"), str):
        raise ControlError(HTTPStatus.BAD_REQUEST, 'body must be a JSON object {"fault": NAME}')
    return str(data["fault"])


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """Read one request: method, path and body (by Content-Length; no chunked bodies)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ControlError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ControlError(HTTPStatus.BAD_REQUEST, f"malformed request line {lines[0]!r}")
    method, path, _ = parts
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise ControlError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        elif name.strip().lower() == "transfer-encoding":
            message = "chunked bodies are not supported; send Content-Length"
            raise ControlError(HTTPStatus.BAD_REQUEST, message)
    if length < 0 or length > MAX_BODY_BYTES:
        raise ControlError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length) if length else b""
    return method.upper(), path, body
