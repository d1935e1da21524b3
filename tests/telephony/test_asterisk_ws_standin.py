"""The core against a stand-in of Asterisk's chan_websocket playout queue.

:class:`AsteriskQueue` models ``channels/chan_websocket.c`` (process_text_message,
handle_command, process_binary_message, dequeue_frame) as ``docs/protocols/asterisk.md``
describes it, including its faults: a TEXT message over 128 bytes is ignored, a trailing
partial frame is dropped unless buffering, MEDIA_XOFF at 900 queued frames and MEDIA_XON
below 800, whole messages dropped at 1000, FLUSH_MEDIA discards markers silently and keeps
the paused state, a BINARY message over 65535 bytes (header included) closes with 1009,
and releases before 20.18 / 22.8 / 23.2 do not know MARK_MEDIA and hang up on a ping.

First the stand-in is checked against the real 23.4.1 transcripts (burst, 100/250-byte
chunks, buffering, XOFF), then the gateway core is driven through it tick by tick: the
gateway is proven against Asterisk's rules, not against our own reading of them.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from gateway.telephony.asterisk_ws import MAX_TEXT_COMMAND_BYTES, AsteriskWsProtocol, Tracking
from gateway.telephony.events import (
    ClearAudio,
    InboundEvent,
    MarkPlayed,
    OutboundFlow,
    PlayAudio,
    PlaybackDrained,
    SetMark,
)
from tests.telephony.wire import events, out, pending, produced, text_in

TIMEOUT = 5.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "asterisk-23.4.1"

QUEUE_LENGTH_MAX = 1000
XOFF_LEVEL = 900
XON_LEVEL = 800
MAX_RX_PAYLOAD = 65535 - 4  # AST_WEBSOCKET_MAX_RX_PAYLOAD_SIZE includes the 4-byte header


class AsteriskQueue:
    """Sans-I/O model of one chan_websocket channel's inbound-media side."""

    def __init__(
        self,
        frame_size: int = 160,
        *,
        json_format: bool = False,
        has_marks: bool = True,
        pings_hang_up: bool = False,
    ) -> None:
        self.frame_size = frame_size
        self.json_format = json_format
        self.has_marks = has_marks  # False: 20.16-20.17 / 22.6-22.7 / 23.0-23.1
        self.pings_hang_up = pings_hang_up
        self.queue: deque[bytes | str] = deque()  # audio frames and queued option events
        self.length = 0  # audio frames only (markers are not counted)
        self.max_length = 0
        self.queue_full = False
        self.paused = False
        self.bulk = False
        self.leftover = b""
        self.report_drained = False
        self.played = bytearray()
        self.ticks = 0
        self.ignored_texts = 0
        self.dropped_messages = 0
        self.closed_code: int | None = None

    def _event(self, name: str, arg: str | None = None) -> str:
        if self.json_format:
            body = {"event": name, "channel_id": "1.1"}
            if arg is not None:
                body["correlation_id"] = arg
            return json.dumps(body, separators=(",", ":"))
        return name if arg is None else f"{name} {arg}"

    def text(self, message: str) -> list[str]:
        if self.closed_code is not None:
            return []
        raw = message.encode()
        if not raw or len(raw) > 128:  # MAX_TEXT_MESSAGE_LEN: silently ignored
            self.ignored_texts += 1
            return []
        message = message.strip()
        data: str | None
        if self.json_format:
            try:
                obj = json.loads(message)
            except ValueError:
                return [
                    json.dumps({"event": "ERROR", "error_text": "Unable to parse JSON command"})
                ]
            command, data = obj.get("command"), obj.get("correlation_id")
        else:
            command, _, rest = message.partition(" ")
            data = rest or None
        if command == "HANGUP":
            self.closed_code = 1000
        elif command == "MARK_MEDIA" and self.has_marks:
            self.queue.append(self._event("MEDIA_MARK_PROCESSED", data))
        elif command == "START_MEDIA_BUFFERING":
            self.bulk = True
        elif command == "STOP_MEDIA_BUFFERING":
            self.bulk = False
            if self.leftover:
                self._queue_frame(self.leftover)
            self.leftover = b""
            self.queue.append(self._event("MEDIA_BUFFERING_COMPLETED", data))
        elif command == "FLUSH_MEDIA":
            self.queue.clear()
            self.length = 0
            self.bulk = False
            self.leftover = b""  # note: queue_paused is NOT cleared
        elif command == "REPORT_QUEUE_DRAINED":
            self.report_drained = True
        elif command == "PAUSE_MEDIA":
            self.paused = True
        elif command == "CONTINUE_MEDIA":
            self.paused = False
        # anything else (and MARK_MEDIA on old releases): "command unknown", logged only
        return []

    def _queue_frame(self, frame: bytes) -> list[str]:
        self.queue.append(frame)
        self.length += 1
        self.max_length = max(self.max_length, self.length)
        if not self.queue_full and self.length >= XOFF_LEVEL:
            self.queue_full = True
            return [self._event("MEDIA_XOFF")]
        return []

    def binary(self, data: bytes) -> list[str]:
        if self.closed_code is not None:
            return []
        if len(data) > MAX_RX_PAYLOAD:
            self.closed_code = 1009  # "Cannot fit huge websocket frame"
            return []
        if self.length >= QUEUE_LENGTH_MAX:
            self.dropped_messages += 1
            return []
        events: list[str] = []
        fs = self.frame_size
        if self.bulk and self.leftover:
            need = fs - len(self.leftover)
            self.leftover += data[:need]
            data = data[need:]
            if len(self.leftover) < fs:
                return events
            events += self._queue_frame(self.leftover)
            self.leftover = b""
        whole = len(data) - len(data) % fs
        for i in range(0, whole, fs):
            events += self._queue_frame(data[i : i + fs])
        if self.bulk:
            self.leftover = data[whole:]
        # else: the trailing partial piece is dropped
        return events

    def ping(self) -> None:
        if self.pings_hang_up:
            self.closed_code = 1003  # "frame type not supported" -> hangup

    def tick(self) -> list[str]:
        """One 20 ms timer tick: dequeue_frame()."""
        self.ticks += 1
        events: list[str] = []
        if self.paused:
            return events
        if self.queue_full and self.length < XON_LEVEL:
            self.queue_full = False
            events.append(self._event("MEDIA_XON"))
        if not self.queue:
            if self.report_drained:
                self.report_drained = False
                events.append(self._event("QUEUE_DRAINED"))
            return events
        item = self.queue.popleft()
        while isinstance(item, str):
            events.append(item)
            if not self.queue:
                return events
            item = self.queue.popleft()
        self.length -= 1
        self.played += item
        return events


