"""JSON request bodies from outside: parsed, bounded and validated the same way on every route.

Any valid JSON is handled without a 5xx: a lone UTF-16 surrogate (``"\\ud800"``
is valid JSON but not encodable as UTF-8, so SQLite and the log would fail on
it) becomes U+FFFD; nesting deeper than :data:`MAX_DEPTH` is a 400, before
anything recursive (pydantic, the store's JSON encoder) sees it.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, StrictInt, ValidationError

from breakglass.web.context import ApiError

# Alertmanager's payload nests 4 deep (body > alerts > alert > labels); 32 leaves room.
MAX_DEPTH = 32
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A \\uXXXX escape that may encode a surrogate (a false match only costs the slow path).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

M = TypeVar("M", bound=BaseModel)


def _whole_float_to_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's "integer" is any number without a fractional part, 3.0 included; never a
# bool or a string.
WholeNumber = Annotated[StrictInt, BeforeValidator(_whole_float_to_int)]


def _bad(problem: str) -> ApiError:
    return ApiError(400, "bad_request", [{"param": "(body)", "problem": problem}])


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (real pairs are decoded by json)."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _clean(value: Any) -> Any:
    """Replace lone surrogates in every string and key; raise 400 past MAX_DEPTH (no recursion)."""
    root: list[Any] = [value]
    # (container, key in it, depth): rewritten in place, iteratively.
    stack: list[tuple[Any, Any, int]] = [(root, 0, 0)]
    while stack:
        parent, key, depth = stack.pop()
        item = parent[key]
        if isinstance(item, str):
            parent[key] = clean_text(item)
        elif isinstance(item, list | dict):
            if depth >= MAX_DEPTH:
                raise _bad(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict) and any(_LONE_SURROGATE.search(k) for k in item):
                item = {clean_text(k): v for k, v in item.items()}
                parent[key] = item
            keys = range(len(item)) if isinstance(item, list) else list(item)
            stack.extend((item, k, depth + 1) for k in keys)
    return root[0]


def _check_depth(value: Any) -> None:
    """Raise 400 past MAX_DEPTH, visiting containers only (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise _bad(f"nested deeper than {MAX_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, list | dict))


def load_json(raw: bytes) -> Any:
    """Parse a request body; ApiError 400 for anything that is not bounded, valid JSON."""
    try:
        # Decoded as json.loads decodes bytes, so the text shows whether any string can hold a
        # surrogate: almost never, and then no string needs to be visited.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        data = json.loads(text)
    except RecursionError:
        raise _bad(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"the body is not JSON: {exc}") from None
    if _LONE_SURROGATE.search(text) or _SURROGATE_ESCAPE.search(text):
        return _clean(data)
    if isinstance(data, list | dict):
        _check_depth(data)
    return data


def validate(model: type[M], data: Any) -> M:
    """``data`` validated by ``model``; ApiError 400 naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"param": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ApiError(400, "bad_request", problems) from None
