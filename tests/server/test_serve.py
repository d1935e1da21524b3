"""`gateway serve` as a subprocess: start-up, bad config, SIGTERM drain without dropping calls."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from gateway.sim.twilio_caller import TwilioCaller
from tests.conftest import TIMEOUT, free_port


def spawn(port: int, **env: str) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "HAMSA_"))}
    full_env.update(
        {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "AGENT": "parrot",
            "PARROT_DELAY_MS": "0",
            "TWILIO_ALLOW_UNSIGNED": "true",
            **env,
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not become healthy")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)


def test_bad_configuration_exits_2_with_one_clear_line() -> None:
    proc = spawn(free_port(), MAX_CALLS="lots")
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2
    assert out.decode().strip() == (
        "configuration error: MAX_CALLS must be an integer from 1 to 100000 (got 'lots')"
    )


async def test_serves_health_and_metrics_and_never_logs_secrets(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    proc = spawn(
        port,
        HAMSA_API_KEY="hk-very-secret-key",
        TWILIO_AUTH_TOKEN="tw-secret-tok",
        LOG_FORMAT="json",
    )
    procs.append(proc)
    await wait_healthy(port, proc)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            assert "gateway_active_calls" in await r.text()
        # A refused, unsigned Twilio request is logged: the token must not appear.
        async with http.post(f"http://127.0.0.1:{port}/twilio/voice", data={"x": "1"}) as r:
            assert r.status == 403
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    text = out.decode()
    assert '"msg": "stopped"' in text
    assert "hk-very-secret-key" not in text and "tw-secret-tok" not in text


async def test_sigterm_drains_live_call_then_exits_0(procs: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    proc = spawn(port, DRAIN_TIMEOUT="20")
    procs.append(proc)
    await wait_healthy(port, proc)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        call = TwilioCaller(http, f"ws://127.0.0.1:{port}/twilio/media")
        await call.connect()
        await call.play(b"\x10" * 160 * 5, realtime=False)
        await asyncio.wait_for(_until(lambda: call.stats.bytes_received >= 800), TIMEOUT)

        proc.send_signal(signal.SIGTERM)
        # Draining: not ready, new calls turned away politely, the live call keeps working.
        async with asyncio.timeout(TIMEOUT):
            while True:
                async with http.get(base + "/readyz") as r:
                    if r.status == 503:
                        assert "draining" in (await r.json())["reasons"]
                        break
                await asyncio.sleep(0.02)
        async with http.post(base + "/twilio/voice", data={"CallSid": "CA2"}) as r:
            assert r.status == 200 and "<Hangup" in await r.text()
        await call.play(b"\x20" * 160 * 5, realtime=False)
        await asyncio.wait_for(_until(lambda: call.stats.bytes_received >= 1600), TIMEOUT)
        assert proc.poll() is None

        # The caller hangs up; the process then exits 0 well before DRAIN_TIMEOUT.
        started = time.monotonic()
        await call.stop()
        await call.wait_closed(TIMEOUT)
        await call.close()
        returncode = await asyncio.to_thread(proc.wait, TIMEOUT)
        assert returncode == 0
        assert time.monotonic() - started < 10


async def test_drain_timeout_hangs_up_remaining_calls(procs: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    proc = spawn(port, DRAIN_TIMEOUT="0.5")
    procs.append(proc)
    await wait_healthy(port, proc)
    async with aiohttp.ClientSession() as http:
        call = TwilioCaller(http, f"ws://127.0.0.1:{port}/twilio/media")
        await call.connect()
        await call.play(b"\x10" * 160, realtime=False)
        await asyncio.wait_for(_until(lambda: call.stats.bytes_received >= 160), TIMEOUT)
        proc.send_signal(signal.SIGTERM)
        assert await call.wait_closed(TIMEOUT) == 1000
        await call.close()
        assert await asyncio.to_thread(proc.wait, TIMEOUT) == 0
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "drain timeout: hanging up 1 call(s)" in out


async def _until(predicate: object) -> None:
    assert callable(predicate)
    while not predicate():
        await asyncio.sleep(0.005)