def load(name: str) -> list[dict[str, Any]]:
    path = FIXTURES / f"{name}.jsonl"
    if not path.is_file():
        pytest.fail(f"fixture missing: {path} (see tests/fixtures/README.md)")
    with path.open() as fh:
        return sorted((json.loads(x) for x in fh if x.strip()), key=lambda r: float(r["t_ms"]))


def first_tick_of(queue: AsteriskQueue, event: str, limit: int = 3000) -> int:
    for _ in range(limit):
        if event in queue.tick():
            return queue.ticks
    raise AssertionError(f"{event} never came")


# ------------------------------------------------------- the stand-in vs the real Asterisk


@pytest.mark.parametrize("name", ["burst_8000", "chunk100_nobuf", "chunk250_nobuf", "xoff"])
def test_standin_reproduces_real_playout_times(name: str) -> None:
    """Drained time in the transcript == frames the stand-in keeps x 20 ms (± 2 ticks)."""
    records = load(name)
    burst = next(r for r in records if r["event"] == "SENT_BURST")
    sent_at = float(burst["t_ms"])
    drained_at = next(float(r["t_ms"]) for r in records if r.get("text") == "QUEUE_DRAINED")
    queue = AsteriskQueue()
    chunk, total = int(burst["chunk"]), int(burst["bytes"])
    for offset in range(0, total, chunk):
        queue.binary(b"\xff" * min(chunk, total - offset))
    queue.text("REPORT_QUEUE_DRAINED")
    ticks = first_tick_of(queue, "QUEUE_DRAINED")
    assert abs((ticks - 1) * 20 - (drained_at - sent_at)) <= 40, (ticks, drained_at - sent_at)


