"""A faithful local Hamsa simulator: realtime WebSocket plus REST, with timing and fault knobs.

It behaves as ``docs/protocols/hamsa.md`` §5 suggests (section numbers refer to that file):

WebSocket ``/v1/realtime/ws``
  * auth by ``X-Api-Key`` header or ``?api_key=`` query (§1.1). A bad key is accepted and
    then closed with 4001 (GUESSED, §1.6), or refused at the upgrade with HTTP 401 when
    ``auth_failure="http"`` (the other reading; clients must handle both).
  * ``connect_delay`` before the upgrade completes (the ~1.2 s the original system fought),
    then the ``info`` greeting with its exact text (§1.2).
  * TTS: validate, ``ack`` (typos verbatim), binary frames sized as observed (about 16 KB
    first, then 32-64 KB; scaled by 1/4 for μ-law so a frame spans the same time),
    ``first_audio_delay`` before the first frame and synthesis ``realtime_factor`` times
    faster than real time, then ``end`` (§1.4). PCM16 16 kHz, μ-law 8 kHz with ``mulaw``,
    PCM16 8 kHz with ``sampleRate: "8k"``.
  * STT: a whole WAV in ``audioBase64`` (raw PCM -> "Only WAV files are supported"), answered
    after ``stt_delay`` with ONE plain-text frame taken in turn from ``stt_script`` (§1.5).
  * Requests are served strictly in order: one arriving mid-stream waits in the socket.
  * Protocol pings every ``ping_interval``; close 1000 after ``idle_timeout`` idle (§1.6).
  * Fault knobs: random rates (``short_response_rate``, ``error_rate``, ``drop_rate``) for
    load tests, and exact per-request fault queues for tests (:class:`SimState`):
    TTS faults ``short`` (ack, one 640-byte frame, end: §4), ``error`` (error frame, no end),
    ``drop`` (connection lost after the first frame), ``stall`` (ack, then nothing),
    ``gap`` (first frame, then nothing), ``riff`` (RIFF header before the audio), ``wallet``
    (close 4003), ``auth`` (close 4001), ``internal`` (close 4500); STT faults ``thinking``
    (``[THINKING]`` then nothing), ``error``, ``stall``, ``close`` (close 1000, no transcript),
    ``drop``; ``ws_down`` refuses upgrades with 503; ``wallet_empty`` closes every new socket
    with 4003 and answers REST with 429 code 10429.

REST (``Authorization: Token <key>``, §2.1; ``Bearer`` is accepted too, since the STT
quickstart shows it)
  * ``POST /v1/realtime/tts``: a whole WAV; ``POST /v1/realtime/tts-stream``: a chunked
    ``audio/wav`` body, RIFF-prefixed (0xFFFFFFFF sizes) or bare PCM per ``rest_stream_riff``,
    in odd-sized chunks (§2.3); ``POST /v1/realtime/stt``: ``{"success","message","data":
    {"text"}}`` or ``{"text"}`` per ``rest_stt_envelope`` (§2.4). Errors are
    ``{"code","message"}`` with 400/401/429. REST faults: ``drop`` (torn body), ``error``
    (500), ``rate_limit`` (429).

Control: ``GET /sim/stats`` (connection and request counters, JSON) and ``POST /sim/faults``
(JSON ``{"tts": [...], "stt": [...], "rest": [...], "ws_down": bool, "wallet_empty": bool}``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import struct
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from gateway.sim.speech_synth import SpeechSynth
from telecodecs.resample import resample

log = logging.getLogger(__name__)

# Exact server texts (§1.2, §1.4, §4), typos verbatim.
GREETING = {"type": "info", "payload": {"message": "Connected to realtime WebSocket server"}}
TTS_ACK = {"type": "ack", "payload": {"message": "Real time text to speach connection establesh"}}
TTS_END = {"type": "end", "payload": {"message": "End of TTS stream"}}
NOT_WAV = "Only WAV files are supported"
SHORT_RESPONSE_BYTES = 640  # §4: ack, one 640-byte frame, end, no error

# §1.6 close codes.
CLOSE_IDLE = 1000
CLOSE_AUTH = 4001
CLOSE_WALLET = 4003
CLOSE_INTERNAL = 4500

TTS_FAULTS = frozenset(
    {"short", "error", "drop", "stall", "gap", "riff", "wallet", "auth", "internal"}
)
STT_FAULTS = frozenset({"thinking", "error", "stall", "close", "drop"})
REST_FAULTS = frozenset({"drop", "error", "rate_limit"})

DEFAULT_STT_SCRIPT = (
    "مرحبا، أريد أن أسأل عن طلبي",
    "رقم الطلب هو واحد اثنان ثلاثة",
    "شكرا جزيلا",
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Simulator knobs. Defaults are realistic (§1.4 OBSERVED timings); tests use ms values."""

    api_key: str = ""  # accepted key; "" accepts any key, even none
    auth_failure: str = "close"  # "close": accept then close 4001; "http": refuse with 401
    connect_delay: float = 1.2  # seconds before the upgrade completes
    first_audio_delay: float = 0.3  # seconds from request to first audio frame
    realtime_factor: float = 3.0  # audio seconds synthesized per wall-clock second
    first_frame_bytes: int = 16018  # §1.4 OBSERVED first frame
    # When above first_frame_bytes: each first frame is drawn uniformly from
    # [first_frame_bytes, first_frame_bytes_max] (§1.4 saw 7,398 and 16,018 bytes).
    first_frame_bytes_max: int = 0
    frame_bytes_min: int = 32768  # §1.4 OBSERVED later frames: 32-64 KB
    frame_bytes_max: int = 65536
    stt_delay: float = 0.3  # seconds from STT request to transcript
    stt_script: tuple[str, ...] = DEFAULT_STT_SCRIPT  # transcripts, served in turn
    short_response_rate: float = 0.0  # probability of the 640-byte failure per TTS request
    error_rate: float = 0.0  # probability of an error frame per request
    drop_rate: float = 0.0  # probability of a lost connection mid-stream
    error_message: str = "Internal server error"  # GUESSED text (§1.4 only shape is known)
    riff_header: bool = False  # prefix every WS TTS stream with a RIFF header
    wallet_empty: bool = False
    ws_down: bool = False
    thinking_on_eos: bool = False  # with isEosEnabled, answer [THINKING] and then nothing
    idle_timeout: float = 3600.0  # §1.6: close 1000 after 60 minutes idle
    ping_interval: float = 30.0  # §1.6: server pings every 30 s
    stall_seconds: float = 3600.0  # how long a "stall" fault stays silent
    rest_stream_riff: bool = True  # tts-stream body starts with RIFF (else bare PCM)
    rest_stt_envelope: bool = True  # {"success","data":{"text"}} (else {"text"})
    rest_chunk_bytes: int = 8191  # odd on purpose: chunks do not align with samples (§2.3)
    tts_faults: tuple[str, ...] = ()  # initial per-request TTS fault plan
    stt_faults: tuple[str, ...] = ()
    rest_faults: tuple[str, ...] = ()
    seed: int = 1
    espeak: str | None = None  # espeak-ng path; None finds it on PATH, "" disables it
    ms_per_char: float = 70.0  # length of the synthetic voice per character


