"""Simulated Asterisk peers: a chan_websocket channel and an AudioSocket channel.

Used by the tests and by ``gateway call``. Both behave as docs/protocols/asterisk.md
describes Asterisk 23 (§2, §3, and the real 23.4.1 observations of §7), faults included, so
the gateway is proven against Asterisk's rules rather than our own reading of them.

:class:`AsteriskWsCaller` (Asterisk is the WebSocket client, ``channels/chan_websocket.c``):

- upgrades with ``Sec-WebSocket-Protocol: media`` and HTTP Basic credentials, and fails the
  handshake if the server answers with any ``Sec-WebSocket-Extensions`` (``WS_NOT_SUPPORTED``);
- sends ``MEDIA_START`` first (plain text ``key:value`` or JSON with ``channel_variables``),
  then caller audio as BINARY frames of ``optimal_frame_size`` every 20 ms, ``DTMF_END``;
- plays what the gateway sends from its own queue, one frame per 20 ms tick: a BINARY
  message is cut into ``optimal_frame_size`` frames and a trailing partial piece is
  **dropped** unless buffering (START/STOP_MEDIA_BUFFERING); MEDIA_XOFF at 900 queued frames,
  MEDIA_XON below 800, whole messages dropped at 1000; a message over 65535 bytes closes
  with 1009;
- TEXT commands longer than 128 bytes are silently ignored; MARK_MEDIA is echoed as
  MEDIA_MARK_PROCESSED when playout reaches it (unknown on releases before 20.18/22.8/23.2:
  ``has_marks=False``), FLUSH_MEDIA drops queued audio and markers silently,
  REPORT_QUEUE_DRAINED answers QUEUE_DRAINED once the queue is empty, HANGUP closes with
  1000, unknown commands are only counted; in JSON mode invalid JSON gets an ERROR event;
- a PING from the server is counted, and hangs up (close) in ``old_release`` mode
  (20.16-20.17, 22.6-22.7, 23.0-23.1);
- the caller hangs up by closing with code 1000 (Asterisk sends no text event first).

:class:`AudioSocketCaller` (Asterisk is the TCP client, ``res/res_audiosocket.c``):

- sends the 16-byte UUID first (kind 0x01), then 20 ms slin packets (0x10 at 8 kHz, 0x12 at
  16 kHz ...), DTMF (0x03, one ASCII byte), and hangs up by EOF (what Asterisk does) or, for
  tests, a ``00 00 00`` packet;
- records every packet the gateway sends with its arrival time; a hang-up packet ends the
  call, any other kind than 0x00/0x10-0x18 or an empty audio packet is a protocol error that
  ends the call, as in ``app_audiosocket.c``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

FRAME_SECONDS = 0.020
MAX_TEXT_MESSAGE_LEN = 128  # chan_websocket.c: longer TEXT messages are ignored
MAX_RX_PAYLOAD = 65535 - 4  # AST_WEBSOCKET_MAX_RX_PAYLOAD_SIZE includes the frame header
QUEUE_LENGTH_MAX = 1000
XOFF_LEVEL = 900
XON_LEVEL = 800

# optimal_frame_size = default_ms x minimum_bytes / minimum_ms (main/codec_builtin.c): 20 ms.
SLIN_RATES = {
    "slin": 8000,
    "slin12": 12000,
    "slin16": 16000,
    "slin24": 24000,
    "slin32": 32000,
    "slin44": 44100,
    "slin48": 48000,
    "slin96": 96000,
    "slin192": 192000,
}
_FRAME_SIZES = {"ulaw": 160, "alaw": 160} | {c: r // 50 * 2 for c, r in SLIN_RATES.items()}
_SILENCE_BYTE = {"ulaw": 0xFF, "alaw": 0xD5} | dict.fromkeys(SLIN_RATES, 0x00)


class HandshakeRejected(Exception):
    """The server's upgrade answer would make Asterisk fail the handshake."""


