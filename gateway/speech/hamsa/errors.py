"""The one exception type of the Hamsa client.

A :class:`HamsaError` carries a bounded :class:`~gateway.speech.hamsa.protocol.ErrorKind`
(safe as a metric label) and whether it is fatal (auth or billing: retrying cannot help).
Its text is built from our own words and status codes only, never from a foreign exception's
text, so the API key (which may sit in a URL in query-auth mode) cannot leak into it.
"""

from __future__ import annotations

from gateway.speech.hamsa.protocol import FATAL_KINDS, ErrorKind

_ADVICE = {
    ErrorKind.AUTH: "check HAMSA_API_KEY",
    ErrorKind.QUOTA: "the Hamsa project wallet is empty or over its usage limit",
}


class HamsaError(Exception):
    """A Hamsa request or connection failed. ``str()`` is a clear, key-free message."""

    def __init__(
        self,
        message: str,
        kind: ErrorKind,
        *,
        fatal: bool | None = None,
        close_code: int | None = None,
    ) -> None:
        self.kind = kind
        self.close_code = close_code  # set when the socket closed under the request
        self.fatal = kind in FATAL_KINDS if fatal is None else fatal
        advice = _ADVICE.get(kind)
        text = f"Hamsa {kind.value} error: {message}"
        if self.fatal and advice:
            text += f" ({advice})"
        self.message = text
        super().__init__(text)

    def __repr__(self) -> str:
        return f"HamsaError({self.message!r}, kind={self.kind.value}, fatal={self.fatal})"
