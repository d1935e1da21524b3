"""Test plumbing for the sans-I/O adapters (gateway.telephony.adapter.MediaAdapter).

Each helper feeds one input (or one outbound event) and returns what it produced as a list,
so a table test reads ``assert text_in(proto, msg) == [CallerAudio(...)]``.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.telephony.adapter import MediaAdapter
from gateway.telephony.events import InboundEvent, OutboundEvent


def text_in(adapter: MediaAdapter, text: str) -> list[InboundEvent]:
    """Feed one TEXT message; the events it produced."""
    adapter.receive_text(text)
    return list(adapter.events_received())


def data_in(adapter: MediaAdapter, data: bytes) -> list[InboundEvent]:
    """Feed binary input; the events it produced."""
    adapter.receive_data(data)
    return list(adapter.events_received())


def eof_in(adapter: MediaAdapter) -> list[InboundEvent]:
    """Feed the end of the connection; the events it produced."""
    adapter.receive_eof()
    return list(adapter.events_received())


def events(adapter: MediaAdapter) -> list[InboundEvent]:
    """Events queued so far (e.g. marks a ClearAudio retired)."""
    return list(adapter.events_received())


def out(adapter: MediaAdapter, event: OutboundEvent) -> list[str | bytes]:
    """Send one outbound event; the wire messages queued since the last drain."""
    adapter.send(event)
    return list(adapter.data_to_send())


def pending(adapter: MediaAdapter) -> list[str | bytes]:
    """Wire messages queued since the last drain (output produced by input)."""
    return list(adapter.data_to_send())


def out_bytes(adapter: MediaAdapter, event: OutboundEvent) -> bytes:
    """Send one outbound event on a byte stream; the bytes queued since the last drain."""
    adapter.send(event)
    return b"".join(m for m in adapter.data_to_send() if isinstance(m, bytes))


def produced(adapter: MediaAdapter, action: Callable[[], None]) -> list[str | bytes]:
    """Run an adapter-specific command (``flush_audio``, ``answer`` ...); its wire output."""
    action()
    return list(adapter.data_to_send())


def reported(adapter: MediaAdapter, action: Callable[[], None]) -> list[InboundEvent]:
    """Run an adapter-specific input (``start_default``, ``receive_eof(code)``); its events."""
    action()
    return list(adapter.events_received())
