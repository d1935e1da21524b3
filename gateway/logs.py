"""Logging: one line per event, text or JSON lines, call id as context, secrets redacted.

The call id travels in a ``contextvars.ContextVar`` (:data:`call_id_var`), so every log line
written inside a call's tasks carries it without threading it through every function.
:class:`RedactingFormatter` replaces every configured secret (Twilio token, Hamsa key,
Asterisk password) with ``***`` in the final line, whatever path the value took to get there.
Per-frame code must not log above DEBUG, and must guard DEBUG with ``isEnabledFor``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TextIO

call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="-")

REDACTED = "***"


class _CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = call_id_var.get()
        return True


class RedactingFormatter(logging.Formatter):
    """Formats a record (text or JSON) and scrubs secrets from the result."""

    def __init__(self, secrets: Iterable[str] = (), json_lines: bool = False) -> None:
        super().__init__()
        # Longest first so a secret containing another is fully removed.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._json = json_lines

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        call_id = getattr(record, "call_id", "-")
        if self._json:
            entry: dict[str, object] = {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "call_id": call_id,
                "msg": message,
            }
            if record.exc_info:
                entry["exc"] = self.formatException(record.exc_info)
            line = json.dumps(entry, ensure_ascii=False)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            line = (
                f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name} "
                f"[call={call_id}] {message}"
            )
            if record.exc_info:
                line += "\n" + self.formatException(record.exc_info)
        for secret in self._secrets:
            line = line.replace(secret, REDACTED)
        return line


def setup_logging(
    level: str = "INFO",
    json_lines: bool = False,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install one handler on the root logger (replacing earlier ones) and return it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(secrets, json_lines))
    handler.addFilter(_CallIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log is one line per request: keep it but out of DEBUG noise.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
