"""``gateway call`` and ``gateway demo``: place a simulated call and show where the time went.

``gateway call`` behaves like Twilio towards a running gateway: it fetches TwiML from
``/twilio/voice`` (signed with ``X-Twilio-Signature`` when a token is given), opens the
``<Stream>`` URL it names (signed too), then streams the caller's "microphone" continuously in
20 ms frames (speech when an utterance is due, silence otherwise, as a real call does), plays
the gateway's audio in real time (marks echoed only once played, ``clear`` honoured), records
what the caller heard into a WAV file and prints a per-turn latency waterfall.

Utterances come from WAV files (``--wav``) or text (``--say``), synthesized the same way as the
Hamsa simulator's TTS (espeak-ng when installed, a deterministic speech-like signal otherwise).

``gateway demo`` starts a gateway with its embedded defaults (Hamsa simulator, built-in echo
agent) on a free port, calls it once with a bundled Arabic utterance, saves the reply audio,
prints the latency table and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import aiohttp
import numpy as np

from gateway.sim.speech_synth import SpeechSynth
from gateway.sim.twilio_caller import FRAME_BYTES, FRAME_SECONDS, ULAW_SILENCE, TwilioCaller
from gateway.telephony.twilio_signature import compute_signature
from telecodecs.audiofile import load_audio
from telecodecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from telecodecs.resample import resample
from telecodecs.wav import build_wav

DEMO_UTTERANCE = "demo_utterance.wav"  # bundled: espeak-ng Arabic, generated, license-free
VOICED_RMS = 300  # PCM16 RMS above which a caller frame counts as speech (line noise is ~30)
QUIET_SECONDS = 1.5  # a reply is over when nothing new arrived and all of it played this long
REPLY_TIMEOUT = 30.0


@dataclass(slots=True)
class TurnTiming:
    """Caller-side times (monotonic) of one turn."""

    speech_end: float
    first_audio_heard: float | None = None


@dataclass(slots=True)
class CallReport:
    """What the caller saw of one call. ``hung_up_at``: seconds into the call when the gateway
    hung up while the caller still had something to say, else None."""

    call_sid: str
    turned_away: bool = False
    greeting_heard: bool = False
    turns: list[TurnTiming] = field(default_factory=list)
    heard_ulaw: bytes = b""
    close_code: int | None = None
    utterances: int = 0
    hung_up_at: float | None = None


# Exit status of ``gateway call`` (and ``gateway demo``); README "Tools" and --help list them.
EXIT_OK = 0
EXIT_NOT_HEARD = 1
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_REFUSED = 5

EXIT_STATUS_HELP = """\
exit status:
  0  the call went through: the greeting and a reply to every utterance were heard
  1  the call went through, but the greeting or a reply was not heard, or the gateway
     hung up before the caller had said everything
  2  bad command line
  3  the gateway could not be reached (connection refused, unknown host)
  4  the gateway refused the credentials: HTTP 401/403 (Twilio signature, or the
     chan_websocket user and password)
  5  the gateway turned the call away (busy, draining, at capacity) or answered an
     unexpected HTTP status
"""


class CallFailed(Exception):
    """The call could not be placed: a one-line reason for the user and the exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _unreachable(url: str, exc: BaseException) -> CallFailed:
    reason = getattr(getattr(exc, "os_error", None), "strerror", None) or str(exc) or type(exc)
    return CallFailed(
        f"cannot reach the gateway at {url}: {reason} (is it running? `make dev` starts one)",
        EXIT_UNREACHABLE,
    )


def _refused_signature(status: int, what: str, signed_url: str, token: str) -> CallFailed:
    if not token:
        hint = (
            "no --token was given: the gateway refuses unsigned Twilio requests unless it runs "
            "with TWILIO_ALLOW_UNSIGNED=true; pass --token = its TWILIO_AUTH_TOKEN"
        )
    else:
        hint = (
            "the gateway checks its PUBLIC_URL with its TWILIO_AUTH_TOKEN: pass --public-url "
            "and --token as the gateway has them"
        )
    return CallFailed(
        f"the gateway refused the Twilio signature (HTTP {status}) on {what}: signed "
        f"{signed_url}; {hint}",
        EXIT_AUTH,
    )