# The TTS delivery pattern measured on real Hamsa calls (issue 11; hamsa.md §1.4): a small
# first frame (16,018 bytes: 0.5 s of audio), then 1-2 s frames arriving about 3 times as
# fast as they play. Without a playout scheduler a reply's second frame often lands after
# its first has played out: the 80-300 ms dropout 0.4-0.5 s into a prompt heard on real
# calls. The playout scheduler (gateway/agent/playout.py) is benchmarked against it.
OBSERVED_DELIVERY: dict[str, float] = {
    "first_audio_delay": 0.28,
    "first_frame_bytes": 16018,
    "first_frame_bytes_max": 0,
    "frame_bytes_min": 32768,
    "frame_bytes_max": 65536,
    "realtime_factor": 3.0,
}
# The same pattern at the slow end of what was reported: issue 11 says "~2x real time", and
# §1.4 also saw a 7,398-byte (0.23 s) first frame; here each first frame is drawn from
# 7,398-16,018 bytes. A sentence then needs up to ~0.8 s of hold instead of ~0.2 s.
OBSERVED_SLOW_DELIVERY: dict[str, float] = {
    **OBSERVED_DELIVERY,
    "first_frame_bytes": 7398,
    "first_frame_bytes_max": 16018,
    "realtime_factor": 2.0,
}
DELIVERY_PRESETS: dict[str, dict[str, float]] = {
    "default": {},
    "observed": OBSERVED_DELIVERY,
    "observed-slow": OBSERVED_SLOW_DELIVERY,
}


