"""`gateway demo` end to end: a real gateway subprocess, the embedded simulator, one call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
