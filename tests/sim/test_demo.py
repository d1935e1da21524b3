"""`gateway demo` and `gateway dev` end to end: gateway subprocesses, the embedded simulator."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import IO

from gateway.sim.caller_cli import _free_port, _wait_ready, build_call_parser
from telecodecs.wav import parse_wav

DEMO_TIMEOUT = 90.0


def test_demo_places_a_call_saves_the_reply_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAMSA_", "TWILIO_"))}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "greeting heard, 1 turn(s)" in result.stdout
    table = result.stdout.split("turn  endpointed", 1)[1].splitlines()
    row = table[2].split()
    assert row[0] == "1" and all(cell.isdigit() for cell in row[1:]), table
    audio = parse_wav(out.read_bytes())
    assert audio.sample_rate == 8000 and len(audio.audio) > 2 * 8000 * 2  # > 2 s heard
    assert "SIMULATOR" in result.stderr  # said loudly


def _read_banner(stream: IO[str], *, last: str, limit: int = 20) -> list[str]:
    """Lines up to the one starting with ``last``; fails (never hangs) on EOF or ``limit``."""
    lines: list[str] = []
    while len(lines) < limit:
        line = stream.readline()
        assert line, f"gateway dev exited or closed stdout after {lines!r}"
        lines.append(line)
        if line.startswith(last):
            return lines
    raise AssertionError(f"no line starting with {last!r} in {lines!r}")


def test_make_dev_prints_call_lines_that_work_as_pasted(tmp_path: Path) -> None:
    """`make dev` runs `gateway dev`: every printed `gateway call` line parses, and all of them
    (Twilio, chan_websocket, AudioSocket) place a call that hears its replies."""
    port, audiosocket_port = _free_port(), _free_port()
    unset: tuple[str, ...] = ("HAMSA_", "AGENT", "TWILIO_", "ASTERISK_", "AUDIOSOCKET_")
    unset += ("CALL_RECORD", "PUBLIC_", "BROWSER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env.pop("HOST", None)
    env.pop("PORT", None)
    command = [sys.executable, "-m", "gateway", "dev", "--port", str(port)]
    command += ["--audiosocket-port", str(audiosocket_port)]
    gateway = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert gateway.stdout is not None
        banner = _read_banner(gateway.stdout, last="Or talk to it with your microphone")
        assert banner[0].startswith("DEVELOPMENT ONLY"), banner
        calls = [shlex.split(line) for line in banner if " call --transport " in line]
        assert [argv[argv.index("--transport") + 1] for argv in calls] == [
            "twilio",
            "asterisk_ws",
            "audiosocket",
        ]
        for argv in calls:
            assert argv[:3] == [sys.executable, "-m", "gateway"] and argv[3] == "call"
            build_call_parser().parse_args(argv[4:])  # exits 2 on anything it does not know
        asyncio.run(_wait_ready(f"http://127.0.0.1:{port}", 30.0))
        phone_url = banner[-1].split("open ", 1)[1].split()[0]
        assert phone_url == f"http://127.0.0.1:{port}/phone"
        with urllib.request.urlopen(phone_url, timeout=10) as page:  # the softphone is on
            assert page.status == 200 and b"<html" in page.read().lower()
        callers = [
            subprocess.Popen(
                [*argv, "--out", f"heard-{i}.wav", "--pause", "0.5"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, argv in enumerate(calls)
        ]
        for caller in callers:
            out, err = caller.communicate(timeout=DEMO_TIMEOUT)
            assert caller.returncode == 0, out + err
            assert "greeting heard, 1 turn(s)" in out
            assert "\n    transcript " in out and "\n    reply " in out, out
        assert (tmp_path / "calls.jsonl").is_file()  # CALL_RECORD_PATH was set
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