@dataclass(slots=True)
class SimState:
    """Mutable simulator state: counters, fault queues, the outage switches."""

    config: SimConfig
    synth: SpeechSynth
    rng: random.Random
    stats: Counter[str] = field(default_factory=Counter)
    tts_faults: deque[str] = field(default_factory=deque)
    stt_faults: deque[str] = field(default_factory=deque)
    rest_faults: deque[str] = field(default_factory=deque)
    ws_down: bool = False
    wallet_empty: bool = False
    stt_index: int = 0
    open_sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)

    def next_transcript(self) -> str:
        script = self.config.stt_script or ("",)
        text = script[self.stt_index % len(script)]
        self.stt_index += 1
        return text

    def tts_fault(self) -> str | None:
        if self.tts_faults:
            return self.tts_faults.popleft()
        return self._random_fault(short=True)

    def stt_fault(self) -> str | None:
        if self.stt_faults:
            return self.stt_faults.popleft()
        return self._random_fault(short=False)

    def _random_fault(self, short: bool) -> str | None:
        c = self.config
        roll = self.rng.random()
        if short and roll < c.short_response_rate:
            return "short"
        roll -= c.short_response_rate if short else 0.0
        if roll < c.error_rate:
            return "error"
        roll -= c.error_rate
        if roll < c.drop_rate:
            return "drop"
        return None

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ws_connections": 0,
            "ws_accepted": 0,
            "ws_rejected": 0,
            "tts_requests": 0,
            "stt_requests": 0,
            "rest_tts_requests": 0,
            "rest_stt_requests": 0,
            "idle_closes": 0,
        }
        data.update(self.stats)
        data["ws_open"] = len(self.open_sockets)
        data["tts_faults_pending"] = list(self.tts_faults)
        data["stt_faults_pending"] = list(self.stt_faults)
        data["audio_source"] = self.synth.source
        return data


SIM_STATE = web.AppKey("hamsa_sim_state", SimState)


