"""breakglass's HTTP server: the WSGI app in a thread pool, live streams on the event loop.

Why not waitress alone: a WSGI server gives every response a worker thread
until its body ends, so each open live page (a Server-Sent Events stream)
holds one, and sixteen browser tabs froze ``/healthz``, ``/metrics``, the
API and the webhook. Here one asyncio loop owns every connection (``h11``
parses HTTP/1.1); each request runs the Flask app in a pool of
``web.threads`` threads and returns at once, and a stream view hands its feed
to the loop (:mod:`breakglass.web.live`) so an open page costs a socket and
a coroutine, not a thread. Everything else (auth, CSRF, ids, headers) stays
in the Flask app, which also still runs under any WSGI server.

The one exception is what the app lists as quick answers (``QUICK_ANSWERS``):
a small request it can answer from a read, such as Alertmanager's copy of an
alert already held, is answered on the loop. Handing a request to the pool
and its answer back cost about 350 us of CPU per request on a 2-core machine
(two thread wake-ups and the interpreter lock passed twice), half of what a
copy cost in all; a quick answer that declines (None) sends the request down
the usual path, so every refusal is still the app's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import h11
import structlog
from flask import Flask

from breakglass.web.context import MAX_BODY_BYTES, QUICK_ANSWERS
from breakglass.web.live import Hub
from breakglass.web.sse import DEFER_KEY

log = structlog.get_logger("breakglass.web")

MAX_HEAD_BYTES = 64 * 1024
IDLE_SECONDS = 60.0  # a keep-alive connection with no new request is closed after this
READ_SECONDS = 30.0  # a request must arrive in full within this
WRITE_SECONDS = 30.0  # a client that does not read its stream for this long is dropped
BACKLOG = 2048
WRITE_BUFFER_BYTES = 64 * 1024
STREAM_BACKLOG_BYTES = 1024 * 1024  # unread stream data past this drops the client (it reconnects)
QUICK_BODY_BYTES = 16 * 1024  # a quick answer's work is bounded by its body: larger ones go to the pool
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython default: 700)


@dataclass
class _Answer:
    status: int
    reason: bytes
    headers: list[tuple[str, str]]
    body: bytes
    feed: Any = None


class _Chunks:
    """HTTP/1.1 chunks of the hub's frames, built once for all the streams that get the same bytes.

    The hub hands the same bytes object to every stream at the same point, one stream after
    another on the loop, so remembering the last one is enough.
    """

    def __init__(self) -> None:
        self._data = b""
        self._chunk = b""

    def __call__(self, data: bytes) -> bytes:
        if data is not self._data:
            self._data, self._chunk = data, b"%x\r\n%b\r\n" % (len(data), data)
        return self._chunk


@dataclass
class _Deferred:
    feed: Any = None

    def __call__(self, feed: Any) -> None:
        self.feed = feed


class WebServer:
    """Serve ``app`` on ``host``:``port`` until :meth:`close`; bind errors raise ``OSError`` here."""

    def __init__(self, app: Flask, *, host: str, port: int, threads: int = 16) -> None:
        self.app = app
        self.hub = Hub(app)
        self.host = host
        self._sock = _listen(host, port)
        self.effective_port: int = self._sock.getsockname()[1]
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="breakglass-web")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._closed = threading.Event()
        self._clients: set[asyncio.Task[None]] = set()
        self._chunks = _Chunks()
        self._quick = {
            (method.encode("ascii"), path.encode("ascii")): answer
            for (method, path), answer in app.extensions.get(QUICK_ANSWERS, {}).items()
        }

    @property
    def socket(self) -> socket.socket:
        """The listening socket."""
        return self._sock

    # -- lifecycle -------------------------------------------------------

    def run(self, *, handle_signals: bool = False) -> None:
        """Serve until :meth:`close` (or SIGINT/SIGTERM when ``handle_signals``); blocks."""
        asyncio.run(self._main(handle_signals))

    def close(self) -> None:
        """Stop serving; safe from any thread, and before or after :meth:`run`."""
        self._closed.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        else:
            self._sock.close()

    def join(self, timeout: float) -> list[str]:
        """After :meth:`run` returned: wait up to ``timeout`` s for the request and stream-reader
        threads (a request still in the app when the server closed runs to its end); the names
        of those still running."""
        deadline = time.monotonic() + timeout
        threads = [*self._pool._threads, *self.hub.threads()]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in threads if t.is_alive()]

    async def _main(self, handle_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._stop = loop, asyncio.Event()
        if self._closed.is_set():
            self._sock.close()
            return
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop.set)
        self.hub.bind(loop)
        # Everything start-up allocated (imported modules, config, app) lives as long as the
        # process: freezing it keeps a full collection from scanning it, a pause of hundreds of
        # milliseconds on a 2-core machine that every open page and request would wait out.
        gc.collect()
        gc.freeze()
        # A probe round allocates thousands of short-lived objects per target (SSH packets,
        # futures): at the default 700 allocations per young collection, a 1,000-target fleet
        # spent about 6 % of serve's CPU in the collector (py-spy, bench/fleet.py).
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        server = await asyncio.start_server(self._client, sock=self._sock, limit=MAX_HEAD_BYTES)
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await server.wait_closed()
            self.hub.close()
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one connection --------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            while True:
                request = await self._next(conn, reader, IDLE_SECONDS)
                if not isinstance(request, h11.Request):
                    break
                body = await self._body(conn, reader, writer)
                if body is None:
                    await self._send_simple(conn, writer, 413, b"request body too large\n")
                    break
                keep = await self._answer(conn, reader, writer, request, body, peer)
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    await self._send_simple(conn, writer, exc.error_status_hint, b"bad request\n")
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader, within: float) -> Any:
        while True:
            ev = conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            # A timer, not wait_for: wait_for wraps each read in a task of its own.
            async with asyncio.timeout(within):
                data = await reader.read(65536)
            conn.receive_data(data)

    async def _body(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """The request body, or None when it passes MAX_BODY_BYTES."""
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        chunks: list[bytes] = []
        size = 0
        while True:
            ev = await self._next(conn, reader, READ_SECONDS)
            if isinstance(ev, h11.Data):
                size += len(ev.data)
                if size > MAX_BODY_BYTES:
                    return None
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise ConnectionError("the client went away mid-request")

    async def _answer(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        body: bytes,
        peer: tuple[Any, ...],
    ) -> bool:
        """Run the app for one request and send its answer; True to keep the connection."""
        answer = self._quick_answer(request, body)
        if answer is None:
            deferred = _Deferred()
            answer = await self._run_app(self._environ(request, body, peer, deferred))
            answer.feed = deferred.feed
        head_only = request.method == b"HEAD"
        if answer.feed is not None and not head_only:
            await self._stream(conn, reader, writer, answer)
            return False
        headers = [
            (k, v) for k, v in answer.headers if k.lower() not in ("content-length", "transfer-encoding")
        ]
        headers.append(("Content-Length", str(len(answer.body))))
        head = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=answer.reason))
        body = conn.send(h11.Data(data=answer.body)) if answer.body and not head_only else b""
        end = conn.send(h11.EndOfMessage())
        # One write: a response in one segment, one send() (a loopback send costs about as much
        # CPU as h11's whole work on the request).
        await self._write(writer, b"".join((head or b"", body or b"", end or b"")))
        return True

    def _quick_answer(self, request: h11.Request, body: bytes) -> _Answer | None:
        """The app's quick answer to this request (see ``QUICK_ANSWERS``), computed on the loop."""
        quick = self._quick.get((request.method, request.target))
        if quick is None or len(body) > QUICK_BODY_BYTES:
            return None
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
        if len(headers) != len(request.headers):
            return None  # a header sent twice: the app decides what that means
        try:
            result = quick(headers, body)
        except Exception:
            # The app answers it instead, and its error handling says what went wrong.
            log.exception("quick_answer_failed", path=request.target.decode("latin-1"))
            return None
        if result is None:
            return None
        status, answer_headers, answer_body = result
        return _Answer(status, HTTPStatus(status).phrase.encode("ascii"), answer_headers, answer_body)

    async def _run_app(self, environ: dict[str, Any]) -> _Answer:
        """The app's answer, computed in the pool (run_in_executor, without its chained future)."""
        loop = self._loop
        assert loop is not None
        done: asyncio.Future[_Answer] = loop.create_future()

        def work() -> None:
            try:
                answer, error = _call_app(self.app, environ), None
            except BaseException as exc:  # handed to the awaiting task, as run_in_executor does
                answer, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, done, answer, error)

        self._pool.submit(work)
        return await done

    async def _stream(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answer: _Answer,
    ) -> None:
        """Send a live feed until it ends or the client hangs up; the connection closes after."""
        headers = [(k, v) for k, v in answer.headers if k.lower() not in ("content-length", "connection")]
        headers.append(("Connection", "close"))
        response = h11.Response(status_code=answer.status, headers=headers, reason=answer.reason)
        await self._write(writer, conn.send(response))
        transport = writer.transport
        # h11 frames a body of unknown length as chunks for an HTTP/1.1 client and sends it bare
        # (ending it by closing) to an HTTP/1.0 one; the hub's frames are framed here, once for
        # every stream that gets the same bytes, and h11 still ends the body.
        chunks = self._chunks if conn.their_http_version == b"1.1" else None

        def send(data: bytes) -> bool:
            # The hub writes without waiting; a client this far behind is dropped instead.
            if transport.is_closing() or transport.get_write_buffer_size() > STREAM_BACKLOG_BYTES:
                return False
            if data:
                transport.write(chunks(data) if chunks is not None else data)
            return True

        sub = self.hub.subscribe(answer.feed, send)
        # A stream's client sends nothing more: a read that returns means it hung up.
        gone: asyncio.Future[Any] = asyncio.ensure_future(reader.read(1))
        try:
            waiters: set[asyncio.Future[Any]] = {sub.done, gone}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not gone.done() and not transport.is_closing():
                await self._write(writer, conn.send(h11.EndOfMessage()))
        finally:
            self.hub.unsubscribe(sub)
            gone.cancel()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes | None) -> None:
        if not data:
            return
        writer.write(data)
        # Waiting on every write costs a timer per frame and stream; wait only when a client lags.
        if writer.transport.get_write_buffer_size() > WRITE_BUFFER_BYTES:
            # Not wait_for: on Python 3.11 it returns when the close's cancel lands as the drain
            # ends, and the connection would go on waiting for a next request.
            async with asyncio.timeout(WRITE_SECONDS):
                await writer.drain()

    async def _send_simple(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, text: bytes
    ) -> None:
        headers = [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(text))),
            ("Connection", "close"),
        ]
        await self._write(writer, conn.send(h11.Response(status_code=status, headers=headers)))
        await self._write(writer, conn.send(h11.Data(data=text)))
        await self._write(writer, conn.send(h11.EndOfMessage()))

    def _environ(
        self, request: h11.Request, body: bytes, peer: tuple[Any, ...], deferred: _Deferred
    ) -> dict[str, Any]:
        target = request.target.decode("latin-1")
        if not target.startswith("/"):
            parts = urlsplit(target)  # absolute form, as a proxy may send
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.effective_port),
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "REMOTE_ADDR": str(peer[0]),
            "REMOTE_PORT": str(peer[1]) if len(peer) > 1 else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            DEFER_KEY: deferred,
        }
        for raw_name, raw_value in request.headers:
            name = raw_name.decode("latin-1")
            # "X_User" and "X-User" would land on one environ key: a spoofing path past a proxy.
            if "_" in name:
                continue
            key = name.upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
                continue
            key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        environ.setdefault("CONTENT_LENGTH", str(len(body)) if body else "")
        return environ


def _settle(done: asyncio.Future[_Answer], answer: _Answer | None, error: BaseException | None) -> None:
    if done.done():  # the client's task was cancelled while the app ran
        return
    if error is not None:
        done.set_exception(error)
    else:
        assert answer is not None
        done.set_result(answer)


def _call_app(app: Flask, environ: dict[str, Any]) -> _Answer:
    """Run the WSGI app to completion in a worker thread; a stream view returns at once."""
    captured: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return chunks.append

    result: Iterable[bytes] = app(environ, start_response)
    try:
        for chunk in result:
            chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    code, _, reason = captured["status"].partition(" ")
    return _Answer(int(code), reason.encode("latin-1"), list(captured["headers"]), b"".join(chunks))


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port); OSError when taken."""
    bare = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(
        bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