def _line_dead(task: asyncio.Task[None]) -> bool:
    """True if the microphone stopped because the gateway closed the connection."""
    return task.done() and not task.cancelled() and task.exception() is not None


async def _stop_microphone(task: asyncio.Task[None]) -> None:
    """Stop the microphone; a send that failed because the gateway hung up is not an error."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, aiohttp.ClientError):
        await task


class Microphone:
    """The caller's audio: queued speech, otherwise silence, one 20 ms frame per tick.

    Carriers send audio continuously, silence included (that is how the gateway's endpointer
    sees the end of an utterance). ``send`` writes one frame in the transport's format;
    ``say`` takes 8 kHz μ-law and ``encode`` converts it to that format.
    """

    def __init__(
        self,
        call: TwilioCaller | None = None,
        *,
        send: Callable[[bytes], Awaitable[None]] | None = None,
        encode: Callable[[bytes], bytes] = bytes,
    ) -> None:
        if send is None:
            if call is None:
                raise ValueError("Microphone needs a TwilioCaller or a send function")
            send = call.send_frame
        self._send = send
        self._encode = encode
        self._silence = encode(ULAW_SILENCE * FRAME_BYTES)
        self._frames: deque[bytes] = deque()

    def say(self, ulaw: bytes) -> float:
        """Queue speech; return the monotonic time its last *voiced* frame will be sent.

        Trailing silence in the recording does not count as speech: the turn's clock starts
        when the caller stops speaking, as the gateway's endpointer sees it.
        """
        queued_before = len(self._frames)
        last_voiced = 0
        for index, offset in enumerate(range(0, len(ulaw), FRAME_BYTES)):
            frame = ulaw[offset : offset + FRAME_BYTES].ljust(FRAME_BYTES, ULAW_SILENCE)
            self._frames.append(self._encode(frame))
            if _is_voiced(ulaw_to_pcm16(frame)):
                last_voiced = index + 1
        return time.monotonic() + (queued_before + last_voiced) * FRAME_SECONDS

    async def run(self) -> None:
        start = time.monotonic()
        index = 0
        while True:
            delay = start + index * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send(self._frames.popleft() if self._frames else self._silence)
            index += 1


def _is_voiced(pcm: bytes) -> bool:
    if not pcm:
        return False
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples))) > VOICED_RMS


class HeardClock:
    """When did the caller hear reply audio? Polls a growing "heard" buffer (PCM16 8 kHz).

    For transports whose fake peer records what it played but not when (Asterisk), a 20 ms
    poll marks the time each voiced stretch was heard.
    """

    def __init__(self, heard: Callable[[], bytes]) -> None:
        self._heard = heard
        self._seen = 0
        self.voiced_at: list[float] = []

    def poll(self) -> None:
        data = self._heard()
        fresh, self._seen = data[self._seen :], len(data)
        for offset in range(0, len(fresh) - 319, 320):
            if _is_voiced(fresh[offset : offset + 320]):
                self.voiced_at.append(time.monotonic())
                return

    def first_after(self, since: float) -> float | None:
        return next((t for t in self.voiced_at if t >= since), None)

    async def wait_reply(
        self, since: float, timeout: float, alive: Callable[[], bool] = lambda: True
    ) -> float | None:
        """Wait for reply audio heard after ``since`` and then quiet; return when it began.

        Returns early (with what was heard so far) once ``alive()`` turns false.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(FRAME_SECONDS)
            self.poll()
            if not alive():
                break
            first = self.first_after(since)
            if first is not None and time.monotonic() - self.voiced_at[-1] >= QUIET_SECONDS:
                return first
        return self.first_after(since)


