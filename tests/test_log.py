"""Logging: JSON lines, console on a TTY, and secrets that never reach the output."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from breakglass.config import LogSettings
from breakglass.log import _SECRET_VALUES, REDACTED, configure_logging, get_logger, redact_text

TOKEN = "wh-7f3c9e2a1b4d5e6f7a8b9c0d"
API_KEY = "sk-ant-api03-Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBkZXZ2bWtleWRldnZta2V5ZGV2dm1rZXlkZXZ2bWtleQAAAJgAAAAAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
KEY_BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def assert_no_secret(text: str) -> None:
    for secret in (TOKEN, API_KEY, "Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE", KEY_BODY, "BEGIN OPENSSH"):
        assert secret not in text


def test_it_writes_one_json_object_per_line(captured):
    get_logger("breakglass.test").info("probe round", target="devvm", load1=0.5)
    (entry,) = lines(captured)
    assert entry["event"] == "probe round"
    assert entry["target"] == "devvm"
    assert entry["level"] == "info"
    assert entry["logger"] == "breakglass.test"
    assert entry["timestamp"].endswith("Z")


def test_it_masks_secret_named_keys_at_any_depth(captured):
    get_logger("t").info(
        "webhook configured",
        webhook_token=TOKEN,
        api_key=API_KEY,
        private_key=PRIVATE_KEY,
        headers={"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY},
        password="hunter2-but-longer",
        input_tokens=1200,
        token_file="/etc/breakglass/token",
    )
    out = captured.getvalue()
    assert_no_secret(out)
    assert "hunter2" not in out
    (entry,) = lines(captured)
    assert entry["webhook_token"] == REDACTED
    assert entry["api_key"] == REDACTED
    assert entry["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED}
    # Counters and file paths merely named after tokens stay readable.
    assert entry["input_tokens"] == 1200
    assert entry["token_file"] == "/etc/breakglass/token"


def test_it_masks_key_material_inside_free_text(captured):
    log = get_logger("t")
    log.warning(f"agent said: use {API_KEY} and Authorization: Bearer {TOKEN}")
    log.info("read file", content=f"# key\n{PRIVATE_KEY}# end", argv=["curl", f"Bearer {TOKEN}"])
    out = captured.getvalue()
    assert_no_secret(out)
    first, second = lines(captured)
    assert "Bearer [redacted]" in first["event"]
    assert "[redacted private key]" in second["content"]


def test_it_masks_secrets_inside_objects_logged_as_values(captured):
    get_logger("t").error("call failed", error=RuntimeError(f"bad key {API_KEY}"), path=Path("/x"))
    assert_no_secret(captured.getvalue())
    (entry,) = lines(captured)
    assert entry["error"] == "bad key sk-ant-[redacted]"
    assert entry["path"] == "/x"


def test_it_masks_secrets_in_tracebacks(captured):
    try:
        raise RuntimeError(f"401 from API with key {API_KEY}")
    except RuntimeError:
        get_logger("t").exception("agent call failed")
    out = captured.getvalue()
    assert_no_secret(out)
    (entry,) = lines(captured)
    assert "RuntimeError: 401 from API with key sk-ant-[redacted]" in entry["exception"]


def test_it_masks_secrets_logged_by_libraries_through_the_standard_library(captured):
    logging.getLogger("breakglass.lib").warning("sending Authorization: Bearer %s", TOKEN)
    assert_no_secret(captured.getvalue())
    (entry,) = lines(captured)
    assert entry["event"] == "sending Authorization: Bearer [redacted]"


def test_it_drops_lines_below_the_configured_level():
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    buf = io.StringIO()
    try:
        configure_logging(LogSettings(format="json", level="warning"), stream=buf)
        get_logger("t").info("not shown")
        get_logger("t").warning("shown")
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    assert [e["event"] for e in lines(buf)] == ["shown"]


def test_it_renders_for_humans_on_a_tty_and_still_masks():
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    tty = FakeTty()
    try:
        configure_logging(LogSettings(format="auto", level="info"), stream=tty)
        get_logger("t").info("incident opened", target="devvm", api_key=API_KEY)
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    out = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue())  # drop colour codes
    assert "incident opened" in out
    assert "target=devvm" in out
    assert not out.lstrip().startswith("{")
    assert_no_secret(out)


def test_configuring_twice_does_not_duplicate_lines(captured):
    configure_logging(LogSettings(format="json", level="info"), stream=captured)
    get_logger("t").info("once")
    assert len(lines(captured)) == 1


# Pieces of every secret shape, and near misses, joined at random.
_PIECES = st.sampled_from(
    [
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbg==\n-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----",
        "PRIVATE KEY",
        "Bearer abc.def-123",
        "bearer\ttok",
        "Bearer",
        "Basic QWxhZGRpbjpvcGVu",
        "Basic ",
        "sk-ant-api03-abc",
        "sk-ant",
        " ",
        "\n",
        "=",
        "-",
        "token",
    ]
)


@given(st.lists(_PIECES | st.text(max_size=8), max_size=12).map("".join))
def test_the_quick_check_never_skips_what_the_patterns_would_mask(text: str) -> None:
    masked = text
    for pattern, replacement in _SECRET_VALUES:
        masked = pattern.sub(replacement, masked)
    assert redact_text(text) == masked


def test_redact_text_leaves_ordinary_text_alone():
    text = "token bucket refilled; 3 tokens left; Bearer of bad news"
    assert redact_text(text).startswith("token bucket refilled; 3 tokens left; Bearer ")


def test_a_huge_field_is_cut_with_a_marker(captured):
    get_logger("breakglass.web").info("webhook_received", receiver="r" * 900_000, nested={"k": ["x" * 5000]})
    text = captured.getvalue()
    assert len(text) < 10_000
    (entry,) = lines(captured)
    assert entry["receiver"] == "r" * 2000 + "...[truncated 898000 chars]"
    assert entry["nested"]["k"][0].endswith("...[truncated 3000 chars]")


def test_a_huge_stdlib_message_is_cut_too(captured):
    logging.getLogger("waitress").warning("bad request %s", "y" * 50_000)
    (entry,) = lines(captured)
    assert len(entry["event"]) < 2100
    assert entry["event"].endswith("...[truncated 48012 chars]")


# log.info("name", ...) and (log.info if ok else log.warning)("name", ...)
EVENT_CALL = re.compile(r"\blog\.(?:debug|info|warning|error|exception|critical)\)?\(\s*\"([^\"]*)\"")


def test_every_event_name_is_snake_case() -> None:
    root = Path(__file__).resolve().parent.parent / "breakglass"
    names = {
        m.group(1)
        for path in root.rglob("*.py")
        if "sim" not in path.relative_to(root).parts  # the simulator logs stdlib %-messages
        for m in EVENT_CALL.finditer(path.read_text(encoding="utf-8"))
    }
    assert "incident_closed" in names
    assert sorted(n for n in names if not re.fullmatch(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*", n)) == []
