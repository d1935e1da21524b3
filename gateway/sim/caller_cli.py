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
    call_sid: str
    turned_away: bool = False
    greeting_heard: bool = False
    turns: list[TurnTiming] = field(default_factory=list)
    heard_ulaw: bytes = b""
    close_code: int | None = None


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

    async def wait_reply(self, since: float, timeout: float) -> float | None:
        """Wait for reply audio heard after ``since`` and then quiet; return when it began."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(FRAME_SECONDS)
            self.poll()
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
    if token:
        headers["X-Twilio-Signature"] = compute_signature(token, public_url + "/twilio/voice", form)
    async with http.post(base_url + "/twilio/voice", data=form, headers=headers) as response:
        body = await response.text()
        if response.status != 200:
            raise SystemExit(f"voice webhook answered HTTP {response.status}: {body.strip()}")
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
    """One whole simulated Twilio call against ``base_url`` (see module docstring)."""
    public = (public_url or base_url).rstrip("/")
    call_sid = "CA" + uuid.uuid4().hex
    report = CallReport(call_sid)
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
        await call.connect()
        mic = Microphone(call)
        mic_task = asyncio.create_task(mic.run())
        try:
            report.greeting_heard = await call.wait_reply_played(
                0.0, REPLY_TIMEOUT, quiet=QUIET_SECONDS
            )
            for ulaw in utterances:
                await asyncio.sleep(pause)
                speech_end = mic.say(ulaw)
                turn = TurnTiming(speech_end)
                report.turns.append(turn)
                await asyncio.sleep(max(0.0, speech_end - time.monotonic()))
                await call.wait_reply_played(speech_end, REPLY_TIMEOUT, quiet=QUIET_SECONDS)
                turn.first_audio_heard = call.first_heard_after(speech_end)
                if call.closed:
                    break
            if not call.closed:
                await call.stop()
                with contextlib.suppress(TimeoutError):
                    await call.wait_closed(5.0)
        finally:
            mic_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mic_task
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
    """One simulated Asterisk call (chan_websocket, JSON control, μ-law; or AudioSocket slin)."""
    from gateway.sim.asterisk_caller import AsteriskWsCaller, AudioSocketCaller

    report = CallReport(call_sid="")
    async with aiohttp.ClientSession() as http:
        heard: Callable[[], bytes]
        if transport == "asterisk_ws":
            ws = AsteriskWsCaller(
                http,
                base_url.replace("http", "ws", 1) + ws_path,
                username=username,
                password=password,
                control_format="json",
                codec="ulaw",
            )
            await ws.connect()
            report.call_sid = ws.channel_id
            mic = Microphone(send=ws.send_bytes)
            heard = lambda: ulaw_to_pcm16(bytes(ws.played))  # noqa: E731
            closer: Callable[[], Awaitable[None]] = ws.close
        else:
            host = urlsplit(base_url).hostname or "127.0.0.1"
            sock = AudioSocketCaller(host, audiosocket_port)
            await sock.connect()
            report.call_sid = str(sock.uuid)
            mic = Microphone(send=sock.send_audio, encode=ulaw_to_pcm16)
            heard = sock.heard_audio
            closer = sock.close
        clock = HeardClock(heard)
        mic_task = asyncio.create_task(mic.run())
        try:
            report.greeting_heard = await clock.wait_reply(0.0, REPLY_TIMEOUT) is not None
            for ulaw in utterances:
                await asyncio.sleep(pause)
                speech_end = mic.say(ulaw)
                await asyncio.sleep(max(0.0, speech_end - time.monotonic()))
                turn = TurnTiming(speech_end)
                report.turns.append(turn)
                turn.first_audio_heard = await clock.wait_reply(speech_end, REPLY_TIMEOUT)
        finally:
            mic_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mic_task
            report.heard_ulaw = pcm16_to_ulaw(heard())
            await closer()
    return report


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


def call_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway call",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="http://localhost:8080", help="gateway base URL")
    parser.add_argument(
        "--transport",
        choices=("twilio", "asterisk_ws", "audiosocket"),
        default="twilio",
        help="which carrier to behave like",
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
        "--audiosocket-port", type=int, default=int(os.environ.get("AUDIOSOCKET_PORT") or 9092)
    )
    parser.add_argument(
        "--public-url", help="PUBLIC_URL the gateway signs against (default: --url)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TWILIO_AUTH_TOKEN", ""),
        help="Twilio auth token to sign with (env TWILIO_AUTH_TOKEN)",
    )
    parser.add_argument("--say", action="append", default=[], help="an utterance as text")
    parser.add_argument("--wav", action="append", default=[], help="an utterance as a WAV file")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds before each utterance")
    parser.add_argument("--out", default="call-heard.wav", help="WAV of what the caller heard")
    parser.add_argument(
        "--record-file",
        default=os.environ.get("CALL_RECORD_PATH", ""),
        help="the gateway's CALL_RECORD_PATH, for gateway-side timings",
    )
    args = parser.parse_args(argv)

    async def main() -> int:
        utterances = [load_utterance(p) for p in args.wav]
        utterances += [await synthesize_utterance(t) for t in args.say]
        if not utterances:
            utterances = [bundled_utterance()]
        if args.transport == "twilio":
            report = await place_twilio_call(
                args.url.rstrip("/"),
                utterances,
                token=args.token,
                public_url=args.public_url,
                pause=args.pause,
            )
        else:
            report = await place_asterisk_call(
                args.url.rstrip("/"),
                utterances,
                transport=args.transport,
                username=args.username,
                password=args.password,
                audiosocket_port=args.audiosocket_port,
                pause=args.pause,
            )
        return _print_report(report, args.out, args.record_file)

    return asyncio.run(main())


def _print_report(report: CallReport, out: str, record_file: str) -> int:
    if report.turned_away:
        print("the gateway turned the call away (busy)")
        return 1
    write_wav(out, report.heard_ulaw)
    seconds = len(report.heard_ulaw) / 8000.0
    print(
        f"call {report.call_sid}: greeting {'heard' if report.greeting_heard else 'NOT heard'}, "
        f"{len(report.turns)} turn(s), {seconds:.1f} s of audio heard -> {out}"
    )
    time.sleep(0.3)  # the gateway writes the call record just after the call
    print(waterfall(report, _read_record(record_file, report.call_sid)))
    ok = report.greeting_heard and all(t.first_audio_heard for t in report.turns)
    return 0 if ok else 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway demo",
        description="one simulated call against a gateway with embedded defaults",
    )
    parser.add_argument("--out", default="demo-reply.wav")
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


__all__ = ["call_main", "demo_main", "place_twilio_call", "waterfall"]
