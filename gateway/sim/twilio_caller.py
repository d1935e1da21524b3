"""A simulated Twilio Media Streams peer: what Twilio does on a `<Connect><Stream>` call.

Used by the tests, ``gateway call`` and ``gateway loadtest``. It behaves like the carrier as
docs/protocols/twilio.md describes it:

- signs the WebSocket upgrade with ``X-Twilio-Signature`` over the ``wss://`` URL (empty params);
- sends ``connected``, then ``start`` (sequenceNumber "1"), then 20 ms ``media`` messages of
  160 bytes of μ-law with string counters, ``dtmf`` (track ``inbound_track``) and ``stop``;
- plays what the gateway sends at real-time rate into a virtual speaker: a ``mark`` is echoed
  only once all audio queued before it has played (§1.4, VERIFIED), and ``clear`` drops the
  unplayed audio and echoes every pending mark at once (GUESSED strong, §1.4);
- records what the caller *heard* (played audio, with silence for gaps) for a WAV file.

No sockets are opened until :meth:`TwilioCaller.connect`; everything runs on the caller's loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import orjson

from gateway.telephony.twilio_signature import compute_signature

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
FRAME_SECONDS = 0.020
ULAW_SILENCE = b"\xff"


@dataclass(slots=True)
class HeardAudio:
    """A span of audio that played to the caller: start time (monotonic) and μ-law bytes."""

    start: float
    audio: bytes


@dataclass(slots=True)
class CallerStats:
    media_sent: int = 0
    media_received: int = 0
    bytes_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears_received: int = 0
    first_audio_received_at: float | None = None
    mark_echo_times: dict[str, float] = field(default_factory=dict)
    mark_sent_times: dict[str, float] = field(default_factory=dict)
    closed_code: int | None = None


class TwilioCaller:
    """One simulated call. Use as ``async with TwilioCaller(...) as call:``."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws_url: str,
        *,
        public_ws_url: str | None = None,
        auth_token: str = "",
        call_sid: str | None = None,
        stream_sid: str | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        account_sid: str = "AC" + "0" * 32,
    ) -> None:
        self._http = http
        self._ws_url = ws_url
        self._public_ws_url = public_ws_url or ws_url
        self._auth_token = auth_token
        self.call_sid = call_sid or "CA" + uuid.uuid4().hex
        self.stream_sid = stream_sid or "MZ" + uuid.uuid4().hex
        self.account_sid = account_sid
        self.custom_parameters = dict(custom_parameters or {})
        self.stats = CallerStats()
        self.heard: list[HeardAudio] = []
        self.received_log: list[tuple[float, str]] = []  # (time, event) for inspection
        self._received: list[bytes] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        self._chunk = 0
        self._play_until = 0.0
        self._pending_marks: list[tuple[float, int, str]] = []  # heap of (due, order, name)
        self._mark_order = 0
        self._mark_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()
        self._started_at = 0.0
        self.payload_sent_at: dict[bytes, float] = {}
        self.echo_latencies: list[tuple[float, float]] = []  # (received at, latency)
        self.track_echo = False
        # Outbound audio timing: a gap is audio arriving after the previous audio ran out.
        # Within 2 s it is the same reply: after a mark it is a gap between sentences,
        # otherwise an underrun in the middle of a sentence.
        self.underruns_mid_sentence = 0
        self.sentence_gaps: list[float] = []
        self._mark_since_audio = False

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> TwilioCaller:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, start: bool = True) -> None:
        """Open the media socket (signed) and, by default, send ``connected`` and ``start``."""
        headers = {}
        if self._auth_token:
            headers["X-Twilio-Signature"] = compute_signature(
                self._auth_token, self._public_ws_url, {}
            )
        self._ws = await self._http.ws_connect(self._ws_url, headers=headers, autoping=True)
        self._started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._receive_loop()))
        self._tasks.append(loop.create_task(self._mark_loop()))
        if start:
            await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await self.send_start()

    async def close(self) -> None:
        """Close the socket (if still open) and stop the background tasks."""
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def wait_closed(self, timeout: float) -> int | None:
        """Wait until the gateway closes the socket; return the close code."""
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.stats.closed_code

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------------ sending

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def send_json(self, message: Mapping[str, object]) -> None:
        assert self._ws is not None, "connect() first"
        await self._ws.send_str(orjson.dumps(message).decode())

    async def send_raw(self, text: str) -> None:
        assert self._ws is not None, "connect() first"
        await self._ws.send_str(text)

    async def send_start(self) -> None:
        await self.send_json(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {
                        "encoding": "audio/x-mulaw",
                        "sampleRate": 8000,
                        "channels": 1,
                    },
                },
                "streamSid": self.stream_sid,
            }
        )

    async def send_frame(self, frame: bytes) -> None:
        """Send one inbound media message (normally 160 bytes = 20 ms)."""
        self._chunk += 1
        timestamp = int((time.monotonic() - self._started_at) * 1000)
        if self.track_echo:
            self.payload_sent_at[frame] = time.monotonic()
        payload = base64.b64encode(frame).decode()
        await self.send_raw(
            f'{{"event":"media","sequenceNumber":"{self._next_seq()}","media":{{"track":"inbound",'
            f'"chunk":"{self._chunk}","timestamp":"{timestamp}","payload":"{payload}"}},'
            f'"streamSid":"{self.stream_sid}"}}'
        )
        self.stats.media_sent += 1

    async def play(self, ulaw: bytes, *, realtime: bool = True) -> None:
        """Stream caller audio in 20 ms frames, paced in real time (drift-corrected)."""
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(ulaw), FRAME_BYTES)):
            frame = ulaw[offset : offset + FRAME_BYTES]
            if len(frame) < FRAME_BYTES:
                frame = frame + ULAW_SILENCE * (FRAME_BYTES - len(frame))
            if realtime:
                delay = start + index * FRAME_SECONDS - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send_frame(frame)

    async def silence(self, seconds: float, *, realtime: bool = True) -> None:
        await self.play(ULAW_SILENCE * int(seconds * 8000), realtime=realtime)

    async def press(self, digit: str) -> None:
        await self.send_json(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_seq(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self) -> None:
        """The caller hangs up: Twilio sends ``stop``."""
        await self.send_json(
            {
                "event": "stop",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )

    # ---------------------------------------------------------------- receiving

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                self._on_message(orjson.loads(msg.data))
        finally:
            self.stats.closed_code = self._ws.close_code
            self._closed.set()

    def _on_message(self, message: dict[str, object]) -> None:
        now = time.monotonic()
        event = message.get("event")
        self.received_log.append((now, str(event)))
        if event == "media":
            media = message["media"]
            assert isinstance(media, dict)
            audio = base64.b64decode(media["payload"])
            self.stats.media_received += 1
            self.stats.bytes_received += len(audio)
            self._received.append(audio)
            if self.stats.first_audio_received_at is None:
                self.stats.first_audio_received_at = now
            if self.track_echo:
                # The gateway may join several frames into one message: match each frame.
                for offset in range(0, len(audio), FRAME_BYTES):
                    sent = self.payload_sent_at.pop(audio[offset : offset + FRAME_BYTES], None)
                    if sent is not None:
                        self.echo_latencies.append((now, now - sent))
            gap = now - self._play_until
            if self.heard and 0.0 < gap < 2.0:
                if self._mark_since_audio:
                    self.sentence_gaps.append(gap)
                elif gap > FRAME_SECONDS:
                    self.underruns_mid_sentence += 1
            self._mark_since_audio = False
            start = max(now, self._play_until)
            self._play_until = start + len(audio) / 8000.0
            self.heard.append(HeardAudio(start, audio))
        elif event == "mark":
            mark = message["mark"]
            assert isinstance(mark, dict)
            name = str(mark["name"])
            self.stats.marks_received += 1
            self._mark_since_audio = True
            self.stats.mark_sent_times[name] = now
            self._mark_order += 1
            heapq.heappush(
                self._pending_marks, (max(now, self._play_until), self._mark_order, name)
            )
            self._mark_wakeup.set()
        elif event == "clear":
            self.stats.clears_received += 1
            self._mark_since_audio = True  # what follows a clear is a new reply, not an underrun
            self._truncate_heard(now)
            self._play_until = now
            # Twilio echoes every pending mark when clear drops its audio.
            pending = [(now, order, name) for _, order, name in self._pending_marks]
            self._pending_marks = pending
            heapq.heapify(self._pending_marks)
            self._mark_wakeup.set()

    def _truncate_heard(self, now: float) -> None:
        kept: list[HeardAudio] = []
        for span in self.heard:
            if span.start >= now:
                continue
            played = int((now - span.start) * 8000)
            if played < len(span.audio):
                span = HeardAudio(span.start, span.audio[:played])
            kept.append(span)
        self.heard = kept

    async def _mark_loop(self) -> None:
        while True:
            if not self._pending_marks:
                self._mark_wakeup.clear()
                await self._mark_wakeup.wait()
                continue
            due, _, name = self._pending_marks[0]
            delay = due - time.monotonic()
            if delay > 0:
                self._mark_wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._mark_wakeup.wait(), delay)
                continue
            heapq.heappop(self._pending_marks)
            if self._ws is None or self._ws.closed:
                continue
            self.stats.mark_echo_times[name] = time.monotonic()
            self.stats.marks_echoed += 1
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                await self.send_json(
                    {
                        "event": "mark",
                        "sequenceNumber": self._next_seq(),
                        "streamSid": self.stream_sid,
                        "mark": {"name": name},
                    }
                )

    # ------------------------------------------------------------------ results

    def first_heard_after(self, since: float) -> float | None:
        """When the first audio sent after ``since`` (monotonic) started playing, or None."""
        return next((span.start for span in self.heard if span.start >= since), None)

    async def wait_audio_after(self, since: float, timeout: float) -> bool:
        """Wait until audio that plays after ``since`` has arrived; False on timeout or close."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            if self.heard and self.heard[-1].start >= since:
                return True
            await asyncio.sleep(0.05)
        return False

    async def wait_reply_played(self, since: float, timeout: float, *, quiet: float) -> bool:
        """Wait until a reply that started after ``since`` has played out and ``quiet`` seconds
        passed with nothing new. False on timeout; on close, whether any such audio came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if self.closed:
                return self.first_heard_after(since) is not None
            last = self.heard[-1] if self.heard else None
            if last is None or last.start < since:
                continue
            if time.monotonic() - (last.start + len(last.audio) / 8000.0) >= quiet:
                return True
        return False

    def heard_audio(self) -> bytes:
        """Everything the caller heard, as one μ-law stream with silence filling the gaps."""
        if not self.heard:
            return b""
        origin = self.heard[0].start
        out = bytearray()
        for span in self.heard:
            offset = int((span.start - origin) * 8000)
            if offset > len(out):
                out.extend(ULAW_SILENCE * (offset - len(out)))
            out[offset : offset + len(span.audio)] = span.audio
        return bytes(out)

    def received_audio(self) -> bytes:
        """Every audio byte the gateway sent, in order (including audio later cleared)."""
        return b"".join(self._received)
