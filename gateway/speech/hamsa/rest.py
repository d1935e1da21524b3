"""Hamsa REST fallback: ``POST /v1/realtime/tts-stream`` and ``POST /v1/realtime/stt``.

Used when the realtime socket keeps failing (``hamsa.md`` §2). Facts applied:

* §2.1 auth ``Authorization: Token <key>``; error bodies ``{"code": int, "message": str}``:
  401 -> auth (fatal), 429 with code 10429 ("usage limit") -> quota (fatal), other 429 ->
  rate limit, 400 -> bad request, 5xx -> server.
* §2.3 tts-stream: a chunked ``audio/wav`` body that may start with a RIFF header (with
  0xFFFFFFFF sizes) or be bare PCM (both measured): ``telecodecs.wav.RiffStripper`` sniffs
  it and carries odd bytes (chunk boundaries do not align with samples). A torn body is a
  failed synthesis. Rate undocumented: read as PCM16 16 kHz / μ-law 8 kHz, like the socket.
* §2.4 stt: body ``{"audioBase64", "language", "isEosEnabled": false, "eosThreshold"}``;
  the reply is ``{"text"}`` per the docs or ``{"success", "data": {"text"}}`` per the
  official plugin: both are accepted.

One ``aiohttp.ClientSession`` is passed in (owned by the application). Error texts never
contain the key.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.protocol import ErrorKind
from telecodecs.wav import RiffStripper

TTS_STREAM_PATH = "/v1/realtime/tts-stream"
STT_PATH = "/v1/realtime/stt"
READ_CHUNK = 8192  # what the official plugin reads per chunk ([O-LK])
QUOTA_CODE = 10429  # §2.1: "You have reached your text-to-speech usage limit!"


def _kind_for(status: int, code: object, message: str) -> ErrorKind:
    if status == 401 or status == 403:
        return ErrorKind.AUTH
    if status == 429:
        if code == QUOTA_CODE or "usage limit" in message.lower():
            return ErrorKind.QUOTA
        return ErrorKind.RATE_LIMIT
    if 400 <= status < 500:
        return ErrorKind.BAD_REQUEST
    return ErrorKind.SERVER


class HamsaRest:
    """REST client for the fallback path. ``repr`` never shows the key."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        *,
        speaker: str,
        dialect: str,
        language: str = "ar",
        timeout: float = 30.0,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Token {api_key}"}
        self._speaker = speaker
        self._dialect = dialect
        self._language = language
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        return f"<HamsaRest {self._base}>"

    async def tts_stream(self, text: str, *, mulaw: bool = False) -> AsyncGenerator[bytes, None]:
        """Audio of ``text`` as it arrives: whole samples, any RIFF header removed."""
        body = {"text": text, "speaker": self._speaker, "dialect": self._dialect, "mulaw": mulaw}
        stripper = RiffStripper(1 if mulaw else 2)
        try:
            async with self._http.post(
                self._base + TTS_STREAM_PATH,
                json=body,
                headers=self._headers,
                timeout=self._timeout,
            ) as resp:
                await _raise_for_status(resp, "tts-stream")
                async for chunk in resp.content.iter_chunked(READ_CHUNK):
                    audio = stripper.feed(chunk)
                    if audio:
                        yield audio
        except aiohttp.ClientPayloadError:
            raise HamsaError("tts-stream body torn mid-way", ErrorKind.CLOSED) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise HamsaError(
                f"tts-stream failed ({type(exc).__name__})", ErrorKind.CONNECT
            ) from None
        except TimeoutError:
            raise HamsaError("tts-stream timed out", ErrorKind.TIMEOUT) from None
        tail = stripper.flush()
        if tail:
            yield tail

    async def stt(self, wav: bytes) -> str:
        """Transcript of one whole WAV utterance."""
        body = {
            "audioBase64": base64.b64encode(wav).decode("ascii"),
            "language": self._language,
            "isEosEnabled": False,
            "eosThreshold": 0.3,
        }
        try:
            async with self._http.post(
                self._base + STT_PATH, json=body, headers=self._headers, timeout=self._timeout
            ) as resp:
                await _raise_for_status(resp, "stt")
                reply = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise HamsaError(f"stt failed ({type(exc).__name__})", ErrorKind.CONNECT) from None
        except TimeoutError:
            raise HamsaError("stt timed out", ErrorKind.TIMEOUT) from None
        return _transcript(reply)


def _transcript(reply: Any) -> str:
    """§2.4: ``{"text"}`` (docs) or ``{"success", "data": {"text"}}`` (official plugin)."""
    if isinstance(reply, dict):
        data = reply.get("data")
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            return str(data["text"]).strip()
        if isinstance(reply.get("text"), str):
            return str(reply["text"]).strip()
    raise HamsaError("stt reply has no text", ErrorKind.PROTOCOL)


async def _raise_for_status(resp: aiohttp.ClientResponse, what: str) -> None:
    if resp.status == 200:
        return
    code: object = None
    message = ""
    try:
        body = await resp.json(content_type=None)
        if isinstance(body, dict):
            code = body.get("code")
            message = str(body.get("message", ""))[:200]
    except (ValueError, aiohttp.ClientError):
        pass
    kind = _kind_for(resp.status, code, message)
    raise HamsaError(f"{what} refused with HTTP {resp.status}: {message}", kind)
