"""Structured logging: JSON lines by default, console on a TTY, secrets always masked.

Both structlog loggers and the standard library's (asyncssh, waitress, httpx)
end in the same handler, so the redaction applies to every line
the process writes, including tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from breakglass.config import LogSettings

REDACTED = "[redacted]"

# Key names whose values are secrets whatever they hold. "input_tokens" or
# "token_file" are not secrets: the name must END in the secret word.
_SECRET_KEY = re.compile(
    r"(?:^|[_\-.])(?:api[_\-]?key|x[_\-]api[_\-]key|token|access[_\-]?token|password|passwd|"
    r"secret|secret[_\-]?key|authorization|private[_\-]?key|cookie|session[_\-]?id)$",
    re.IGNORECASE,
)

# Values that look like key material, masked wherever they appear in a string.
_SECRET_VALUES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        "[redacted private key]",
    ),
    # Authorization header values; the scheme stays so the line still reads.
    (re.compile(r"\b([Bb]earer)\s+[A-Za-z0-9._~+/=\-]+"), r"\1 " + REDACTED),
    (re.compile(r"\b(Basic)\s+[A-Za-z0-9+/=]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"sk-ant-[A-Za-z0-9_\-]+"), "sk-ant-" + REDACTED),
)

# Every logged string is cut to this many characters, tracebacks to the larger cap, so a
# 900 KB field from outside (a webhook's receiver, a model's answer) is never logged whole.
MAX_FIELD_CHARS = 2000
MAX_TRACEBACK_CHARS = 20000
_LONG_FIELDS = frozenset({"exception", "stack"})

_HANDLER_NAME = "breakglass"
# Libraries whose INFO lines are one per connection or per request: too chatty.
_QUIET_LIBRARIES = ("asyncssh", "waitress", "urllib3", "httpx", "anthropic")


# One search that every match of _SECRET_VALUES also matches: most strings (an event name, a
# target) hold none, and one search costs a quarter of the four substitutions.
_MAY_HOLD_SECRET = re.compile(r"PRIVATE KEY-----|[Bb]earer\s|Basic\s|sk-ant-")


def redact_text(text: str) -> str:
    """Mask key material, API keys and bearer tokens inside a string."""
    if _MAY_HOLD_SECRET.search(text) is None:
        return text
    for pattern, replacement in _SECRET_VALUES:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any) -> Any:
    """Return ``value`` with secret-named keys and secret-looking strings masked, recursively."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", errors="replace"))
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else (an exception, a Path, a model) would be rendered through its
    # str or repr later, unmasked: render it now and mask the text.
    return redact_text(str(value))


def truncate_value(value: Any, cap: int = MAX_FIELD_CHARS) -> Any:
    """Return ``value`` with every string longer than ``cap`` cut, marked with how much was cut."""
    if isinstance(value, str):
        if len(value) <= cap:
            return value
        return f"{value[:cap]}...[truncated {len(value) - cap} chars]"
    if isinstance(value, bytes):
        return truncate_value(value.decode("utf-8", errors="replace"), cap)
    if isinstance(value, Mapping):
        return {truncate_value(k, cap): truncate_value(v, cap) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [truncate_value(v, cap) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Rendered later through str() anyway (see redact_value): bound that text now.
    return truncate_value(str(value), cap)


def truncate_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: bound every field (tracebacks get a larger cap)."""
    return {
        k: truncate_value(v, MAX_TRACEBACK_CHARS if k in _LONG_FIELDS else MAX_FIELD_CHARS)
        for k, v in event_dict.items()
    }


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every key and value of the event."""
    return redact_value(event_dict)  # type: ignore[no-any-return]


def _renderer(settings: LogSettings, stream: TextIO) -> Processor:
    isatty = getattr(stream, "isatty", None)
    tty = bool(isatty is not None and isatty())
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if tty else "json"
    if fmt == "console":
        # Colour codes only where a terminal will interpret them.
        return structlog.dev.ConsoleRenderer(colors=tty)
    return structlog.processors.JSONRenderer()


def configure_logging(settings: LogSettings, *, stream: TextIO = sys.stderr) -> None:
    """Send every log line (structlog and stdlib) to ``stream``, rendered and redacted."""
    level = getattr(logging, settings.level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text before redaction, so secrets in them are masked too.
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            truncate_fields,
            redact_secrets,
            _renderer(settings, stream),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    # Calling this twice (tests, serve after check) replaces our handler, never stacks it.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def _route_through_stdlib_until_configured() -> None:
    """Before configure_logging, log through stdlib (WARNING+ to stderr), redacted.

    structlog's own default prints every level to stdout, which would mix debug
    lines into the JSON a CLI command prints there.
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.processors.format_exc_info,
            truncate_fields,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


if not structlog.is_configured():
    _route_through_stdlib_until_configured()


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger bound to ``name`` (usually ``__name__``)."""
    return structlog.stdlib.get_logger(name)
