"""The one interface every telephony adapter implements (sans-I/O, websockets style).

Modelled on python-websockets' ``protocol.py``: the adapter never touches a socket, a task or
a clock. The glue (:mod:`gateway.telephony.driver`) feeds it what arrived and writes what it
produced::

    adapter.receive_text(text)   # or receive_data(data), receive_eof()
    for event in adapter.events_received(): ...   # CallStarted, CallerAudio, Malformed ...
    channel.write(adapter.data_to_send())         # wire output produced by that input

    adapter.send(PlayAudio(audio))                # outbound events are queued ...
    channel.write(adapter.data_to_send())         # ... and written in the order produced

Implemented by :class:`~gateway.telephony.twilio.TwilioMediaProtocol` (TEXT only),
:class:`~gateway.telephony.asterisk_ws.AsteriskWsProtocol` (TEXT control, BINARY media),
:class:`~gateway.telephony.audiosocket.AudioSocketProtocol` (a TCP byte stream) and
:class:`~gateway.telephony.browser.BrowserMediaProtocol` (the softphone page).

Contract:

* ``receive_*`` never raise for bad input: it becomes :class:`Malformed` or :class:`Ignored`
  in :meth:`MediaAdapter.events_received` (a fatal one carries the close code to use).
* ``send`` may put *inbound* events in :meth:`~MediaAdapter.events_received` too: marks a
  :class:`ClearAudio` dropped without the carrier ever reporting them, as
  ``MarkPlayed(played=False)`` (Asterisk FLUSH_MEDIA, the AudioSocket playout queue).
* Processing input may produce output by itself (Asterisk audio held during MEDIA_XOFF
  released by MEDIA_XON, softphone observer messages): call ``data_to_send`` after every
  ``receive_*`` as well as after every ``send``.
* Hot path (50 messages a second each way per call): one input message costs one events
  list (the parser's own, handed over without a copy), one ``send`` one output list; both
  getters return a shared empty tuple when there is nothing, so idle polling allocates
  nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

from gateway.telephony.events import InboundEvent, OutboundEvent

NO_EVENTS: Final[tuple[InboundEvent, ...]] = ()
NO_OUTPUT: Final[tuple[str | bytes, ...]] = ()

WireMessage = str | bytes  # a WebSocket TEXT (str) or BINARY (bytes) message; TCP bytes


class MediaAdapter(Protocol):
    """What the call runner needs from a telephony adapter (see the module docstring)."""

    def receive_data(self, data: bytes) -> None:
        """Feed binary input (a BINARY WebSocket message, or TCP bytes split anywhere)."""

    def receive_text(self, text: str) -> None:
        """Feed one TEXT WebSocket message."""

    def receive_eof(self) -> None:
        """The peer closed the connection (for some transports the close is the hang-up)."""

    def events_received(self) -> Sequence[InboundEvent]:
        """Inbound events parsed since the last call, in order (then forgotten)."""

    def send(self, event: OutboundEvent) -> None:
        """Queue the wire output for one outbound event."""

    def data_to_send(self) -> Sequence[WireMessage]:
        """Wire messages to write since the last call, in order (then forgotten)."""


class AdapterBuffers:
    """The two queues behind ``events_received`` / ``data_to_send``, shared by the adapters.

    Lists handed in are adopted, not copied (the hot path's one list per message): pass only
    fresh lists the caller keeps no reference to.
    """

    __slots__ = ("_events_in", "_wire_out")

    def __init__(self) -> None:
        self._events_in: list[InboundEvent] | None = None
        # list[Any]: adapters adopt their own list[str] / list[bytes] (lists are invariant).
        self._wire_out: list[Any] | None = None

    def _queue_events(self, events: list[InboundEvent]) -> None:
        if not events:
            return
        if self._events_in is None:
            self._events_in = events
        else:
            self._events_in.extend(events)

    def _queue_output(self, messages: list[Any]) -> None:
        if not messages:
            return
        if self._wire_out is None:
            self._wire_out = messages
        else:
            self._wire_out.extend(messages)

    def _output_one(self, message: WireMessage) -> None:
        if self._wire_out is None:
            self._wire_out = [message]
        else:
            self._wire_out.append(message)

    def events_received(self) -> Sequence[InboundEvent]:
        """Inbound events parsed since the last call, in order."""
        events = self._events_in
        if events is None:
            return NO_EVENTS
        self._events_in = None
        return events

    def data_to_send(self) -> Sequence[WireMessage]:
        """Wire messages produced since the last call, in order."""
        out = self._wire_out
        if out is None:
            return NO_OUTPUT
        self._wire_out = None
        return out
