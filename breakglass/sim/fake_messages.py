"""A scripted fake of Anthropic's Messages API (``POST /v1/messages``) on loopback.

The real ``anthropic`` SDK talks to it through its base URL. It plays one
scripted conversation (a JSON file, one per scenario) and records every
request it receives, so tests assert on what the agent actually sent.

Script format::

    {"name": "io_stall_cycle",
     "turns": [
        {"content": [{"type": "text", "text": "Checking the host."},
                     {"type": "tool_use", "name": "pve", "input": {"verb": "status"}}]},
        {"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded"}},
        {"content": [{"type": "text", "text": "Found: ...\\nDid: ...\\nState now: ..."}]}
     ],
     "then": "repeat_last"}

A turn's ``stop_reason`` defaults to ``tool_use`` when it has a tool_use
block, else ``end_turn``; a script may set any real value (``refusal``,
``max_tokens``, ``pause_turn``, ``stop_sequence``). ``needs_max_tokens: N`` on
a turn plays it cut off (``stop_reason: max_tokens``, tool inputs empty, the
turn not consumed) while the request's ``max_tokens`` is below N. Several
``tool_use`` blocks in one turn are parallel tool calls. ``usage`` defaults
to a size-based estimate; with ``cache_control`` on the system prompt or the
tools, the first request reports that prefix as ``cache_creation_input_tokens``
and later ones as ``cache_read_input_tokens``.

``delay_s`` on a turn makes the answer wait that long (a slow model);
``hold: true`` makes it wait until :meth:`FakeMessagesServer.release` (at most
``HOLD_MAX_SECONDS``), so a test acts at a known point of the conversation.

Like the real API it answers 400 to a request whose history holds
``tool_use``/``tool_result`` blocks but that defines no ``tools``, to a
``tool_result`` that does not answer the previous turn's ``tool_use`` ids, and
with ``tool_choice: {"type": "none"}`` it never returns a ``tool_use``. An
error turn answers with the real API's error body and ``retry-after-ms: 1``
(the SDK ignores a zero and falls back to its own backoff). ``repeat`` on a
turn plays it that many times; ``"then"`` says what happens after the last
turn: ``repeat_last`` (default) or ``error`` (HTTP 500 forever).

Run alone: ``python -m breakglass.sim.fake_messages SCRIPT.json [--port N]``
prints ``{"base_url": ...}`` and serves until interrupted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOLD_MAX_SECONDS = 60.0
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class Script:
    """A conversation to play, turn by turn."""

    def __init__(self, data: dict[str, Any]) -> None:
        turns = data.get("turns")
        if not isinstance(turns, list) or not turns:
            raise ValueError("a script needs a non-empty 'turns' list")
        self.name = str(data.get("name", "unnamed"))
        self.then = data.get("then", "repeat_last")
        self._queue: list[dict[str, Any]] = []
        for turn in turns:
            self._queue.extend([turn] * int(turn.get("repeat", 1)))
        self._last = self._queue[-1]
        self._pos = 0
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> Script:
        """Read a script file."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def peek_turn(self) -> dict[str, Any]:
        """Return the turn the next request would play, without consuming it."""
        with self._lock:
            if self._pos < len(self._queue):
                return self._queue[self._pos]
            if self.then == "error":
                return {"error": {"status": 500, "message": "script exhausted"}}
            return self._last

    def next_turn(self) -> dict[str, Any]:
        """Return the turn to play for the next request."""
        with self._lock:
            if self._pos < len(self._queue):
                turn = self._queue[self._pos]
                self._pos += 1
                return turn
            if self.then == "error":
                return {"error": {"status": 500, "message": "script exhausted"}}
            return self._last