def _frame_sizes(total: int, config: SimConfig, rng: random.Random, scale: float) -> Iterator[int]:
    """Observed frame sizes (§1.4): ~16 KB first, then 32-64 KB, scaled for μ-law."""
    first_bytes = config.first_frame_bytes
    if config.first_frame_bytes_max > first_bytes:
        first_bytes = rng.randint(first_bytes, config.first_frame_bytes_max)
    first = max(2, int(first_bytes * scale) // 2 * 2)
    lo = max(2, int(config.frame_bytes_min * scale))
    hi = max(lo, int(config.frame_bytes_max * scale))
    sent = 0
    size = first
    while sent < total:
        size = min(size, total - sent)
        yield size
        sent += size
        size = rng.randint(lo, hi) // 2 * 2


def streamed_wav_header(sample_rate: int, width: int, fmt: int = 1) -> bytes:
    """A 44-byte RIFF/WAVE header with 0xFFFFFFFF sizes (the §2.3 doc sample)."""
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, fmt, 1, sample_rate, sample_rate * width, width, width * 8)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def whole_wav(audio: bytes, sample_rate: int, width: int, fmt: int = 1) -> bytes:
    """A complete WAV file (PCM, or μ-law with ``fmt=7``)."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(audio))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, fmt, 1, sample_rate, sample_rate * width, width, width * 8)
        + b"data"
        + struct.pack("<I", len(audio))
        + audio
    )


async def _tts_audio(state: SimState, payload: dict[str, Any]) -> tuple[bytes, int, int, int]:
    """(audio, sample rate, sample width, WAV format code) for a validated TTS payload."""
    text = payload["text"]
    if payload.get("mulaw") is True:
        return await state.synth.mulaw8k(text), 8000, 1, 7
    pcm = await state.synth.pcm16k(text)
    if payload.get("sampleRate") == "8k":
        # PCM16 at 8 kHz (secondary source [VLL]); rare, so not cached.
        return resample(pcm, 16000, 8000), 8000, 2, 1
    return pcm, 16000, 2, 1


def _validate_tts(payload: Any) -> str | None:
    """An error message for a bad TTS payload, or None. GUESSED texts (§6.3)."""
    if not isinstance(payload, dict):
        return "payload is required"
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > 2000:
        return "text must be between 1 and 2000 characters"
    speaker = payload.get("speaker")
    if not isinstance(speaker, str) or not speaker:
        return "speaker is required"
    if payload.get("mulaw") is True and payload.get("sampleRate") is not None:
        return "sampleRate must not be combined with mulaw"
    return None


def _is_wav(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


# ------------------------------------------------------------------------- websocket


def _ws_key(request: web.Request) -> str:
    return request.headers.get("X-Api-Key") or request.query.get("api_key", "")


async def _ws_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    config = state.config
    state.stats["ws_connections"] += 1
    await asyncio.sleep(config.connect_delay)
    if state.ws_down:
        state.stats["ws_rejected"] += 1
        return web.json_response({"code": 503, "message": "Service unavailable"}, status=503)
    key_ok = not config.api_key or _ws_key(request) == config.api_key
    if not key_ok and config.auth_failure == "http":
        state.stats["ws_rejected"] += 1
        return web.json_response({"code": 401, "message": "Unauthorized"}, status=401)
    ws = web.WebSocketResponse(heartbeat=config.ping_interval, max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    state.open_sockets.add(ws)
    try:
        if not key_ok:
            state.stats["ws_rejected"] += 1
            await ws.close(code=CLOSE_AUTH, message=b"Authentication failed")
            return ws
        if state.wallet_empty:
            state.stats["ws_rejected"] += 1
            await ws.close(code=CLOSE_WALLET, message=b"Insufficient funds")
            return ws
        state.stats["ws_accepted"] += 1
        await ws.send_json(GREETING)
        await _serve_socket(request, ws, state)
    except ConnectionError as exc:
        # The client vanished mid-answer (a caller hung up and the gateway dropped its
        # socket): the ordinary end of a call, not an error. ClientConnectionResetError
        # ("Cannot write to closing transport") is a ConnectionResetError.
        state.stats["client_gone"] += 1
        log.debug("client went away during a request: %r", exc)
    finally:
        state.open_sockets.discard(ws)
    return ws


async def _serve_socket(request: web.Request, ws: web.WebSocketResponse, state: SimState) -> None:
    config = state.config
    backlog: deque[WSMessage] = deque()  # requests that arrived while a fault stalled us
    while not ws.closed:
        try:
            msg = backlog.popleft() if backlog else await ws.receive(timeout=config.idle_timeout)
        except TimeoutError:
            state.stats["idle_closes"] += 1
            await ws.close(code=CLOSE_IDLE, message=b"Closed due to inactivity")
            return
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
        if msg.type is not WSMsgType.TEXT:
            await _send_error(ws, "Invalid message format")
            continue
        try:
            message = json.loads(msg.data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await _send_error(ws, "Invalid message format")
            continue
        kind = message.get("type")
        payload = message.get("payload")
        if kind == "tts":
            keep_open = await _serve_tts(request, ws, state, payload, backlog)
        elif kind == "stt":
            keep_open = await _serve_stt(request, ws, state, payload, backlog)
        else:
            await _send_error(ws, "Unknown message type")
            keep_open = True
        if not keep_open:
            return


async def _send_error(ws: web.WebSocketResponse, message: str) -> None:
    await ws.send_json({"type": "error", "payload": {"message": message}})


async def _close_with(ws: web.WebSocketResponse, fault: str) -> None:
    codes = {
        "wallet": (CLOSE_WALLET, b"Insufficient funds"),
        "auth": (CLOSE_AUTH, b"Authentication failed"),
        "internal": (CLOSE_INTERNAL, b"Internal authentication error"),
    }
    code, reason = codes[fault]
    await ws.close(code=code, message=reason)


def _drop(request: web.Request) -> None:
    """Lose the connection without a close frame (the client sees 1006)."""
    if request.transport is not None:
        request.transport.abort()


async def _stall(ws: web.WebSocketResponse, seconds: float, backlog: deque[WSMessage]) -> bool:
    """Go silent for ``seconds``; requests arriving meanwhile wait in ``backlog`` (served in
    order afterwards). Returns False if the client closed the socket meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not ws.closed:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return True
        try:
            msg = await ws.receive(timeout=remaining)
        except TimeoutError:
            return True
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return False
        backlog.append(msg)
    return False


