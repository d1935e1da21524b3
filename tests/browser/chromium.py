"""Drive the system's headless Chromium over the DevTools protocol (CDP), no Playwright.

Uses Debian's ``/usr/bin/chromium`` (never a downloaded browser) with a fake microphone fed
from a WAV file. The DevTools socket is spoken with ``websockets`` (already a dependency):
only ``Runtime.evaluate`` is needed, so a tiny client beats a 40 MB driver.

:func:`require_chromium` returns the executable, or fails (never skips) when it is missing on
a machine where ``make test`` could have installed it (root with apt-get); elsewhere it skips
with the command to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")

# Flags from the issue: headless, no sandbox (root in a container), no network chatter, and a
# fake microphone that plays a WAV file in a loop, granted without a permission prompt.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    for candidate in CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The Chromium executable; a loud failure where ``make test`` should have installed it."""
    path = find_chromium()
    if path is not None:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(
            "Debian chromium is not installed but could be: run `make test` (it runs "
            "scripts/install-test-tools.sh) or `apt-get install -y chromium`"
        )
    pytest.skip("chromium missing and no root/apt-get to install it: apt-get install chromium")


class CdpError(RuntimeError):
    pass


class Page:
    """One page target's DevTools session: evaluate JavaScript, read values back."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        await self._ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self._ws.recv())
            if message.get("id") != request_id:
                continue  # an event: none subscribed, ignore
            if "error" in message:
                raise CdpError(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    async def evaluate(self, expression: str, *, user_gesture: bool = False) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
            userGesture=user_gesture,
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def open_page(
    url: str, *, wav: Path, profile: Path, timeout: float = 20.0
) -> AsyncIterator[Page]:
    """Start headless Chromium on ``url`` with ``wav`` as the microphone; yield its page."""
    exe = require_chromium()
    log_path = _prepare_profile(profile)
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            exe,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--use-file-for-fake-audio-capture={wav}",
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        try:
            port_file = profile / "DevToolsActivePort"
            async with asyncio.timeout(timeout):
                while (port := _devtools_port(port_file)) is None:
                    if proc.returncode is not None:
                        raise RuntimeError(f"chromium exited; its log: {log_path}")
                    await asyncio.sleep(0.05)
                target = await _page_target(port)
            async with websockets.connect(target, max_size=None, open_timeout=timeout) as ws:
                yield Page(ws)
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def _prepare_profile(profile: Path) -> Path:
    profile.mkdir(parents=True, exist_ok=True)
    return profile / "chromium.log"


def _devtools_port(port_file: Path) -> int | None:
    """The port Chromium wrote to ``DevToolsActivePort`` (first line), once it has."""
    try:
        first = port_file.read_text().split()
    except FileNotFoundError:
        return None
    return int(first[0]) if first else None


async def _page_target(port: int) -> str:
    """The DevTools WebSocket URL of the first page target (polls until Chromium lists it)."""
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                    for target in await response.json():
                        if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                            return str(target["webSocketDebuggerUrl"])
            await asyncio.sleep(0.05)
