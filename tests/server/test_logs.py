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
