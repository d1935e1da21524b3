"""Aggregate DTMF digits into one entry, ended by a terminator key or a pause (sans-I/O).

The carrier reports one key press at a time (Twilio ``dtmf`` events, Asterisk
``DTMF_END``, AudioSocket 0x03 frames); the agent wants "1234#" as one ``dtmf`` event.
Time is passed in (``now``, seconds on any monotonic clock, e.g. ``loop.time()``); the glue
calls :meth:`DtmfCollector.poll` at :meth:`DtmfCollector.deadline` to close an entry after
the inter-digit pause.
"""

from __future__ import annotations

from typing import Final

VALID_DIGITS: Final = frozenset("0123456789*#ABCD")


class DtmfCollector:
    """Collects key presses; returns the entry (without its terminator) when it is complete.

    An entry completes when a terminator key is pressed, when ``max_digits`` digits are
    collected, or when ``inter_digit_timeout_ms`` passes after the last digit. A terminator
    pressed with nothing collected is returned alone (e.g. "#" as "skip"), so it is never
    lost. Unknown keys are ignored and counted in ``ignored``.

    Memory is bounded: an open entry holds at most ``max_pending`` digits (default 64, far
    above any PIN or phone number); further digits are dropped and counted in ``dropped``
    until the entry closes (a DTMF flood must not grow a call without end: issue 10 item 3).
    """

    __slots__ = (
        "_digits",
        "_last",
        "_max_digits",
        "_max_pending",
        "_terminators",
        "_timeout",
        "dropped",
        "ignored",
    )

    def __init__(
        self,
        inter_digit_timeout_ms: int = 1500,
        terminators: str = "#",
        *,
        max_digits: int | None = None,
        max_pending: int = 64,
    ) -> None:
        if inter_digit_timeout_ms <= 0:
            raise ValueError("inter_digit_timeout_ms must be positive")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._timeout = inter_digit_timeout_ms / 1000.0
        self._terminators = frozenset(terminators)
        self._max_digits = max_digits
        self._max_pending = max_pending
        self._digits: list[str] = []
        self._last = 0.0
        self.ignored = 0
        self.dropped = 0

    @property
    def pending(self) -> str:
        """Digits collected so far in the open entry."""
        return "".join(self._digits)

    def deadline(self) -> float | None:
        """When :meth:`poll` will close the open entry (None: no entry open)."""
        return self._last + self._timeout if self._digits else None

    def push(self, digit: str, now: float) -> str | None:
        """A key press at ``now``; return a completed entry, or None.

        If the open entry had already timed out (the glue polled late), that entry is
        returned and ``digit`` starts the next one.
        """
        key = digit.strip().upper()
        if key not in VALID_DIGITS:
            self.ignored += 1
            return None
        expired = self.poll(now)
        if expired is not None:
            if key in self._terminators:
                return expired  # the terminator came after the pause: it ends nothing new
            self._digits.append(key)
            self._last = now
            return expired
        if key in self._terminators:
            entry = self.pending or key
            self._digits.clear()
            return entry
        if len(self._digits) >= self._max_pending:
            self.dropped += 1  # the entry stays open (and keeps its deadline) until it ends
            return None
        self._digits.append(key)
        self._last = now
        if self._max_digits is not None and len(self._digits) >= self._max_digits:
            return self._take()
        return None

    def poll(self, now: float) -> str | None:
        """Return the open entry if the inter-digit pause has passed at ``now``, else None."""
        if self._digits and now - self._last >= self._timeout:
            return self._take()
        return None

    def flush(self) -> str | None:
        """Return the open entry at once (call end), or None."""
        return self._take() if self._digits else None

    def _take(self) -> str:
        entry = "".join(self._digits)
        self._digits.clear()
        return entry