async def _serve_tts(
    request: web.Request,
    ws: web.WebSocketResponse,
    state: SimState,
    payload: Any,
    backlog: deque[WSMessage],
) -> bool:
    """Serve one TTS request; False when the socket is finished."""
    config = state.config
    state.stats["tts_requests"] += 1
    problem = _validate_tts(payload)
    if problem is not None:
        await _send_error(ws, problem)
        return True
    fault = state.tts_fault()
    if fault is not None:
        state.stats[f"fault_tts_{fault}"] += 1
    if state.wallet_empty or fault in ("wallet", "auth", "internal"):
        await _close_with(ws, fault if fault in ("auth", "internal") else "wallet")
        return False
    if fault == "error":
        await asyncio.sleep(config.first_audio_delay)
        await _send_error(ws, config.error_message)
        return True
    audio_task = asyncio.ensure_future(_tts_audio(state, payload))
    try:
        await ws.send_json(TTS_ACK)
    except BaseException:
        audio_task.cancel()  # never leave the synthesis running (or its error unretrieved)
        raise
    if fault == "stall":
        audio_task.cancel()
        return await _stall(ws, config.stall_seconds, backlog)
    audio, rate, width, fmt = await audio_task
    await asyncio.sleep(config.first_audio_delay)
    if fault == "short":
        state.stats["short_responses"] += 1
        await ws.send_bytes(audio[:SHORT_RESPONSE_BYTES].ljust(SHORT_RESPONSE_BYTES, b"\0"))
        await ws.send_json(TTS_END)
        return True
    if config.riff_header or fault == "riff":
        audio = streamed_wav_header(rate, width, fmt) + audio
    bytes_per_second = rate * width
    scale = bytes_per_second / 32000
    offset = 0
    for index, size in enumerate(_frame_sizes(len(audio), config, state.rng, scale)):
        if index:
            # Synthesis runs `realtime_factor` times faster than playback.
            await asyncio.sleep(size / bytes_per_second / config.realtime_factor)
        if ws.closed:
            return False
        await ws.send_bytes(audio[offset : offset + size])
        offset += size
        if index == 0 and fault == "drop":
            _drop(request)
            return False
        if index == 0 and fault == "gap":
            return await _stall(ws, config.stall_seconds, backlog)
    await ws.send_json(TTS_END)
    return True


