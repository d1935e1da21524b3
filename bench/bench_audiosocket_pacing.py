"""Benchmark: AudioSocket outbound pacing jitter, N concurrent parrot calls.

Spawns a real gateway (``python -m gateway serve``, ``AGENT=parrot``, ``AUDIOSOCKET_PORT``)
and opens N AudioSocket calls to it from this process. Each call sends 20 ms slin frames in
real time (one shared drift-corrected sender tick) and timestamps every packet the gateway
sends back. Since Asterisk does not re-time AudioSocket audio, what matters is how far each
frame lands from an ideal 20 ms grid: per call the grid is anchored at the earliest-arriving
frame (``min(t_k - k * 20 ms)``), so every lateness is >= 0 and the unknown network offset
drops out. Reported: lateness p50 / p99 / max over all frames of all calls (client side,
includes this process's own scheduling noise), the gateway's own pacer-tick lateness
histogram from ``/metrics``, and the gateway's CPU per call-second (from /proc).

Usage: ``.venv/bin/python bench/bench_audiosocket_pacing.py [--calls 50] [--seconds 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import struct
import sys
import time
import uuid

import aiohttp

FRAME = 320  # 20 ms of slin 8 kHz
PERIOD = 0.020
HEADER = struct.Struct(">BH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Call:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.arrivals: list[float] = []

    async def receive(self) -> None:
        try:
            while True:
                kind, length = HEADER.unpack(await self.reader.readexactly(3))
                if length:
                    await self.reader.readexactly(length)
                if kind == 0x00:
                    return
                self.arrivals.append(time.monotonic())
        except (asyncio.IncompleteReadError, ConnectionError):
            return


def lateness(arrivals: list[float]) -> list[float]:
    anchor = min(t - k * PERIOD for k, t in enumerate(arrivals))
    return [t - (anchor + k * PERIOD) for k, t in enumerate(arrivals)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(calls: int, seconds: float, warmup: float) -> None:
    http_port, as_port = free_port(), free_port()
    env = {
        **os.environ,
        "AGENT": "parrot",
        "PARROT_DELAY_MS": "0",
        "HOST": "127.0.0.1",
        "PORT": str(http_port),
        "AUDIOSOCKET_PORT": str(as_port),
        "MAX_CALLS": str(calls + 10),
        "LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", env=env)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    try:
        for _ in range(200):
            try:
                async with http.get(f"http://127.0.0.1:{http_port}/healthz"):
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        conns = [await asyncio.open_connection("127.0.0.1", as_port) for _ in range(calls)]
        active = [Call(r, w) for r, w in conns]
        receivers = [asyncio.create_task(c.receive()) for c in active]
        for call in active:
            call.writer.write(HEADER.pack(0x01, 16) + uuid.uuid4().bytes)
        frame = HEADER.pack(0x10, FRAME) + bytes((i % 200) + 1 for i in range(FRAME))
        total = warmup + seconds
        start = time.monotonic()
        cpu_start: float | None = None
        tick = 0
        while (now := time.monotonic()) - start < total:
            if cpu_start is None and now - start >= warmup:
                cpu_start, cpu_wall = cpu_seconds(proc.pid), now
            for call in active:
                call.writer.write(frame)
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * PERIOD - time.monotonic()))
        cpu_used = cpu_seconds(proc.pid) - (cpu_start or 0.0)
        wall = time.monotonic() - cpu_wall
        for call in active:
            call.writer.close()
        await asyncio.gather(*receivers)
        async with http.get(f"http://127.0.0.1:{http_port}/metrics") as resp:
            metrics = await resp.text()
    finally:
        await http.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)

    late: list[float] = []
    for call in active:
        measured = [t for t in call.arrivals if t - start >= warmup]
        if len(measured) > 10:
            late.extend(lateness(measured))
    print(f"{calls} calls x {seconds:.0f} s (after {warmup:.0f} s warm-up), {len(late)} frames")
    print(
        "client-side lateness vs 20 ms grid: "
        f"p50 {percentile(late, 0.5) * 1000:.2f} ms, p99 {percentile(late, 0.99) * 1000:.2f} ms, "
        f"max {max(late) * 1000:.2f} ms, mean {statistics.fmean(late) * 1000:.2f} ms"
    )
    buckets = re.findall(
        r'gateway_audiosocket_pacing_lateness_seconds_bucket\{le="([^"]+)"\} (\S+)', metrics
    )
    count = float(dict(buckets).get("+Inf", "0"))
    if count:
        shown = ", ".join(f"<={float(le) * 1000:g}ms {float(n) / count:.1%}" for le, n in buckets)
        print(f"gateway pacer tick lateness ({count:.0f} ticks): {shown}")
    print(
        f"gateway CPU: {cpu_used:.2f} s over {wall:.1f} s = "
        f"{cpu_used * 1000 / (wall * calls):.2f} ms per call-second"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.seconds, args.warmup))


if __name__ == "__main__":
    main()