class FakeMessagesServer:
    """The HTTP server; ``requests`` holds every request body received, in order."""

    def __init__(self, script: Script, *, port: int = 0) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._ids = itertools.count(1)
        self._cache_warm = False
        self._released = threading.Event()
        handler = _handler_for(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-messages", daemon=True)

    @property
    def base_url(self) -> str:
        """The URL to give the SDK as ``base_url``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeMessagesServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def release(self) -> None:
        """Let turns marked ``hold`` answer (now and from now on)."""
        self._released.set()

    def stop(self) -> None:
        """Stop serving."""
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def new_id(self, prefix: str) -> str:
        """Return a fresh id such as ``toolu_000001``."""
        return f"{prefix}_{next(self._ids):06d}"

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Play the next scripted turn for a request body."""
        invalid = invalid_request(body)
        if invalid is not None:
            payload = {"type": "error", "error": {"type": "invalid_request_error", "message": invalid}}
            return 400, payload, {"x-should-retry": "false"}
        turn = self.script.peek_turn()
        needs = int(turn.get("needs_max_tokens", 0))
        cut = bool(needs) and int(body.get("max_tokens", 0)) < needs
        if not cut:
            self.script.next_turn()
        if turn.get("delay_s"):
            time.sleep(float(turn["delay_s"]))  # a slow model: lets a test act while it "thinks"
        if turn.get("hold"):
            self._released.wait(HOLD_MAX_SECONDS)
        if "error" in turn:
            err = turn["error"]
            status = int(err.get("status", 500))
            etype = err.get("type", ERROR_TYPES.get(status, "api_error"))
            payload = {"type": "error", "error": {"type": etype, "message": err.get("message", etype)}}
            return status, payload, {"retry-after-ms": "1", "x-should-retry": _should_retry(status)}
        content = []
        for block in turn["content"]:
            block = dict(block)
            if block["type"] == "tool_use":
                block.setdefault("id", self.new_id("toolu"))
            content.append(block)
        if cut:
            content = [{**b, "input": {}} if b["type"] == "tool_use" else b for b in content]
        has_tool = any(b["type"] == "tool_use" for b in content)
        no_tools = "tools" not in body or (body.get("tool_choice") or {}).get("type") == "none"
        if has_tool and no_tools:
            # Tools forbidden (the final turn): a real model can only answer in text.
            content = [b for b in content if b["type"] != "tool_use"] or [
                {
                    "type": "text",
                    "text": "Found: stopped at the turn limit.\nDid: see steps.\nState now: unknown.",
                }
            ]
            has_tool = False
        stop = "max_tokens" if cut else turn.get("stop_reason") or ("tool_use" if has_tool else "end_turn")
        usage = turn.get("usage") or self._usage(body, content)
        msg = {
            "id": self.new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        return 200, msg, {}

    def _usage(self, body: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, int]:
        total = max(1, len(json.dumps(body)) // 4)
        usage = {"input_tokens": total, "output_tokens": max(1, len(json.dumps(content)) // 4)}
        prefix_blocks = [*_as_blocks(body.get("system")), *(body.get("tools") or [])]
        cached = [b for b in prefix_blocks if "cache_control" in b]
        if cached:
            prefix = min(total - 1, len(json.dumps([body.get("system"), body.get("tools")])) // 4)
            key = "cache_read_input_tokens" if self._cache_warm else "cache_creation_input_tokens"
            self._cache_warm = True
            usage[key] = prefix
            usage["input_tokens"] = total - prefix
        return usage


def _as_blocks(system: Any) -> list[dict[str, Any]]:
    return [b for b in system if isinstance(b, dict)] if isinstance(system, list) else []


def invalid_request(body: dict[str, Any]) -> str | None:
    """Why the real Messages API would answer 400 to this body, or None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    blocks = [b for m in messages if isinstance(m.get("content"), list) for b in m["content"]]
    if "tools" not in body and any(b.get("type") in ("tool_use", "tool_result") for b in blocks):
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    for prev, cur in itertools.pairwise(messages):
        asked = {b["id"] for b in _blocks(prev) if b.get("type") == "tool_use"}
        answered = {b.get("tool_use_id") for b in _blocks(cur) if b.get("type") == "tool_result"}
        if answered and answered != asked:
            got = sorted(map(str, answered))
            return f"tool_result ids {got} do not match the tool_use ids {sorted(asked)}"
        if asked and prev is not messages[-1] and answered != asked:
            return f"tool_use ids {sorted(asked)} were found without tool_result blocks immediately after"
    return None


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _should_retry(status: int) -> str:
    return "true" if status in (408, 409, 429) or status >= 500 else "false"


def _handler_for(server: FakeMessagesServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", server.new_id("req"))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if self.path.split("?")[0] != "/v1/messages":
                self._send(
                    404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}, {}
                )
                return
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(
                    400,
                    {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": "body is not JSON"},
                    },
                    {},
                )
                return
            server.requests.append(body)
            server.headers.append({k.lower(): v for k, v in self.headers.items()})
            status, payload, headers = server.respond(body)
            self._send(status, payload, headers)

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve a script until interrupted."""
    p = argparse.ArgumentParser(prog="python -m breakglass.sim.fake_messages")
    p.add_argument("script")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    srv = FakeMessagesServer(Script.load(args.script), port=args.port).start()
    print(json.dumps({"base_url": srv.base_url}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