def test_standin_reproduces_xoff_xon() -> None:
    records = load("xoff")
    sent_at = next(float(r["t_ms"]) for r in records if r["event"] == "SENT_BURST")
    xon_at = next(float(r["t_ms"]) for r in records if r.get("text") == "MEDIA_XON")
    queue = AsteriskQueue()
    events: list[str] = []
    for _ in range(17):
        events += queue.binary(b"\xff" * 16000)
    assert events == ["MEDIA_XOFF"] and queue.dropped_messages == 7
    ticks = first_tick_of(queue, "MEDIA_XON")
    assert abs((ticks - 1) * 20 - (xon_at - sent_at)) <= 40


def test_standin_reproduces_buffering() -> None:
    records = load("chunk100_buf")
    sent_at = next(float(r["t_ms"]) for r in records if r["event"] == "SENT_BURST")
    done_at = next(
        float(r["t_ms"])
        for r in records
        if r.get("text", "").startswith("MEDIA_BUFFERING_COMPLETED")
    )
    queue = AsteriskQueue()
    queue.text("START_MEDIA_BUFFERING")
    for _ in range(160):
        queue.binary(b"\xff" * 100)
    queue.text("STOP_MEDIA_BUFFERING b1")
    ticks = first_tick_of(queue, "MEDIA_BUFFERING_COMPLETED b1")
    assert len(queue.played) == 16000
    assert abs((ticks - 1) * 20 - (done_at - sent_at)) <= 40


def test_standin_rules() -> None:
    queue = AsteriskQueue()
    assert queue.text("MARK_MEDIA " + "x" * 130) == [] and queue.ignored_texts == 1
    queue.binary(b"\xff" * 70000)
    assert queue.closed_code == 1009
    old = AsteriskQueue(pings_hang_up=True)
    old.ping()
    assert old.closed_code is not None


# ------------------------------------------------------------ the core against the stand-in


class Harness:
    """Wire the core to the stand-in; collect the core's inbound events."""

    def __init__(self, *, json_format: bool, has_marks: bool = True) -> None:
        self.queue = AsteriskQueue(json_format=json_format, has_marks=has_marks)
        self.proto = AsteriskWsProtocol()
        start = (
            '{"event":"MEDIA_START","connection_id":"c","channel":"WebSocket/c/0x1",'
            '"channel_id":"1.1","format":"ulaw","optimal_frame_size":160,"ptime":20}'
            if json_format
            else "MEDIA_START connection_id:c channel:WebSocket/c/0x1 channel_id:1.1 "
            "format:ulaw optimal_frame_size:160 ptime:20"
        )
        self.events: list[InboundEvent] = list(text_in(self.proto, start))

    def deliver(self, wire: list[str | bytes]) -> None:
        for item in wire:
            if isinstance(item, str):
                assert len(item.encode()) < MAX_TEXT_COMMAND_BYTES
                replies = self.queue.text(item)
            else:
                replies = self.queue.binary(item)
            self.receive(replies)

    def receive(self, texts: list[str]) -> None:
        for text in texts:
            self.events += text_in(self.proto, text)
            self.deliver(pending(self.proto))

    def send(self, *events: Any) -> None:
        for event in events:
            self.deliver(out(self.proto, event))

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.receive(self.queue.tick())

    def run_until_idle(self, limit: int = 5000) -> None:
        for _ in range(limit):
            self.tick()
            if not self.queue.queue and not self.queue.report_drained:
                return
        raise AssertionError("queue never drained")


def tts_audio(n_bytes: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(n_bytes))


@pytest.mark.parametrize("json_format", [False, True])
@pytest.mark.parametrize("chunk", [100, 250, 333, 8000])
def test_every_byte_plays_in_any_chunking(json_format: bool, chunk: int) -> None:
    h = Harness(json_format=json_format)
    audio = tts_audio(16_050)  # 2.006 s: not a frame multiple
    for i in range(0, len(audio), chunk):
        h.send(PlayAudio(audio[i : i + chunk]))
    h.deliver(produced(h.proto, h.proto.flush_audio))
    h.send(SetMark("end"))
    h.run_until_idle()
    assert bytes(h.queue.played[: len(audio)]) == audio  # nothing dropped, in order
    assert set(h.queue.played[len(audio) :]) == {0xFF} and len(h.queue.played) % 160 == 0
    assert MarkPlayed("end", True) in h.events
    assert h.queue.ignored_texts == 0 and h.queue.dropped_messages == 0