async def fetch_twiml(
    http: aiohttp.ClientSession, base_url: str, public_url: str, token: str, call_sid: str
) -> tuple[str | None, dict[str, str]]:
    """POST the voice webhook as Twilio does; return (stream URL, parameters) or (None, {})."""
    form = {
        "CallSid": call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": "+15550100",
        "To": "+15550199",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    headers = {}
    signed_url = public_url + "/twilio/voice"
    if token:
        headers["X-Twilio-Signature"] = compute_signature(token, signed_url, form)
    try:
        async with http.post(base_url + "/twilio/voice", data=form, headers=headers) as response:
            body = await response.text()
    except aiohttp.ClientConnectionError as exc:
        raise _unreachable(base_url, exc) from None
    if response.status in (401, 403):
        raise _refused_signature(response.status, "POST /twilio/voice", signed_url, token)
    if response.status != 200:
        raise CallFailed(
            f"the voice webhook answered HTTP {response.status}: {body.strip()[:200]}",
            EXIT_REFUSED,
        )
    root = ElementTree.fromstring(body)
    stream = root.find("./Connect/Stream")
    if stream is None:
        return None, {}
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url"), params


async def place_twilio_call(
    base_url: str,
    utterances: list[bytes],
    *,
    token: str = "",
    public_url: str | None = None,
    pause: float = 1.0,
) -> CallReport:
    """One whole simulated Twilio call against ``base_url`` (see module docstring).

    Requests are signed over ``public_url`` (the gateway's PUBLIC_URL; default: ``base_url``).
    Raises :class:`CallFailed` when the call cannot be placed; a hang-up by the gateway ends
    the call early and is reported in ``hung_up_at``.
    """
    public = (public_url or base_url).rstrip("/")
    call_sid = "CA" + uuid.uuid4().hex
    report = CallReport(call_sid, utterances=len(utterances))
    async with aiohttp.ClientSession() as http:
        stream_url, params = await fetch_twiml(http, base_url, public, token, call_sid)
        if stream_url is None:
            report.turned_away = True
            return report
        # Connect where the gateway really listens, sign the URL Twilio would have used.
        ws_url = base_url.replace("http", "ws", 1) + urlsplit(stream_url).path
        call = TwilioCaller(
            http,
            ws_url,
            public_ws_url=stream_url,
            auth_token=token,
            call_sid=call_sid,
            custom_parameters=params,
        )
        try:
            await call.connect()
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise _refused_signature(
                    exc.status, "the media socket", stream_url, token
                ) from None
            raise CallFailed(f"the media socket answered HTTP {exc.status}", EXIT_REFUSED) from None
        except aiohttp.ClientConnectionError as exc:
            raise _unreachable(ws_url, exc) from None
        started = time.monotonic()
        mic = Microphone(call)
        mic_task = asyncio.create_task(mic.run())
        try:
            report.greeting_heard = await call.wait_reply_played(
                0.0, REPLY_TIMEOUT, quiet=QUIET_SECONDS
            )
            for ulaw in utterances:
                if call.closed or _line_dead(mic_task):
                    break
                await asyncio.sleep(pause)
                speech_end = mic.say(ulaw)
                turn = TurnTiming(speech_end)
                report.turns.append(turn)
                await asyncio.sleep(max(0.0, speech_end - time.monotonic()))
                await call.wait_reply_played(speech_end, REPLY_TIMEOUT, quiet=QUIET_SECONDS)
                turn.first_audio_heard = call.first_heard_after(speech_end)
            if call.closed or _line_dead(mic_task):
                if len(report.turns) < len(utterances) or not all(
                    t.first_audio_heard for t in report.turns
                ):
                    report.hung_up_at = time.monotonic() - started
            else:
                with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                    await call.stop()
                with contextlib.suppress(TimeoutError):
                    await call.wait_closed(5.0)
        finally:
            await _stop_microphone(mic_task)
            await call.close()
        report.heard_ulaw = call.heard_audio()
        report.close_code = call.stats.closed_code
    return report


async def place_asterisk_call(
    base_url: str,
    utterances: list[bytes],
    *,
    transport: str,
    username: str = "",
    password: str = "",
    audiosocket_port: int = 9092,
    ws_path: str = "/asterisk/media",
    pause: float = 1.0,
) -> CallReport:
    """One simulated Asterisk call (chan_websocket, JSON control, μ-law; or AudioSocket slin).

    What the caller heard is on a real-time timeline for both (one 20 ms frame per tick,
    silence included), like a Twilio call's. Raises :class:`CallFailed` when the call cannot
    be placed; a hang-up by the gateway ends the call early (``hung_up_at``).
    """
    from gateway.sim.asterisk_caller import AsteriskWsCaller, AudioSocketCaller

    report = CallReport(call_sid="", utterances=len(utterances))
    async with aiohttp.ClientSession() as http:
        heard: Callable[[], bytes]
        gone: Callable[[], bool]
        if transport == "asterisk_ws":
            ws_url = base_url.replace("http", "ws", 1) + ws_path
            ws = AsteriskWsCaller(
                http,
                ws_url,
                username=username,
                password=password,
                control_format="json",
                codec="ulaw",
            )
            try:
                await ws.connect()
            except aiohttp.WSServerHandshakeError as exc:
                raise _asterisk_refused(exc.status, ws_url, username) from None
            except aiohttp.ClientConnectionError as exc:
                raise _unreachable(ws_url, exc) from None
            report.call_sid = ws.channel_id
            mic = Microphone(send=ws.send_bytes)
            heard = lambda: ulaw_to_pcm16(ws.heard_audio())  # noqa: E731
            gone = lambda: ws.closed  # noqa: E731
            closer: Callable[[], Awaitable[None]] = ws.close
        else:
            host = urlsplit(base_url).hostname or "127.0.0.1"
            sock = AudioSocketCaller(host, audiosocket_port)
            try:
                await sock.connect()
            except OSError as exc:
                raise _unreachable(f"{host}:{audiosocket_port} (AudioSocket)", exc) from None
            report.call_sid = str(sock.uuid)
            mic = Microphone(send=sock.send_audio, encode=ulaw_to_pcm16)
            heard = sock.heard_audio
            gone = lambda: sock.done  # noqa: E731
            closer = sock.close
        started = time.monotonic()
        clock = HeardClock(heard)
        mic_task = asyncio.create_task(mic.run())

        def alive() -> bool:
            return not gone() and not _line_dead(mic_task)

        try:
            greeting = await clock.wait_reply(0.0, REPLY_TIMEOUT, alive)
            report.greeting_heard = greeting is not None
            for ulaw in utterances:
                if not alive():
                    break
                await asyncio.sleep(pause)
                speech_end = mic.say(ulaw)
                await asyncio.sleep(max(0.0, speech_end - time.monotonic()))
                turn = TurnTiming(speech_end)
                report.turns.append(turn)
                turn.first_audio_heard = await clock.wait_reply(speech_end, REPLY_TIMEOUT, alive)
            if not alive() and (
                len(report.turns) < len(utterances)
                or not all(t.first_audio_heard for t in report.turns)
            ):
                report.hung_up_at = time.monotonic() - started
        finally:
            await _stop_microphone(mic_task)
            report.heard_ulaw = pcm16_to_ulaw(heard())
            await closer()
    if transport == "audiosocket" and not report.greeting_heard and not report.heard_ulaw:
        # The gateway closes a refused AudioSocket connection at once, before any audio.
        raise CallFailed(
            f"the gateway closed the AudioSocket connection without audio: is "
            f"{urlsplit(base_url).hostname} in its AUDIOSOCKET_ALLOW, and is it below MAX_CALLS?",
            EXIT_REFUSED,
        )
    return report


def _asterisk_refused(status: int, ws_url: str, username: str) -> CallFailed:
    if status == 401:
        who = f"user {username!r}" if username else "no --username"
        return CallFailed(
            f"the gateway refused the chan_websocket credentials (HTTP 401) on {ws_url} with "
            f"{who}: pass --username/--password = its ASTERISK_WS_USERNAME/ASTERISK_WS_PASSWORD "
            "(without them chan_websocket is off)",
            EXIT_AUTH,
        )
    return CallFailed(f"the chan_websocket upgrade answered HTTP {status}", EXIT_REFUSED)


def load_utterance(path: str | Path) -> bytes:
    """A WAV (or other audio file, with ffmpeg) as 8 kHz μ-law caller audio."""
    return pcm16_to_ulaw(load_audio(path, 8000))


async def synthesize_utterance(text: str) -> bytes:
    """Text -> caller audio, the same way as the Hamsa simulator's TTS."""
    pcm16k = await SpeechSynth().pcm16k(text)
    return pcm16_to_ulaw(resample(pcm16k, 16000, 8000))


def bundled_utterance() -> bytes:
    data = resources.files("gateway.sim").joinpath("assets", DEMO_UTTERANCE).read_bytes()
    path = Path(tempfile.gettempdir()) / f"gateway-{os.getpid()}-{DEMO_UTTERANCE}"
    path.write_bytes(data)
    try:
        return load_utterance(path)
    finally:
        path.unlink(missing_ok=True)


def write_wav(path: str | Path, ulaw: bytes) -> None:
    Path(path).write_bytes(build_wav(ulaw_to_pcm16(ulaw), sample_rate=8000))


def _read_record(path: str | None, call_sid: str) -> dict[str, Any] | None:
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                record: dict[str, Any] = json.loads(line)
                if record.get("call_id") == call_sid:
                    return record
    return None


def waterfall(report: CallReport, record: dict[str, Any] | None) -> str:
    """Per-turn latency table, ms after the end of the caller's speech."""
    header = (
        f"{'turn':<5}{'endpointed':>11}{'transcript':>11}{'reply text':>11}"
        f"{'audio sent':>11}{'heard (gw)':>11}{'heard':>9}"
    )
    lines = [header, "-" * len(header)]
    gateway_turns = [t for t in (record or {}).get("turns", []) if t.get("kind") == "utterance"]
    for i, turn in enumerate(report.turns):
        timings: dict[str, float] = gateway_turns[i]["timings"] if i < len(gateway_turns) else {}
        endpointed = timings.get("endpointing")
        transcript = (
            endpointed + timings["stt"] if endpointed is not None and "stt" in timings else None
        )
        reply_text = (
            transcript + timings["agent_first_text"]
            if transcript is not None and "agent_first_text" in timings
            else None
        )

        def ms(value: float | None) -> str:
            return f"{value * 1000:.0f}" if value is not None else "-"

        heard = (turn.first_audio_heard - turn.speech_end) if turn.first_audio_heard else None
        lines.append(
            f"{i + 1:<5}{ms(endpointed):>11}{ms(transcript):>11}{ms(reply_text):>11}"
            f"{ms(timings.get('turn')):>11}{ms(timings.get('heard')):>11}{ms(heard):>9}"
        )
    if not report.turns:
        lines.append("(no turns)")
    lines.append(
        "ms after the caller stopped speaking; 'heard' is measured by the caller, "
        "the other columns by the gateway (call record)"
    )
    return "\n".join(lines)


# -------------------------------------------------------------------------- CLI

DEFAULT_URL = "http://localhost:8080"
DEV_TOKEN = "dev-token"  # `make dev` / `gateway dev`: development-only credentials
DEV_ASTERISK_USER = "dev"
DEV_ASTERISK_PASSWORD = "dev-password"
DEV_AUDIOSOCKET_PORT = 9092
RECORD_WAIT = 5.0  # seconds: the gateway writes the record after call.ended (<= 3 s)


def default_public_url(url: str) -> str:
    """The URL the gateway signs against when its PUBLIC_URL is unset: http://localhost:PORT.

    ``gateway serve`` without ``PUBLIC_URL`` checks signatures over
    ``http://localhost:<its port>`` whatever address the caller used, so ``--url
    http://127.0.0.1:8080`` must still sign ``http://localhost:8080``.
    """
    port = urlsplit(url).port or (443 if url.startswith("https") else 80)
    return f"http://localhost:{port}"


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and adds each option's default to its help.

    Empty defaults are left out, and so are secrets (a default read from the environment
    must not be printed by ``--help``).
    """

    SECRET = frozenset({"token", "password"})

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest in self.SECRET or action.default in (None, "", []):
            return action.help
        return super()._get_help_string(action)


def build_call_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway call",
        description=__doc__,
        epilog=EXIT_STATUS_HELP,
        formatter_class=_Formatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="the gateway's base URL")
    parser.add_argument(
        "--transport",
        choices=("twilio", "asterisk_ws", "audiosocket"),
        default="twilio",
        help="which carrier to behave like",
    )
    parser.add_argument(
        "--public-url",
        default=os.environ.get("PUBLIC_URL") or None,
        help="twilio: the gateway's PUBLIC_URL, which requests are signed over (env PUBLIC_URL; "
        "unset: http://localhost:<port of --url>, the gateway's own default)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TWILIO_AUTH_TOKEN", ""),
        help="twilio: auth token to sign with, the gateway's TWILIO_AUTH_TOKEN "
        "(env TWILIO_AUTH_TOKEN; empty: unsigned)",
    )
    parser.add_argument(
        "--username",
        default=os.environ.get("ASTERISK_WS_USERNAME", ""),
        help="asterisk_ws: Basic user (env ASTERISK_WS_USERNAME)",
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("ASTERISK_WS_PASSWORD", ""),
        help="asterisk_ws: Basic password (env ASTERISK_WS_PASSWORD)",
    )
    parser.add_argument(
        "--audiosocket-port",
        type=int,
        default=int(os.environ.get("AUDIOSOCKET_PORT") or DEV_AUDIOSOCKET_PORT),
        help="audiosocket: the gateway's TCP port (env AUDIOSOCKET_PORT)",
    )
    parser.add_argument(
        "--say", action="append", default=[], help="an utterance as text (repeatable)"
    )
    parser.add_argument(
        "--wav", action="append", default=[], help="an utterance as a WAV file (repeatable)"
    )
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds of silence before each utterance"
    )
    parser.add_argument("--out", default="call-heard.wav", help="WAV of what the caller heard")
    parser.add_argument(
        "--record-file",
        default=os.environ.get("CALL_RECORD_PATH", ""),
        help="the gateway's CALL_RECORD_PATH: adds gateway-side timings, transcripts and "
        "replies (env CALL_RECORD_PATH)",
    )
    return parser


def call_main(argv: list[str]) -> int:
    """``gateway call``: exit status as in :data:`EXIT_STATUS_HELP`; errors are one line."""
    args = build_call_parser().parse_args(argv)
    url = args.url.rstrip("/")
    public_url = (args.public_url or default_public_url(url)).rstrip("/")

    async def main() -> int:
        labels = [f"(file {p})" for p in args.wav] + list(args.say)
        utterances = [load_utterance(p) for p in args.wav]
        utterances += [await synthesize_utterance(t) for t in args.say]
        if not utterances:
            utterances, labels = [bundled_utterance()], ["(the bundled demo utterance)"]
        if args.transport == "twilio":
            report = await place_twilio_call(
                url, utterances, token=args.token, public_url=public_url, pause=args.pause
            )
        else:
            report = await place_asterisk_call(
                url,
                utterances,
                transport=args.transport,
                username=args.username,
                password=args.password,
                audiosocket_port=args.audiosocket_port,
                pause=args.pause,
            )
        return await _report(report, args.out, args.record_file, labels)

    try:
        return asyncio.run(main())
    except CallFailed as exc:
        print(f"gateway call: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, aiohttp.ClientError) as exc:  # anything else on the way to the gateway
        print(f"gateway call: {_unreachable(url, exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


async def _wait_record(path: str, call_sid: str) -> dict[str, Any] | None:
    """The gateway's record of the call, waiting a little for it to be written."""
    if not path:
        return None
    for _ in range(int(RECORD_WAIT / 0.1)):  # a file has no event to wait on: poll it
        record = _read_record(path, call_sid)
        if record is not None:
            return record
        await asyncio.sleep(0.1)
    return _read_record(path, call_sid)


def conversation(labels: list[str], report: CallReport, record: dict[str, Any] | None) -> str:
    """What was said, turn by turn: the caller's utterance, the gateway's transcript of it and
    the agent's reply (the last two from the call record, when there is one)."""
    turns = (record or {}).get("turns", [])
    lines = []
    greeting = next((t for t in turns if t.get("kind") == "greeting"), None)
    if greeting is not None:
        lines.append(f"greeting      {greeting.get('reply') or '(silent)'}")
    replies = [t for t in turns if t.get("kind") == "utterance"]
    for i, _turn in enumerate(report.turns):
        said = labels[i] if i < len(labels) else "?"
        lines.append(f"turn {i + 1:<3} said {said}")
        if record is None:
            continue
        gw = replies[i] if i < len(replies) else {}
        lines.append(f"    transcript {gw.get('transcript') or '-'}")
        reply = gw.get("reply") or "-"
        if gw.get("interrupted"):
            reply += f"  [interrupted; heard: {gw.get('heard') or ''}]"
        lines.append(f"    reply      {reply}")
    if record is None:
        lines.append(
            "(transcripts and replies: pass --record-file = the gateway's CALL_RECORD_PATH)"
        )
    return "\n".join(lines)


async def _report(report: CallReport, out: str, record_file: str, labels: list[str]) -> int:
    if report.turned_away:
        print("the gateway turned the call away (busy)")
        return EXIT_REFUSED
    write_wav(out, report.heard_ulaw)
    seconds = len(report.heard_ulaw) / 8000.0
    print(
        f"call {report.call_sid}: greeting {'heard' if report.greeting_heard else 'NOT heard'}, "
        f"{len(report.turns)} turn(s), {seconds:.1f} s of audio heard -> {out}"
    )
    if report.hung_up_at is not None:
        code = f" (close code {report.close_code})" if report.close_code is not None else ""
        print(
            f"the gateway hung up {report.hung_up_at:.1f} s into the call{code}, after "
            f"{len(report.turns)} of {report.utterances} utterance(s)"
        )
    record = await _wait_record(record_file, report.call_sid)
    print(waterfall(report, record))
    print(conversation(labels, report, record))
    ok = (
        report.greeting_heard
        and report.hung_up_at is None
        and all(t.first_audio_heard for t in report.turns)
    )
    return EXIT_OK if ok else EXIT_NOT_HEARD


def _print_report(report: CallReport, out: str, record_file: str) -> int:
    """The report of ``gateway demo`` (one bundled utterance)."""
    return asyncio.run(_report(report, out, record_file, ["(the bundled demo utterance)"]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _gateway_command() -> str:
    """How to run this gateway's CLI from a shell, as this process was started."""
    if Path(sys.argv[0]).name == "gateway":
        return shlex.quote(sys.argv[0])
    return f"{shlex.quote(sys.executable)} -m gateway"


def dev_environment(port: int, audiosocket_port: int) -> list[str]:
    """Fill in development settings for ``gateway dev``; return what to print.

    Every transport (and the browser softphone) is turned on with well-known, development-only
    credentials (a variable already set in the environment wins), call records go to
    ``calls.jsonl`` and the gateway listens on 127.0.0.1 only. The returned lines include one
    ``gateway call`` command per transport that works as pasted into another terminal, and
    the softphone's address.
    """
    dev = {
        "HOST": "127.0.0.1",
        "TWILIO_AUTH_TOKEN": DEV_TOKEN,
        "ASTERISK_WS_USERNAME": DEV_ASTERISK_USER,
        "ASTERISK_WS_PASSWORD": DEV_ASTERISK_PASSWORD,
        "AUDIOSOCKET_PORT": str(audiosocket_port),
        "CALL_RECORD_PATH": os.path.abspath("calls.jsonl"),
        "BROWSER_PHONE": "true",
    }
    for name, value in dev.items():
        if not os.environ.get(name):
            os.environ[name] = value
    env = os.environ
    url = f"http://127.0.0.1:{port}"
    record = shlex.quote(env["CALL_RECORD_PATH"])
    public = f" --public-url {shlex.quote(env['PUBLIC_URL'])}" if env.get("PUBLIC_URL") else ""
    gateway = _gateway_command()
    q = shlex.quote
    return [
        "DEVELOPMENT ONLY: well-known credentials, listening on 127.0.0.1; never use in production",
        f"  TWILIO_AUTH_TOKEN={q(env['TWILIO_AUTH_TOKEN'])}"
        f"  ASTERISK_WS_USERNAME={q(env['ASTERISK_WS_USERNAME'])}"
        f"  ASTERISK_WS_PASSWORD={q(env['ASTERISK_WS_PASSWORD'])}",
        f"  AUDIOSOCKET_PORT={q(env['AUDIOSOCKET_PORT'])}  CALL_RECORD_PATH={record}",
        "Place a call from another terminal (each line works as pasted):",
        f"  {gateway} call --transport twilio --url {url}{public}"
        f" --token {q(env['TWILIO_AUTH_TOKEN'])} --record-file {record}",
        f"  {gateway} call --transport asterisk_ws --url {url}"
        f" --username {q(env['ASTERISK_WS_USERNAME'])}"
        f" --password {q(env['ASTERISK_WS_PASSWORD'])} --record-file {record}",
        f"  {gateway} call --transport audiosocket --url {url}"
        f" --audiosocket-port {q(env['AUDIOSOCKET_PORT'])} --record-file {record}",
        "  (add --say 'text' or --wav file.wav for your own utterances; --help for more)",
        f"Or talk to it with your microphone: open {url}/phone in a browser",
    ]


def demo_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway demo",
        description="Start a gateway with embedded defaults (Hamsa simulator, echo agent) on a "
        "free port, place one simulated Twilio call, save what the caller heard and print the "
        "latency table.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=_Formatter,
    )
    parser.add_argument("--out", default="demo-reply.wav", help="WAV of what the caller heard")
    args = parser.parse_args(argv)
    port = _free_port()
    token = "demo-" + uuid.uuid4().hex
    record = Path(tempfile.gettempdir()) / f"gateway-demo-{os.getpid()}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAMSA_", "AGENT"))}
    env.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TWILIO_AUTH_TOKEN": token,
            "CALL_RECORD_PATH": str(record),
            "LOG_LEVEL": "WARNING",
        }
    )
    print(f"starting the gateway on 127.0.0.1:{port} (embedded Hamsa simulator, echo agent)")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        asyncio.run(_wait_ready(base, 30.0))
        report = asyncio.run(place_twilio_call(base, [bundled_utterance()], token=token))
        return _print_report(report, args.out, str(record))
    except CallFailed as exc:
        print(f"gateway demo: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        record.unlink(missing_ok=True)


async def _wait_ready(base: str, timeout: float) -> None:
    """Wait for /readyz: the warm Hamsa pool is filled (first sentence pays no connect)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base + "/readyz") as r:
                    body = await r.json()
                    idle = body.get("checks", {}).get("speech", {}).get("idle", 0)
                    if r.status == 200 and idle:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


__all__ = [
    "CallFailed",
    "call_main",
    "demo_main",
    "dev_environment",
    "place_asterisk_call",
    "place_twilio_call",
    "waterfall",
]
