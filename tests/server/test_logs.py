"""Logging: call id context, text and JSON lines, secrets never printed."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.logs import call_id_var, setup_logging


@pytest.fixture
def restore_root() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_text_line_carries_call_id_and_redacts_secrets(restore_root: object) -> None:
    out = io.StringIO()
    setup_logging("INFO", json_lines=False, secrets=["sk-live-SECRET", "tok"], stream=out)
    token = call_id_var.set("CA123")
    try:
        logging.getLogger("t").info("connecting with key %s and %s", "sk-live-SECRET", "tok")
    finally:
        call_id_var.reset(token)
    line = out.getvalue()
    assert "[call=CA123]" in line
    assert "sk-live-SECRET" not in line and "tok" not in line.split("[call=CA123]")[1]
    assert line.count("***") == 2
    assert line.count("\n") == 1


def test_json_lines_are_valid_json_with_exception_redacted(restore_root: object) -> None:
    out = io.StringIO()
    setup_logging("INFO", json_lines=True, secrets=["hunter2"], stream=out)
    try:
        raise RuntimeError("auth failed for hunter2")
    except RuntimeError:
        logging.getLogger("t").exception("boom")
    entry = json.loads(out.getvalue())
    assert entry["level"] == "error" and entry["msg"] == "boom" and entry["call_id"] == "-"
    assert "hunter2" not in out.getvalue()
    assert "auth failed for ***" in entry["exc"]


FORGED = "CA1\n2030-01-01T00:00:00.000Z INFO    gateway [call=CA2] forged\r\x1b[2J\u2028x"


@pytest.mark.parametrize("json_lines", [False, True])
def test_control_characters_in_carrier_values_cannot_forge_lines(
    restore_root: object, json_lines: bool
) -> None:
    out = io.StringIO()
    setup_logging("INFO", json_lines=json_lines, stream=out)
    token = call_id_var.set(FORGED)
    try:
        logging.getLogger("t").warning("turning call %s away (%r)", FORGED, FORGED)
    finally:
        call_id_var.reset(token)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    for raw in ("\r", "\x1b", "\u2028"):
        assert raw not in text
    if json_lines:
        entry = json.loads(text)
        assert "\n" not in entry["msg"] and "\n" not in entry["call_id"]
        assert entry["call_id"].startswith("CA1\\n2030")
        assert "\\x1b[2J\\u2028x" in entry["msg"]
    else:
        assert "[call=CA1\\n2030-01-01T00:00:00.000Z INFO" in text
        assert "turning call CA1\\n2030" in text and "\\r\\x1b[2J\\u2028x" in text


def test_escape_controls_leaves_printable_text_alone() -> None:
    from gateway.logs import escape_controls

    arabic = "مرحبا بك"
    assert escape_controls(arabic) is arabic
    assert escape_controls("a\tb\x00\x7f\x85") == "a\\tb\\x00\\x7f\\x85"


def test_throttled_log_writes_first_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.logs import ThrottledLog

    now = [100.0]
    throttled = ThrottledLog(logging.getLogger("t.throttle"), 10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="t.throttle")
    assert throttled.warning("sig", "refused %s", "a")
    for _ in range(1000):
        assert not throttled.warning("sig", "refused %s", "b")
    assert throttled.warning("other", "capacity %s", "c")  # keys are independent
    assert throttled.suppressed("sig") == 1000
    now[0] += 10.5
    assert throttled.warning("sig", "refused %s", "d")
    assert not throttled.warning("sig", "refused %s", "e")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "refused a",
        "capacity c",
        "refused d (1000 similar suppressed in the last 10 s)",
    ]
    now[0] += 20
    assert throttled.warning("sig", "refused %s", "f")
    assert caplog.records[-1].getMessage() == "refused f (1 similar suppressed in the last 20 s)"
