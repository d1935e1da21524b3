"""`gateway call` against a live gateway over each transport (fast simulator timings)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from gateway import __version__
from gateway.__main__ import main as gateway_main
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.caller_cli import (
    EXIT_AUTH,
    EXIT_NOT_HEARD,
    EXIT_OK,
    EXIT_UNREACHABLE,
    VOICED_RMS,
    CallReport,
    _read_record,
    build_call_parser,
    bundled_utterance,
    call_main,
    place_asterisk_call,
    place_twilio_call,
    waterfall,
)
from gateway.sim.hamsa_sim import create_sim_app
from telecodecs.g711 import ulaw_to_pcm16
from tests.speech_rig import fast_sim_config, voice_settings


@pytest.fixture
async def gateway(aiohttp_server: Any, tmp_path: Path) -> tuple[TestServer, Path]:
    sim: TestServer = await aiohttp_server(create_sim_app(fast_sim_config()))
    record = tmp_path / "calls.jsonl"
    settings = voice_settings(
        str(sim.make_url("")),
        tmp_path,
        asterisk_ws_username="pbx",
        asterisk_ws_password="secret",
        audiosocket_port=0,
        host="127.0.0.1",
        call_record_path=str(record),
        endpoint_silence_ms=600,
        greeting_text="أهلا وسهلا بك في خدمة العملاء، تفضل بالكلام.",
    )
    server: TestServer = await aiohttp_server(create_app(settings))
    return server, record


def check(report: CallReport) -> None:
    assert report.greeting_heard
    assert len(report.turns) == 1
    turn = report.turns[0]
    assert turn.first_audio_heard is not None
    # Endpointing (600 ms) + fast simulator: the reply is heard within a few seconds.
    assert 0.6 < turn.first_audio_heard - turn.speech_end < 5.0
    assert len(report.heard_ulaw) > 4000  # greeting + reply: over half a second heard


@pytest.mark.parametrize("transport", ["twilio", "asterisk_ws", "audiosocket"])
async def test_call_tool_over_each_transport(
    gateway: tuple[TestServer, Path], transport: str
) -> None:
    server, record = gateway
    base = str(server.make_url("")).rstrip("/")
    utterance = bundled_utterance()
    if transport == "twilio":
        report = await place_twilio_call(base, [utterance], pause=0.2)
    else:
        port = server.app[keys.AUDIOSOCKET].port
        report = await place_asterisk_call(
            base,
            [utterance],
            transport=transport,
            username="pbx",
            password="secret",
            audiosocket_port=port,
            pause=0.2,
        )
    check(report)
    # The waterfall joins the caller's view with the gateway's call record for the same call.
    async with asyncio.timeout(10):
        while (gateway_record := _read_record(str(record), report.call_sid)) is None:
            await asyncio.sleep(0.05)
    row = waterfall(report, gateway_record).splitlines()[2].split()
    assert row[0] == "1" and all(cell.isdigit() for cell in row[1:]), row


# ------------------------------------------------------------------ the command line itself


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _cli(argv: list[str]) -> int:
    """Run ``gateway call`` as a user would, on its own loop (the gateway runs on ours)."""
    return await asyncio.to_thread(call_main, argv)


@pytest.fixture
async def signed_gateway(aiohttp_server: Any, tmp_path: Path) -> tuple[int, Path]:
    """A gateway on a known port with a Twilio token and no PUBLIC_URL (as `make run`)."""
    sim: TestServer = await aiohttp_server(create_sim_app(fast_sim_config()))
    port = _free_port()
    settings = voice_settings(
        str(sim.make_url("")),
        tmp_path,
        host="127.0.0.1",
        port=port,
        public_url="",
        twilio_auth_token="tok",
        asterisk_ws_username="pbx",
        asterisk_ws_password="secret",
    )
    await aiohttp_server(create_app(settings), host="127.0.0.1", port=port)
    return port, tmp_path / "calls.jsonl"


async def test_call_at_127_0_0_1_signs_the_gateways_public_url_and_prints_the_turns(
    signed_gateway: tuple[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's line: --url http://127.0.0.1:8080 against a gateway whose PUBLIC_URL is
    # unset (it checks http://localhost:PORT). Signing --url answered 403.
    port, record = signed_gateway
    out = tmp_path / "heard.wav"
    argv = ["--url", f"http://127.0.0.1:{port}", "--token", "tok", "--pause", "0.2"]
    status = await _cli([*argv, "--out", str(out), "--record-file", str(record)])
    captured = capsys.readouterr()
    assert status == EXIT_OK, captured.out + captured.err
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert any(line.startswith("greeting      أهلا") for line in lines), lines
    assert "turn 1   said (the bundled demo utterance)" in lines
    transcript = next(line for line in lines if line.startswith("    transcript "))
    reply = next(line for line in lines if line.startswith("    reply "))
    assert transcript.split(None, 1)[1] not in ("", "-")
    assert reply.split(None, 1)[1] not in ("", "-")  # the echo agent says something back


async def test_a_refused_signature_is_one_line_naming_the_signed_url(
    signed_gateway: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = signed_gateway
    status = await _cli(["--url", f"http://127.0.0.1:{port}", "--token", "wrong"])
    err = capsys.readouterr().err
    assert status == EXIT_AUTH
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"signed http://localhost:{port}/twilio/voice" in err
    assert "HTTP 403" in err and "--public-url" in err

    # Signing a URL the gateway does not use is refused the same way, naming that URL.
    status = await _cli(
        ["--url", f"http://127.0.0.1:{port}", "--token", "tok", "--public-url", "https://gw.x"]
    )
    err = capsys.readouterr().err
    assert status == EXIT_AUTH and "signed https://gw.x/twilio/voice" in err


async def test_refused_asterisk_credentials_are_one_line(
    signed_gateway: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = signed_gateway
    argv = ["--url", f"http://127.0.0.1:{port}", "--transport", "asterisk_ws"]
    status = await _cli([*argv, "--username", "pbx", "--password", "nope"])
    err = capsys.readouterr().err
    assert status == EXIT_AUTH
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "HTTP 401" in err and "ASTERISK_WS_PASSWORD" in err


@pytest.mark.parametrize("transport", ["twilio", "asterisk_ws", "audiosocket"])
def test_connection_refused_is_one_line(transport: str, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()  # nothing listens there
    argv = ["--url", f"http://127.0.0.1:{port}", "--transport", transport]
    status = call_main([*argv, "--audiosocket-port", str(port), "--username", "u"])
    err = capsys.readouterr().err
    assert status == EXIT_UNREACHABLE
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot reach the gateway" in err


async def test_a_gateway_hang_up_ends_the_call_with_a_line_not_a_traceback(
    aiohttp_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # MAX_CALL_SECONDS hangs up mid-call while the caller's microphone is still sending: its
    # next send fails (ClientConnectionResetError), which used to escape as a traceback.
    sim: TestServer = await aiohttp_server(create_sim_app(fast_sim_config()))
    port = _free_port()
    settings = voice_settings(
        str(sim.make_url("")),
        tmp_path,
        host="127.0.0.1",
        port=port,
        twilio_allow_unsigned=True,
        max_call_seconds=1.5,
    )
    await aiohttp_server(create_app(settings), host="127.0.0.1", port=port)
    argv = ["--url", f"http://127.0.0.1:{port}", "--say", "واحد", "--say", "اثنان"]
    status = await _cli([*argv, "--pause", "0.2", "--out", str(tmp_path / "h.wav")])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    assert status == EXIT_NOT_HEARD
    assert "the gateway hung up" in captured.out
    assert "of 2 utterance(s)" in captured.out


async def test_the_chan_websocket_recording_is_on_a_real_time_timeline(
    gateway: tuple[TestServer, Path],
) -> None:
    # Like Twilio's and AudioSocket's, the WAV is as long as the call: silence between the
    # greeting and the reply is in it (it used to hold only the frames the gateway sent).
    server, _ = gateway
    base = str(server.make_url("")).rstrip("/")
    started = time.monotonic()
    report = await place_asterisk_call(
        base,
        [bundled_utterance()],
        transport="asterisk_ws",
        username="pbx",
        password="secret",
        pause=1.0,
    )
    elapsed = time.monotonic() - started
    check(report)
    heard_seconds = len(report.heard_ulaw) / 8000
    assert elapsed - 1.0 < heard_seconds <= elapsed + 0.1, (heard_seconds, elapsed)
    # The reply starts in the WAV where the caller heard it: after the utterance and the
    # 1 s pause, not straight after the greeting.
    pcm = np.frombuffer(ulaw_to_pcm16(report.heard_ulaw), dtype=np.int16).astype(np.float32)
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
    voiced = np.sqrt((frames * frames).mean(axis=1)) > VOICED_RMS
    silent_run = longest = 0
    for v in voiced[int(np.argmax(voiced)) :]:
        silent_run = 0 if v else silent_run + 1
        longest = max(longest, silent_run)
    assert longest * 0.02 > 1.5  # pause + utterance + endpointing, heard as silence


def test_help_states_defaults_units_and_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help to the terminal's width
    with pytest.raises(SystemExit) as exit_info:
        gateway_main(["call", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: http://localhost:8080)" in text
    assert "seconds of silence before each utterance (default: 1.0)" in text
    for code in range(6):
        assert f"\n  {code}  " in text, code
    with pytest.raises(SystemExit):
        gateway_main(["serve", "--help"])
    assert "default 8080" in capsys.readouterr().out


def test_help_never_prints_a_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "very-secret-token")
    monkeypatch.setenv("ASTERISK_WS_PASSWORD", "very-secret-password")
    build_call_parser().print_help()
    assert "very-secret" not in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gateway_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gateway {__version__} (hamsa-voice-gateway)"
    version = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.split()[1] == importlib.metadata.version("hamsa-voice-gateway")