async def _serve_stt(
    request: web.Request,
    ws: web.WebSocketResponse,
    state: SimState,
    payload: Any,
    backlog: deque[WSMessage],
) -> bool:
    config = state.config
    state.stats["stt_requests"] += 1
    if not isinstance(payload, dict):
        await _send_error(ws, "payload is required")
        return True
    audio_list = payload.get("audioList")
    encoded = payload.get("audioBase64")
    if isinstance(encoded, str) and audio_list is None:
        try:
            audio = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            audio = b""
        if not _is_wav(audio):
            await _send_error(ws, NOT_WAV)
            return True
    elif not (isinstance(audio_list, list) and encoded is None):
        await _send_error(ws, "Either audioBase64 or audioList must be provided, not both")
        return True
    fault = state.stt_fault()
    if fault is not None:
        state.stats[f"fault_stt_{fault}"] += 1
    await asyncio.sleep(config.stt_delay)
    if fault == "thinking" or (payload.get("isEosEnabled") is True and config.thinking_on_eos):
        await ws.send_str("[THINKING]")
        return await _stall(ws, config.stall_seconds, backlog)
    if fault == "error":
        await _send_error(ws, "Error generating transcription: " + config.error_message)
        return True
    if fault == "stall":
        return await _stall(ws, config.stall_seconds, backlog)
    if fault == "close":
        await ws.close(code=CLOSE_IDLE, message=b"")
        return False
    if fault == "drop":
        _drop(request)
        return False
    await ws.send_str(state.next_transcript())
    return True


# ------------------------------------------------------------------------------ REST


def _rest_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _rest_auth(request: web.Request, state: SimState) -> web.Response | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme not in ("Token", "Bearer") or not key:
        return _rest_error(401, 401, "Unauthorized")
    if state.config.api_key and key != state.config.api_key:
        return _rest_error(401, 401, "Unauthorized")
    return None


async def _rest_json(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _rest_tts_common(
    request: web.Request,
) -> tuple[SimState, dict[str, Any] | None, web.Response | None]:
    state = request.app[SIM_STATE]
    state.stats["rest_tts_requests"] += 1
    refused = _rest_auth(request, state)
    if refused is not None:
        return state, None, refused
    body = await _rest_json(request)
    problem = "body must be a JSON object" if body is None else _validate_tts(body)
    if problem is not None:
        return state, None, _rest_error(400, 400, problem)
    if state.wallet_empty:
        return (
            state,
            None,
            _rest_error(429, 10429, "You have reached your text-to-speech usage limit!"),
        )
    fault = state.rest_faults.popleft() if state.rest_faults else None
    if fault == "error":
        return state, None, _rest_error(500, 500, state.config.error_message)
    if fault == "rate_limit":
        return state, None, _rest_error(429, 429, "Rate limit exceeded")
    if fault == "drop":
        assert body is not None
        body["_fault"] = "drop"
    return state, body, None


async def _rest_tts(request: web.Request) -> web.StreamResponse:
    state, body, refused = await _rest_tts_common(request)
    if refused is not None or body is None:
        return refused or _rest_error(400, 400, "bad request")
    audio, rate, width, fmt = await _tts_audio(state, body)
    await asyncio.sleep(state.config.first_audio_delay)
    return web.Response(body=whole_wav(audio, rate, width, fmt), content_type="audio/wav")


async def _rest_tts_stream(request: web.Request) -> web.StreamResponse:
    state, body, refused = await _rest_tts_common(request)
    if refused is not None or body is None:
        return refused or _rest_error(400, 400, "bad request")
    config = state.config
    audio, rate, width, fmt = await _tts_audio(state, body)
    if config.rest_stream_riff:
        audio = streamed_wav_header(rate, width, fmt) + audio
    response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await asyncio.sleep(config.first_audio_delay)
    step = max(1, config.rest_chunk_bytes)
    per_chunk = step / (rate * width) / config.realtime_factor
    try:
        for index, offset in enumerate(range(0, len(audio), step)):
            if index:
                await asyncio.sleep(per_chunk)
            await response.write(audio[offset : offset + step])
            if body.get("_fault") == "drop":
                _drop(request)  # a torn chunked body (§4)
                return response
        await response.write_eof()
    except ConnectionError as exc:
        # The client hung up mid-stream: ordinary, not an error (see _ws_handler).
        state.stats["client_gone"] += 1
        log.debug("REST client went away mid-stream: %r", exc)
    return response


async def _rest_stt(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    state.stats["rest_stt_requests"] += 1
    refused = _rest_auth(request, state)
    if refused is not None:
        return refused
    body = await _rest_json(request)
    if body is None:
        return _rest_error(400, 400, "body must be a JSON object")
    encoded = body.get("audioBase64")
    try:
        audio = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        audio = b""
    if not _is_wav(audio) and not isinstance(body.get("audioList"), list):
        return _rest_error(400, 400, NOT_WAV)
    fault = state.rest_faults.popleft() if state.rest_faults else None
    if fault == "error":
        return _rest_error(500, 500, state.config.error_message)
    if fault == "rate_limit":
        return _rest_error(429, 429, "Rate limit exceeded")
    await asyncio.sleep(state.config.stt_delay)
    text = state.next_transcript()
    if state.config.rest_stt_envelope:
        return web.json_response(
            {
                "success": True,
                "message": "Transcription generated successfully",
                "data": {"text": text},
            }
        )
    return web.json_response({"text": text})


# --------------------------------------------------------------------------- control


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_STATE].snapshot())