def test_mark_fires_when_its_audio_has_played() -> None:
    h = Harness(json_format=True)
    h.send(PlayAudio(b"\x01" * 160 * 10), SetMark("a"), PlayAudio(b"\x02" * 160 * 10))
    h.tick(10)
    assert MarkPlayed("a", True) not in h.events
    h.tick(1)  # the marker reaches the head on the tick after the 10th frame
    assert MarkPlayed("a", True) in h.events
    assert len(h.queue.played) == 160 * 11


@pytest.mark.parametrize(("json_format", "has_marks"), [(True, True), (False, False)])
def test_long_tts_burst_never_overflows_the_queue(json_format: bool, has_marks: bool) -> None:
    """30 s handed over at once: written blindly it would pass 1000 frames (dropped whole)."""
    h = Harness(json_format=json_format, has_marks=has_marks)
    audio = tts_audio(160 * 1500)
    h.send(PlayAudio(audio), SetMark("end"))
    assert h.queue.length <= 800 < len(audio) // 160
    h.run_until_idle()
    assert bytes(h.queue.played[: len(audio)]) == audio
    assert h.queue.dropped_messages == 0 and h.queue.max_length <= 800
    assert not any(isinstance(e, OutboundFlow) for e in h.events)  # never reached XOFF
    assert [e for e in h.events if isinstance(e, MarkPlayed)] == [MarkPlayed("end", True)]
    if has_marks:  # progress marks keep the queue fed: no gap longer than one tick
        assert len(h.queue.played) == len(audio)


@pytest.mark.parametrize("json_format", [False, True])
def test_barge_in_flushes_and_retires_marks(json_format: bool) -> None:
    h = Harness(json_format=json_format)
    h.send(
        PlayAudio(b"\x01" * 160 * 50), SetMark("one"), PlayAudio(b"\x02" * 160 * 50), SetMark("two")
    )
    h.deliver(produced(h.proto, h.proto.pause_media))
    h.tick(5)  # paused: nothing plays
    assert len(h.queue.played) == 0
    h.send(ClearAudio())
    retired = events(h.proto)
    assert retired == [MarkPlayed("one", False), MarkPlayed("two", False)]
    assert not h.queue.paused  # CONTINUE_MEDIA was sent after the flush
    h.tick(2)
    assert PlaybackDrained() in h.events
    assert len(h.queue.played) == 0
    h.send(PlayAudio(b"\x03" * 320), SetMark("after"))
    h.run_until_idle()
    assert bytes(h.queue.played) == b"\x03" * 320
    assert MarkPlayed("after", True) in h.events
    assert not any(isinstance(e, MarkPlayed) and e.name in ("one", "two") for e in h.events)


def test_old_release_byte_clock_marks() -> None:
    """Plain text on a release without MARK_MEDIA: marks resolve by QUEUE_DRAINED."""
    h = Harness(json_format=False, has_marks=False)
    assert h.proto.tracking is Tracking.BYTE_CLOCK
    h.send(PlayAudio(b"\x01" * 1600), SetMark("a"), PlayAudio(b"\x02" * 1600), SetMark("b"))
    h.run_until_idle()
    marks = [e for e in h.events if isinstance(e, MarkPlayed)]
    assert marks == [MarkPlayed("a", True), MarkPlayed("b", True)]
    assert len(h.queue.played) == 3200 and h.proto.bytes_sent == 3200


def test_mark_media_on_old_release_is_the_known_risk() -> None:
    """Forcing mark_media on a release without it: marks never echo (documented)."""
    h = Harness(json_format=False, has_marks=False)
    h.proto = AsteriskWsProtocol(mark_media=True)
    text_in(h.proto, "MEDIA_START channel_id:1.1 format:ulaw optimal_frame_size:160")
    h.send(PlayAudio(b"\x01" * 160), SetMark("a"))
    h.run_until_idle()
    assert not any(isinstance(e, MarkPlayed) for e in h.events)
    assert h.proto.pending_marks == 1