@dataclass(slots=True)
class WsCallerStats:
    frames_sent: int = 0
    binary_received: int = 0
    bytes_received: int = 0
    received_sizes: list[int] = field(default_factory=list)
    texts_received: list[str] = field(default_factory=list)
    ignored_texts: int = 0  # over 128 bytes
    unknown_commands: int = 0
    dropped_partial_bytes: int = 0
    dropped_messages: int = 0  # queue full
    frames_played: int = 0
    played_at: list[float] = field(default_factory=list)  # monotonic start of each frame
    marks_processed: list[str] = field(default_factory=list)
    flushes: int = 0
    drained_reports: int = 0
    xoff_sent: int = 0
    xon_sent: int = 0
    pings_received: int = 0
    max_queue_length: int = 0
    closed_code: int | None = None


class AsteriskWsCaller:
    """One simulated chan_websocket call. Use as ``async with AsteriskWsCaller(...) as call:``.

    ``control_format`` is ``"plain-text"`` or ``"json"``; ``codec`` one of ulaw, alaw, slin,
    slin12, slin16, slin24, slin32, slin44, slin48, slin96, slin192; ``query`` the ``v()``
    parameters; ``speed`` > 1 plays the gateway's audio faster than real time (tests only;
    Asterisk plays at 1.0).
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws_url: str,
        *,
        username: str = "",
        password: str = "",
        control_format: str = "plain-text",
        codec: str = "ulaw",
        query: Mapping[str, str] | None = None,
        channel_id: str | None = None,
        connection_id: str = "wsconn",
        has_marks: bool = True,
        old_release: bool = False,
        offer_deflate: bool = False,
        speed: float = 1.0,
    ) -> None:
        if codec not in _FRAME_SIZES:
            raise ValueError(f"unsupported codec {codec!r}")
        self._http = http
        self._ws_url = ws_url
        # websocket_client.conf username/password -> "Authorization: Basic ..."
        self._headers = {"Authorization": basic_auth_header(username, password)} if username else {}
        self.json_format = control_format == "json"
        self.codec = codec
        self.frame_size = _FRAME_SIZES[codec]
        self.query = dict(query or {})
        self.channel_id = channel_id or f"{int(time.time())}.{uuid.uuid4().int % 1000}"
        self.connection_id = connection_id
        self.channel = f"WebSocket/{connection_id}/0x{uuid.uuid4().int % (1 << 44):x}"
        self.has_marks = has_marks and not old_release
        self.old_release = old_release
        self._offer_deflate = offer_deflate
        self._period = FRAME_SECONDS / speed
        self.stats = WsCallerStats()
        self.subprotocol: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._queue: deque[bytes | str] = deque()  # audio frames and queued marker events
        self._length = 0
        self._queue_full = False
        self._paused = False
        self._bulk = False
        self._leftover = b""
        self._report_drained = False
        self._received: list[bytes] = []
        self.played = bytearray()
        # What the caller heard on a real-time timeline: one frame per 20 ms tick from the
        # start of the call, silence on ticks with nothing queued (or paused), like a phone.
        self.timeline = bytearray()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> AsteriskWsCaller:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, start: bool = True) -> None:
        """Upgrade (auth, ``media``), check the answer like Asterisk, start the call."""
        url = self._ws_url
        if self.query:
            url = str(URL(url).update_query(self.query))
        self._ws = await self._http.ws_connect(
            url,
            protocols=("media",),
            headers=self._headers,
            autoping=False,  # pings are seen (and counted) here, not answered silently
            compress=15 if self._offer_deflate else 0,
            max_msg_size=0,
        )
        # res_http_websocket.c: any Sec-WebSocket-Extensions in the answer -> WS_NOT_SUPPORTED;
        # a subprotocol not offered -> "header mismatch".
        if self._ws.compress or self._ws.protocol not in (None, "media"):
            await self._ws.close()
            raise HandshakeRejected(f"compress={self._ws.compress} protocol={self._ws.protocol}")
        self.subprotocol = self._ws.protocol
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._receive_loop()))
        self._tasks.append(loop.create_task(self._playout_loop()))
        if start:
            await self.send_media_start()

    async def close(self, code: int = 1000) -> None:
        """Hang up (Asterisk closes with 1000 and sends no text event) and stop the tasks."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close(code=code)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def wait_closed(self, timeout: float) -> int | None:
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.stats.closed_code

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------------ sending

    def media_start(self) -> str:
        """The MEDIA_START text as Asterisk 23 sends it in the call's control format."""
        if self.json_format:
            return json.dumps(
                {
                    "event": "MEDIA_START",
                    "connection_id": self.connection_id,
                    "channel": self.channel,
                    "channel_id": self.channel_id,
                    "format": self.codec,
                    "optimal_frame_size": self.frame_size,
                    "ptime": 20,
                    "channel_variables": {
                        "DIALEDPEERNUMBER": f"{self.connection_id}/c({self.codec})f(json)",
                        "MEDIA_WEBSOCKET_CONNECTION_ID": self.connection_id,
                        "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": str(self.frame_size),
                    },
                },
                separators=(",", ":"),
            )
        return (
            f"MEDIA_START connection_id:{self.connection_id} channel:{self.channel} "
            f"channel_id:{self.channel_id} format:{self.codec} "
            f"optimal_frame_size:{self.frame_size} ptime:20"
        )

    async def send_media_start(self) -> None:
        await self.send_text(self.media_start())

    async def send_text(self, text: str) -> None:
        assert self._ws is not None, "connect() first"
        await self._ws.send_str(text)

    async def send_bytes(self, data: bytes) -> None:
        assert self._ws is not None, "connect() first"
        await self._ws.send_bytes(data)

    async def send_invalid_text(self, payload: bytes) -> None:
        """A TEXT frame whose payload is not UTF-8 (a fault injection; Asterisk never does)."""
        assert self._ws is not None, "connect() first"
        await send_text_frame_bytes(self._ws, payload)

    def _event(self, name: str, **fields: str) -> str:
        if self.json_format:
            return json.dumps(
                {"event": name, "channel_id": self.channel_id, **fields}, separators=(",", ":")
            )
        if name in ("MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"):
            return f"{name} {fields.get('correlation_id', '')}".rstrip()
        parts = " ".join(f"{k}:{v}" for k, v in fields.items())
        return f"{name} channel_id:{self.channel_id}" + (f" {parts}" if parts else "")

    async def play(self, audio: bytes, *, realtime: bool = True) -> None:
        """Send caller audio as BINARY frames of ``optimal_frame_size``, one per 20 ms."""
        fs = self.frame_size
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(audio), fs)):
            if realtime:
                delay = start + index * FRAME_SECONDS - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send_bytes(audio[offset : offset + fs])
            self.stats.frames_sent += 1

    async def press(self, digit: str) -> None:
        """DTMF from the caller: one DTMF_END (there is no begin event)."""
        await self.send_text(self._event("DTMF_END", digit=digit))

    # ---------------------------------------------------------------- receiving

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        ws = self._ws
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await self._on_binary(msg.data)
                elif msg.type is aiohttp.WSMsgType.PING:
                    self.stats.pings_received += 1
                    if self.old_release:  # "frame type not supported" -> hang up
                        await ws.close(code=1003)
                        break
                    await ws.pong(msg.data)
        finally:
            self.stats.closed_code = ws.close_code
            self._closed.set()

    async def _emit(self, text: str) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                await self._ws.send_str(text)

    async def _on_text(self, message: str) -> None:
        self.stats.texts_received.append(message)
        raw = message.encode()
        if not raw or len(raw) > MAX_TEXT_MESSAGE_LEN:
            self.stats.ignored_texts += 1
            return
        text = message.strip()
        data: str | None
        if self.json_format:
            try:
                obj = json.loads(text)
            except ValueError:
                await self._emit(self._event("ERROR", error_text="Unable to parse JSON command"))
                return
            if not isinstance(obj, dict):
                await self._emit(self._event("ERROR", error_text="Unable to parse JSON command"))
                return
            command, data = obj.get("command"), obj.get("correlation_id")
        else:
            command, _, rest = text.partition(" ")
            data = rest or None
        if command == "HANGUP":
            assert self._ws is not None
            await self._ws.close(code=1000)
        elif command == "MARK_MEDIA" and self.has_marks:
            self._queue.append(self._event("MEDIA_MARK_PROCESSED", correlation_id=data or ""))
        elif command == "FLUSH_MEDIA":
            self.stats.flushes += 1
            self._queue.clear()  # queued markers go too, never echoed
            self._length = 0
            self._bulk = False
            self._leftover = b""
        elif command == "REPORT_QUEUE_DRAINED":
            self._report_drained = True
        elif command == "START_MEDIA_BUFFERING":
            self._bulk = True
        elif command == "STOP_MEDIA_BUFFERING":
            self._bulk = False
            if self._leftover:
                await self._queue_frame(self._leftover)
            self._leftover = b""
            self._queue.append(self._event("MEDIA_BUFFERING_COMPLETED", correlation_id=data or ""))
        elif command == "PAUSE_MEDIA":
            self._paused = True
        elif command == "CONTINUE_MEDIA":
            self._paused = False
        elif command == "GET_STATUS":
            await self._emit(
                self._event(
                    "STATUS",
                    queue_length=str(self._length),
                    xon_level=str(XON_LEVEL),
                    xoff_level=str(XOFF_LEVEL),
                    queue_full=str(self._queue_full).lower(),
                    bulk_media=str(self._bulk).lower(),
                    media_paused=str(self._paused).lower(),
                )
            )
        elif command == "ANSWER":
            pass
        else:  # "WebSocket <cmd> command unknown": logged by Asterisk, nothing sent back
            self.stats.unknown_commands += 1

    async def _queue_frame(self, frame: bytes) -> None:
        self._queue.append(frame)
        self._length += 1
        self.stats.max_queue_length = max(self.stats.max_queue_length, self._length)
        if not self._queue_full and self._length >= XOFF_LEVEL:
            self._queue_full = True
            self.stats.xoff_sent += 1
            await self._emit(self._event("MEDIA_XOFF"))

    async def _on_binary(self, data: bytes) -> None:
        self.stats.binary_received += 1
        self.stats.bytes_received += len(data)
        self.stats.received_sizes.append(len(data))
        self._received.append(data)
        if len(data) > MAX_RX_PAYLOAD:
            assert self._ws is not None
            await self._ws.close(code=1009)  # "Cannot fit huge websocket frame"
            return
        if self._length >= QUEUE_LENGTH_MAX:
            self.stats.dropped_messages += 1
            return
        fs = self.frame_size
        if self._bulk and self._leftover:
            need = fs - len(self._leftover)
            self._leftover += data[:need]
            data = data[need:]
            if len(self._leftover) < fs:
                return
            await self._queue_frame(self._leftover)
            self._leftover = b""
        whole = len(data) - len(data) % fs
        for offset in range(0, whole, fs):
            await self._queue_frame(data[offset : offset + fs])
        if self._bulk:
            self._leftover = data[whole:]
        else:
            self.stats.dropped_partial_bytes += len(data) - whole

    async def _playout_loop(self) -> None:
        """dequeue_frame(): one frame per tick on a fixed grid; markers fire as reached."""
        start = time.monotonic()
        tick = 0
        silence = bytes([_SILENCE_BYTE[self.codec]]) * self.frame_size
        while True:
            tick += 1
            delay = start + tick * self._period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._paused or not self._length:  # nothing to play this tick: silence heard
                self.timeline += silence
            if self._paused:
                continue
            if self._queue_full and self._length < XON_LEVEL:
                self._queue_full = False
                self.stats.xon_sent += 1
                await self._emit(self._event("MEDIA_XON"))
            if not self._queue:
                if self._report_drained:
                    self._report_drained = False
                    self.stats.drained_reports += 1
                    await self._emit(self._event("QUEUE_DRAINED"))
                continue
            item = self._queue.popleft()
            while isinstance(item, str):
                await self._marker(item)
                if not self._queue:
                    break
                item = self._queue.popleft()
            if isinstance(item, bytes):
                self._length -= 1
                self.played += item
                self.timeline += item
                self.stats.frames_played += 1
                self.stats.played_at.append(time.monotonic())

    async def _marker(self, event: str) -> None:
        if "MEDIA_MARK_PROCESSED" in event:
            name = json.loads(event)["correlation_id"] if self.json_format else event.split()[-1]
            self.stats.marks_processed.append(name)
        await self._emit(event)

    # ------------------------------------------------------------------ results

    def received_audio(self) -> bytes:
        """Every audio byte the gateway sent, in order (including audio later flushed)."""
        return b"".join(self._received)

    def heard_audio(self) -> bytes:
        """What the caller heard, in the call's codec, one frame per 20 ms tick since connect."""
        return bytes(self.timeline)

    def silence_byte(self) -> int:
        return _SILENCE_BYTE[self.codec]