async def _faults(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    body = await _rest_json(request)
    if body is None:
        return _rest_error(400, 400, "body must be a JSON object")
    for name, allowed, queue in (
        ("tts", TTS_FAULTS, state.tts_faults),
        ("stt", STT_FAULTS, state.stt_faults),
        ("rest", REST_FAULTS, state.rest_faults),
    ):
        items = body.get(name, [])
        if not isinstance(items, list) or not all(i in allowed for i in items):
            return _rest_error(400, 400, f"{name} faults must be a list of {sorted(allowed)}")
        queue.extend(items)
    for switch in ("ws_down", "wallet_empty"):
        if isinstance(body.get(switch), bool):
            setattr(state, switch, body[switch])
    return web.json_response(state.snapshot())


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[SIM_STATE].open_sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutting down")


def create_sim_app(config: SimConfig | None = None) -> web.Application:
    """The simulator as an aiohttp application (tests run it on port 0)."""
    config = config or SimConfig()
    for name, allowed, plan in (
        ("tts", TTS_FAULTS, config.tts_faults),
        ("stt", STT_FAULTS, config.stt_faults),
        ("rest", REST_FAULTS, config.rest_faults),
    ):
        unknown = set(plan) - allowed
        if unknown:
            raise ValueError(f"unknown {name} faults: {sorted(unknown)}")
    app = web.Application()
    app[SIM_STATE] = SimState(
        config=config,
        synth=SpeechSynth(espeak=config.espeak, ms_per_char=config.ms_per_char),
        rng=random.Random(config.seed),
        tts_faults=deque(config.tts_faults),
        stt_faults=deque(config.stt_faults),
        rest_faults=deque(config.rest_faults),
        ws_down=config.ws_down,
        wallet_empty=config.wallet_empty,
    )
    app.router.add_get("/v1/realtime/ws", _ws_handler)
    app.router.add_post("/v1/realtime/tts", _rest_tts)
    app.router.add_post("/v1/realtime/tts-stream", _rest_tts_stream)
    app.router.add_post("/v1/realtime/stt", _rest_stt)
    app.router.add_get("/sim/stats", _stats)
    app.router.add_post("/sim/faults", _faults)
    app.on_shutdown.append(_close_sockets)
    return app


async def start_embedded(
    config: SimConfig | None = None,
) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Serve the simulator on an ephemeral 127.0.0.1 port inside this process.

    Returns its base URL and the coroutine function that stops it (for
    :class:`gateway.speech.hamsa.service.HamsaService`'s ``simulator=``).
    """
    runner = web.AppRunner(create_sim_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", runner.cleanup


async def run_sim(host: str, port: int, config: SimConfig | None = None) -> None:
    """Serve the simulator until cancelled."""
    app = create_sim_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.warning(
            "Hamsa SIMULATOR listening on http://%s:%s (audio: %s)",
            host,
            port,
            app[SIM_STATE].synth.source,
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _parser() -> argparse.ArgumentParser:
    d = SimConfig()
    p = argparse.ArgumentParser(prog="gateway sim-hamsa", description="Local Hamsa simulator.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--api-key", default=d.api_key, help="accepted key ('' accepts any)")
    p.add_argument("--auth-failure", choices=("close", "http"), default=d.auth_failure)
    for name in (
        "connect_delay",
        "first_audio_delay",
        "realtime_factor",
        "stt_delay",
        "short_response_rate",
        "error_rate",
        "drop_rate",
        "idle_timeout",
        "ping_interval",
        "ms_per_char",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    for name in (
        "first_frame_bytes",
        "first_frame_bytes_max",
        "frame_bytes_min",
        "frame_bytes_max",
        "rest_chunk_bytes",
        "seed",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument(
        "--delivery",
        choices=sorted(DELIVERY_PRESETS),
        default="default",
        help="TTS delivery preset; 'observed' = real Hamsa's small first frame then 1-2 s "
        "frames at 3x real time, 'observed-slow' = the same at 2x with a 0.23-0.5 s first "
        "frame (both override the frame-size, first-audio and realtime-factor knobs)",
    )
    p.add_argument("--riff-header", action="store_true", help="RIFF header on WS TTS audio")
    p.add_argument("--wallet-empty", action="store_true")
    p.add_argument("--thinking-on-eos", action="store_true", help="[THINKING] when EOS is on")
    p.add_argument("--rest-raw-pcm", action="store_true", help="tts-stream without RIFF header")
    p.add_argument("--rest-stt-plain", action="store_true", help='stt reply {"text"} only')
    p.add_argument("--stt-script", help="file with one transcript per line")
    p.add_argument("--no-espeak", action="store_true", help="always use the synthetic voice")
    return p


def sim_main(argv: list[str]) -> int:
    """CLI entry (``gateway sim-hamsa``): parse knobs, serve until interrupted."""
    args = _parser().parse_args(argv)
    script: tuple[str, ...] = DEFAULT_STT_SCRIPT
    if args.stt_script:
        try:
            with open(args.stt_script, encoding="utf-8") as f:
                script = tuple(line.strip() for line in f if line.strip())
        except OSError as exc:
            print(f"sim-hamsa: cannot read --stt-script: {exc}")
            return 2
    config = SimConfig(
        api_key=args.api_key,
        auth_failure=args.auth_failure,
        connect_delay=args.connect_delay,
        first_audio_delay=args.first_audio_delay,
        realtime_factor=args.realtime_factor,
        stt_delay=args.stt_delay,
        short_response_rate=args.short_response_rate,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        idle_timeout=args.idle_timeout,
        ping_interval=args.ping_interval,
        ms_per_char=args.ms_per_char,
        first_frame_bytes=args.first_frame_bytes,
        first_frame_bytes_max=args.first_frame_bytes_max,
        frame_bytes_min=args.frame_bytes_min,
        frame_bytes_max=args.frame_bytes_max,
        rest_chunk_bytes=args.rest_chunk_bytes,
        seed=args.seed,
        riff_header=args.riff_header,
        wallet_empty=args.wallet_empty,
        thinking_on_eos=args.thinking_on_eos,
        rest_stream_riff=not args.rest_raw_pcm,
        rest_stt_envelope=not args.rest_stt_plain,
        stt_script=script,
        espeak="" if args.no_espeak else None,
    )
    preset = DELIVERY_PRESETS[args.delivery]
    if preset:
        config = replace(
            config,
            first_audio_delay=preset["first_audio_delay"],
            first_frame_bytes=int(preset["first_frame_bytes"]),
            first_frame_bytes_max=int(preset["first_frame_bytes_max"]),
            frame_bytes_min=int(preset["frame_bytes_min"]),
            frame_bytes_max=int(preset["frame_bytes_max"]),
            realtime_factor=preset["realtime_factor"],
        )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_sim(args.host, args.port, config))
    return 0
