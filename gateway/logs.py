"""Logging: one line per event, text or JSON lines, call id as context, secrets redacted.

The call id travels in a ``contextvars.ContextVar`` (:data:`call_id_var`), so every log line
written inside a call's tasks carries it without threading it through every function.
:class:`RedactingFormatter` replaces every configured secret (Twilio token, Hamsa key,
Asterisk password) with ``***`` in the final line, whatever path the value took to get there.
Per-frame code must not log above DEBUG, and must guard DEBUG with ``isEnabledFor``.

Carrier values (a callSid, a channel id, a header) are attacker-controlled: a newline in one
would forge a whole log line. The formatter therefore escapes every control character (C0,
DEL, C1, U+2028/U+2029) in the formatted message and the call id (:func:`escape_controls`), so
every call site is covered; only a traceback keeps its own line breaks.
:class:`ThrottledLog` rate-limits log lines that an outsider can trigger at will (refusals):
the first one per key is logged, then at most one summary per interval with the count of
lines suppressed meanwhile.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Final, TextIO

call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="-")

REDACTED = "***"

# Control characters -> visible escapes: C0 and DEL as \xNN (\n, \r, \t by name), C1 as
# \xNN, and the Unicode line/paragraph separators as \uNNNN (some viewers break lines there).
_ESCAPES: Final[dict[int, str]] = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape_controls(text: str) -> str:
    """``text`` with every control character replaced by a visible escape (one line, always).

    Printable text (the usual case) is returned as is, after one ``isprintable`` scan.
    """
    if text.isprintable():
        return text
    return text.translate(_ESCAPES)


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
        # Escaped after formatting, so values from every call site (args, exception text,
        # %r or %s) are covered: one record is always one line (a traceback aside).
        message = escape_controls(record.getMessage())
        call_id = escape_controls(str(getattr(record, "call_id", "-")))
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


class ThrottledLog:
    """Rate-limited logging for lines an outsider can trigger at will (refused requests).

    Per ``key`` (a closed set chosen in code, e.g. ``"twilio_signature"``): the first line is
    logged; later ones within ``interval`` seconds are only counted; the first one after the
    interval is logged with ``(N similar suppressed in the last S s)`` appended, and starts a
    new interval. So a flood costs at most one line per key per interval, and nothing is
    hidden: the count says how many were suppressed. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        # key -> [start of the current interval, lines suppressed in it]
        self._state: dict[str, list[float]] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless throttled; True when it was written."""
        now = self._clock()
        state = self._state.get(key)
        if state is None:
            self._state[key] = [now, 0]
            self._logger.log(level, msg, *args)
            return True
        if now - state[0] < self._interval:
            state[1] += 1
            return False
        suppressed, since = int(state[1]), now - state[0]
        state[0], state[1] = now, 0
        if suppressed:
            summary = f"{msg} (%d similar suppressed in the last %.0f s)"
            self._logger.log(level, summary, *args, suppressed, since)
        else:
            self._logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, key, msg, *args)

    def suppressed(self, key: str) -> int:
        """Lines suppressed for ``key`` in its current interval."""
        state = self._state.get(key)
        return int(state[1]) if state is not None else 0


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