# --------------------------------------------------------------------------- AudioSocket

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
# res_audiosocket.h: 0x10 slin, 0x11 slin12, 0x12 slin16 ... 0x18 slin192.
KIND_FOR_RATE = {
    8000: 0x10,
    12000: 0x11,
    16000: 0x12,
    24000: 0x13,
    32000: 0x14,
    44100: 0x15,
    48000: 0x16,
    96000: 0x17,
    192000: 0x18,
}
_AUDIO_KINDS = frozenset(range(0x10, 0x19))
_HEADER = struct.Struct(">BH")


def packet(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket TLV message: ``[kind][length BE16][payload]``."""
    return _HEADER.pack(kind, len(payload)) + payload


@dataclass(slots=True)
class AudioSocketStats:
    packets_sent: int = 0
    packets_received: int = 0
    audio_bytes_received: int = 0
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each audio packet
    kinds: list[int] = field(default_factory=list)  # kind of each packet received
    hangup_received: bool = False
    protocol_errors: list[str] = field(default_factory=list)
    eof: bool = False


class AudioSocketCaller:
    """One simulated AudioSocket channel (Asterisk connects to the gateway over TCP)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        call_uuid: uuid.UUID | None = None,
        sample_rate: int = 8000,
    ) -> None:
        self.host = host
        self.port = port
        self.uuid = call_uuid or uuid.uuid4()
        self.sample_rate = sample_rate
        self.kind = KIND_FOR_RATE[sample_rate]
        self.frame_bytes = sample_rate * 20 // 1000 * 2
        self.stats = AudioSocketStats()
        self._heard = bytearray()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()

    async def __aenter__(self) -> AudioSocketCaller:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, send_uuid: bool = True) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._task = asyncio.get_running_loop().create_task(self._receive_loop())
        if send_uuid:
            await self.send_raw(packet(KIND_UUID, self.uuid.bytes))

    async def close(self) -> None:
        """Hang up the way Asterisk does: close TCP (no 0x00 packet)."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_done(self, timeout: float) -> None:
        """Wait until the gateway hung up (00 00 00), closed the socket, or broke protocol."""
        await asyncio.wait_for(self._done.wait(), timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def send_raw(self, data: bytes) -> None:
        assert self._writer is not None, "connect() first"
        self._writer.write(data)
        await self._writer.drain()

    async def send_audio(self, pcm: bytes) -> None:
        await self.send_raw(packet(self.kind, pcm))
        self.stats.packets_sent += 1

    async def play(self, pcm: bytes, *, realtime: bool = True) -> None:
        """Send slin audio in 20 ms packets, drift-corrected when ``realtime``."""
        fb = self.frame_bytes
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), fb)):
            if realtime:
                delay = start + index * FRAME_SECONDS - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send_audio(pcm[offset : offset + fb])

    async def press(self, digit: str) -> None:
        await self.send_raw(packet(KIND_DTMF, digit.encode("ascii")))

    async def send_hangup_packet(self) -> None:
        await self.send_raw(packet(KIND_HANGUP))

    async def _receive_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        try:
            while True:
                header = await reader.readexactly(3)
                kind, length = _HEADER.unpack(header)
                payload = await reader.readexactly(length) if length else b""
                self.stats.packets_received += 1
                self.stats.kinds.append(kind)
                if kind == KIND_HANGUP:
                    self.stats.hangup_received = True
                    break
                if kind not in _AUDIO_KINDS or not payload:
                    # app_audiosocket.c: "other than hangup or audio" -> the call ends.
                    self.stats.protocol_errors.append(f"kind 0x{kind:02x} length {length}")
                    break
                self.stats.arrivals.append(time.monotonic())
                self.stats.audio_bytes_received += length
                self._heard += payload
        except (asyncio.IncompleteReadError, ConnectionError):
            self.stats.eof = True
        finally:
            self._done.set()

    def heard_audio(self) -> bytes:
        """Every audio payload received (what the channel would have played), in order."""
        return bytes(self._heard)


async def send_text_frame_bytes(ws: aiohttp.ClientWebSocketResponse, payload: bytes) -> None:
    """Write a TEXT frame with arbitrary payload bytes (``send_str`` only takes valid text)."""
    await ws._writer.send_frame(payload, aiohttp.WSMsgType.TEXT)


def basic_auth_header(username: str, password: str) -> str:
    """``Authorization`` header value Asterisk sends for websocket_client.conf credentials."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
