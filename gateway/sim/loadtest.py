"""``gateway loadtest``: N concurrent simulated Twilio calls against a gateway, measured.

Loopback only (it refuses any host outside 127.0.0.0/8 and ::1), bounded in call count and
time. The gateway's CPU and memory are read from ``/proc/<pid>`` of the gateway process, so the
figures hold on a noisy machine: CPU per call-second = (utime+stime delta) / (calls x seconds)
over the steady-state window (after the ramp), RSS per call = (RSS at full load - RSS before
the first call) / calls.

Parrot mode (``AGENT=parrot``, ``PARROT_DELAY_MS=0``) measures the audio path: every caller
frame carries unique bytes, and the time until the same bytes come back is the echo latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import aiohttp

from gateway.sim.caller_cli import Microphone
from gateway.sim.hamsa_sim import DELIVERY_PRESETS
from gateway.sim.speech_synth import synthetic_speech
from gateway.sim.twilio_caller import FRAME_BYTES, FRAME_SECONDS, TwilioCaller
from telecodecs.g711 import pcm16_to_ulaw
from telecodecs.resample import resample

MAX_CALLS = 1000
CALLER_TEXT = "مرحباأريدأنأسألعنطلبي"  # no spaces: one continuous synthetic utterance (~1.5 s)
MAX_DURATION_SECONDS = 600.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(slots=True)
class LoadResult:
    calls: int
    duration_seconds: float
    window_seconds: float
    gateway_cpu_seconds: float
    cpu_ms_per_call_second: float
    calls_per_core: float
    rss_before_mib: float
    rss_loaded_mib: float
    rss_per_call_kib: float
    echo_latency_ms: dict[str, float] = field(default_factory=dict)
    frames_sent: int = 0
    frames_returned: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    machine: str = ""
    mode: str = "parrot"
    loadgen_late_over_5ms_share: float = 0.0
    turns: int = 0
    barge_ins: int = 0
    turn_latency_ms: dict[str, float] = field(default_factory=dict)
    gateway_added_ms: dict[str, float] = field(default_factory=dict)
    underruns_mid_sentence: int = 0
    turns_with_underruns: int = 0  # caller-side: replies that ran dry at least once inside
    max_gap_between_sentences_ms: float = 0.0


def _proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after the command: state(0) ... utime is field 14 -> index 11, stime index 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def machine_summary() -> str:
    model = "unknown cpu"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}"


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    return {
        "p50": round(pick(0.50), 2),
        "p95": round(pick(0.95), 2),
        "p99": round(pick(0.99), 2),
        "max": round(ordered[-1] * 1000.0, 2),
        "mean": round(statistics.fmean(ordered) * 1000.0, 2),
    }


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"loadtest only targets loopback addresses, not {host!r}")


async def _one_call(
    http: aiohttp.ClientSession,
    ws_url: str,
    duration: float,
    stop_at: float,
    latencies: list[tuple[float, float]],
    counts: dict[str, int],
    errors: dict[str, int],
    lateness: list[tuple[float, float]],
) -> None:
    call = TwilioCaller(http, ws_url)
    call.track_echo = True
    try:
        await call.connect()
        start = time.monotonic()
        index = 0
        end = min(start + duration, stop_at)
        while True:
            due = start + index * FRAME_SECONDS
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lateness.append((time.monotonic(), -delay))
            await call.send_frame(os.urandom(FRAME_BYTES))
            index += 1
        await asyncio.sleep(0.2)  # let the last echoes arrive
        await call.stop()
        with contextlib.suppress(TimeoutError):
            await call.wait_closed(5.0)
    except (aiohttp.ClientError, OSError) as exc:
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    finally:
        await call.close()
        latencies.extend(call.echo_latencies)
        counts["sent"] += call.stats.media_sent
        counts["returned"] += len(call.echo_latencies)


@dataclass(slots=True)
class AgentCallStats:
    turns: int = 0
    barge_ins: int = 0
    underruns_mid_sentence: int = 0
    turns_with_underruns: int = 0
    sentence_gaps: list[float] = field(default_factory=list)


async def _agent_call(
    http: aiohttp.ClientSession,
    ws_url: str,
    duration: float,
    stop_at: float,
    speech: bytes,
    barge_rate: float,
    rng: random.Random,
    totals: AgentCallStats,
    errors: dict[str, int],
) -> None:
    """One realistic conversation: silence, an utterance, the reply (sometimes talked over)."""
    call = TwilioCaller(http, ws_url)
    try:
        await call.connect()
        mic = Microphone(call)
        mic_task = asyncio.create_task(mic.run())
        end = min(time.monotonic() + duration, stop_at)
        try:
            while time.monotonic() + 6.0 < end and not call.closed:
                await asyncio.sleep(rng.uniform(1.0, 2.5))
                spoken = mic.say(speech)
                await asyncio.sleep(max(0.0, spoken - time.monotonic()))
                totals.turns += 1
                before = call.underruns_mid_sentence
                # Sometimes talk over the reply, ~0.6 s after it starts.
                if rng.random() < barge_rate and await call.wait_audio_after(spoken, 8.0):
                    await asyncio.sleep(0.6)
                    totals.barge_ins += 1
                else:
                    await call.wait_reply_played(spoken, 10.0, quiet=0.5)
                if call.underruns_mid_sentence > before:
                    totals.turns_with_underruns += 1
        finally:
            mic_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mic_task
        await call.stop()
        with contextlib.suppress(TimeoutError):
            await call.wait_closed(5.0)
    except (aiohttp.ClientError, OSError) as exc:
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    finally:
        await call.close()
        totals.underruns_mid_sentence += call.underruns_mid_sentence
        totals.sentence_gaps.extend(call.sentence_gaps)


def _records_latency(path: str, since_unix: float) -> tuple[list[float], list[float]]:
    """(turn latencies, gateway-added latencies) in seconds from the call records."""
    turn: list[float] = []
    added: list[float] = []
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("started_at", 0) < since_unix:
                    continue
                for t in record.get("turns", []):
                    timings = t.get("timings", {})
                    if t.get("kind") != "utterance" or "turn" not in timings:
                        continue
                    turn.append(timings["turn"])
                    external = sum(
                        timings.get(k, 0.0)
                        for k in ("endpointing", "stt", "agent_first_text", "tts_first_audio")
                    )
                    added.append(max(0.0, timings["turn"] - external))
    return turn, added


async def run_load(
    base_url: str,
    pid: int,
    calls: int,
    duration: float,
    ramp: float,
    progress: bool = True,
    *,
    mode: str = "parrot",
    barge_rate: float = 0.2,
    record_path: str = "",
    seed: int = 1,
) -> LoadResult:
    """Run ``calls`` calls of ``duration`` seconds, ramped over ``ramp`` seconds.

    ``mode`` ``parrot`` streams unique frames and times their echo; ``agent`` holds realistic
    conversations (speech, silence, barge-in at ``barge_rate``) against the voice agent.
    """
    if not 1 <= calls <= MAX_CALLS:
        raise SystemExit(f"--calls must be 1..{MAX_CALLS}")
    if not 1 <= duration <= MAX_DURATION_SECONDS:
        raise SystemExit(f"--duration must be 1..{MAX_DURATION_SECONDS:.0f} s")
    _check_loopback(base_url)
    ws_url = base_url.replace("http://", "ws://").rstrip("/") + "/twilio/media"
    latencies: list[tuple[float, float]] = []
    sender_late: list[tuple[float, float]] = []
    counts = {"sent": 0, "returned": 0}
    errors: dict[str, int] = {}
    rss_before = _proc_rss_mib(pid)
    # The load generator keeps every frame it heard: with a generational collector its full
    # collections would stall it for milliseconds and show up as gateway latency. It is
    # bounded in time, so it simply does without cyclic garbage collection while measuring.
    gc.collect()
    gc.disable()
    connector = aiohttp.TCPConnector(limit=0)
    hard_stop = time.monotonic() + ramp + duration + 30.0
    agent_totals = AgentCallStats()
    rng = random.Random(seed)
    speech = pcm16_to_ulaw(resample(synthetic_speech(CALLER_TEXT), 16000, 8000))
    since_unix = time.time()
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks: list[asyncio.Task[None]] = []
        t0 = time.monotonic()
        for i in range(calls):
            delay = t0 + (ramp * i / calls) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # Every call ends at the same moment, so the window after the ramp is full load.
            remaining = t0 + ramp + duration - time.monotonic()
            if mode == "agent":
                call = _agent_call(
                    http,
                    ws_url,
                    remaining,
                    hard_stop,
                    speech,
                    barge_rate,
                    random.Random(rng.random()),
                    agent_totals,
                    errors,
                )
            else:
                call = _one_call(
                    http, ws_url, remaining, hard_stop, latencies, counts, errors, sender_late
                )
            tasks.append(asyncio.create_task(call))
        # Steady-state window: all calls up, skip one second of settling.
        await asyncio.sleep(max(0.0, t0 + ramp + 1.0 - time.monotonic()))
        window_start = time.monotonic()
        cpu_start = _proc_cpu_seconds(pid)
        window_end_target = t0 + ramp + duration - 0.5
        rss_loaded = 0.0
        while time.monotonic() < window_end_target:
            await asyncio.sleep(min(1.0, max(0.0, window_end_target - time.monotonic())))
            rss_loaded = max(rss_loaded, _proc_rss_mib(pid))
            if progress:
                done = (time.monotonic() - window_start) / max(
                    0.001, window_end_target - window_start
                )
                bar = "#" * int(30 * min(1.0, done))
                print(f"\r[{bar:<30}] {calls} calls", end="", file=sys.stderr, flush=True)
        cpu_end = _proc_cpu_seconds(pid)
        window = time.monotonic() - window_start
        window_end = time.monotonic()
        await asyncio.gather(*tasks)
        window_latencies = [lat for at, lat in latencies if window_start <= at <= window_end]
        late = [lat for at, lat in sender_late if window_start <= at <= window_end]
        frames_in_window = max(1, sum(1 for at, _ in latencies if window_start <= at <= window_end))
        # The load generator's own health: how often (and how late) it missed a 20 ms tick.
        late_share = len([x for x in late if x > 0.005]) / frames_in_window
    if progress:
        print(file=sys.stderr)
    gc.enable()
    cpu = cpu_end - cpu_start
    per_call_second = cpu / (calls * window) if window > 0 else 0.0
    turn_latencies: list[float] = []
    added: list[float] = []
    if mode == "agent" and record_path:
        await asyncio.sleep(1.0)  # the gateway writes records as calls end
        turn_latencies, added = _records_latency(record_path, since_unix)
    return LoadResult(
        calls=calls,
        duration_seconds=round(duration, 1),
        window_seconds=round(window, 2),
        gateway_cpu_seconds=round(cpu, 3),
        cpu_ms_per_call_second=round(per_call_second * 1000.0, 3),
        calls_per_core=round(1.0 / per_call_second, 1) if per_call_second > 0 else 0.0,
        rss_before_mib=round(rss_before, 1),
        rss_loaded_mib=round(rss_loaded, 1),
        rss_per_call_kib=round((rss_loaded - rss_before) * 1024.0 / calls, 1),
        echo_latency_ms=_percentiles(window_latencies),
        frames_sent=counts["sent"],
        frames_returned=counts["returned"],
        errors=errors,
        machine=machine_summary(),
        mode=mode,
        loadgen_late_over_5ms_share=round(late_share, 4) if mode == "parrot" else 0.0,
        turns=agent_totals.turns,
        barge_ins=agent_totals.barge_ins,
        turn_latency_ms=_percentiles(turn_latencies),
        gateway_added_ms=_percentiles(added),
        underruns_mid_sentence=agent_totals.underruns_mid_sentence,
        turns_with_underruns=agent_totals.turns_with_underruns,
        max_gap_between_sentences_ms=round(max(agent_totals.sentence_gaps, default=0.0) * 1000, 1),
    )


async def run_burst(
    base_url: str, calls: int, within: float, timeout: float = 10.0
) -> dict[str, object]:
    """``calls`` Twilio calls answered within ``within`` seconds; per call, the time from
    answer (media socket open + ``start``) until the first greeting audio arrives."""
    _check_loopback(base_url)
    ws_url = base_url.replace("http://", "ws://").rstrip("/") + "/twilio/media"
    waits: list[float] = []
    errors: dict[str, int] = {}

    async def one(http: aiohttp.ClientSession, delay: float) -> None:
        await asyncio.sleep(delay)
        call = TwilioCaller(http, ws_url)
        try:
            await call.connect()
            answered = time.monotonic()
            # The arrival time is stamped on receipt; this only waits for it.
            await call.wait_audio_after(answered - 1.0, timeout)
            if call.stats.first_audio_received_at is None:
                errors["no_greeting"] = errors.get("no_greeting", 0) + 1
            else:
                waits.append(call.stats.first_audio_received_at - answered)
        except (aiohttp.ClientError, OSError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        finally:
            await call.close()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(one(http, within * i / calls) for i in range(calls)))
    return {
        "calls": calls,
        "arrived_within_s": within,
        "greeting_after_answer_ms": _percentiles(waits),
        "within_600ms": sum(1 for w in waits if w <= 0.6),
        "errors": errors,
        "machine": machine_summary(),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn_gateway(port: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "AGENT": "parrot",
            "PARROT_DELAY_MS": "0",
            "TWILIO_ALLOW_UNSIGNED": "true",
            "LOG_LEVEL": "WARNING",
            "MAX_CALLS": str(MAX_CALLS),
        }
    )
    env.update(extra_env)
    return subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)


async def _wait_healthy(url: str, timeout: float, need_speech: bool = False) -> None:
    """Wait for /healthz (parrot) or /readyz with a filled warm pool (agent)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                if not need_speech:
                    async with http.get(url + "/healthz") as r:
                        if r.status == 200:
                            return
                else:
                    async with http.get(url + "/readyz") as r:
                        body = await r.json()
                        speech = body.get("checks", {}).get("speech", {})
                        if r.status == 200 and speech.get("idle", 0) >= 2:
                            return
            await asyncio.sleep(0.1)
    raise SystemExit("gateway did not become healthy")


def format_table(result: LoadResult) -> str:
    def pcts(values: dict[str, float]) -> str:
        keys = ("p50", "p95", "p99")
        return "/".join(str(values.get(k, "-")) for k in keys) + " ms"

    underrun_share = 100.0 * result.turns_with_underruns / max(1, result.turns)
    agent_rows = (
        [
            ("turns / barge-ins", f"{result.turns} / {result.barge_ins}"),
            ("turn latency p50/p95/p99", pcts(result.turn_latency_ms)),
            ("gateway-added p50/p95/p99", pcts(result.gateway_added_ms)),
            ("underruns mid-sentence", f"{result.underruns_mid_sentence}"),
            (
                "turns with an underrun (caller)",
                f"{result.turns_with_underruns} ({underrun_share:.1f}% of turns)",
            ),
            ("largest gap between sentences", f"{result.max_gap_between_sentences_ms:.0f} ms"),
        ]
        if result.mode == "agent"
        else []
    )
    rows = [
        ("mode", result.mode),
        ("calls (concurrent)", f"{result.calls}"),
        ("measured window", f"{result.window_seconds:.1f} s"),
        ("gateway CPU per call-second", f"{result.cpu_ms_per_call_second:.2f} ms"),
        ("calls per core", f"{result.calls_per_core:.0f}"),
        ("RSS per call", f"{result.rss_per_call_kib:.0f} KiB"),
        (
            "echo latency p50/p95/p99",
            "{p50}/{p95}/{p99} ms".format(
                **{k: result.echo_latency_ms.get(k, float("nan")) for k in ("p50", "p95", "p99")}
            ),
        ),
        ("frames sent / returned", f"{result.frames_sent} / {result.frames_returned}"),
        (
            "load generator late > 5 ms",
            f"{result.loadgen_late_over_5ms_share * 100:.2f}% of frames",
        ),
        *agent_rows,
        ("errors", json.dumps(result.errors) if result.errors else "none"),
        ("machine", result.machine),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def loadtest_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        choices=("parrot", "agent", "burst"),
        default="parrot",
        help="parrot: audio loopback; agent: conversations with the voice agent "
        "(echo agent, Hamsa simulator in its own process); burst: --calls calls answered "
        "within --ramp seconds, time to the first greeting audio (warm-pool sizing; the "
        "simulator keeps its realistic 1.2 s connect)",
    )
    parser.add_argument("--url", help="gateway base URL (loopback); default: spawn one")
    parser.add_argument("--pid", type=int, help="gateway process id (required with --url)")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds at full load")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to start all calls")
    parser.add_argument(
        "--barge-rate",
        type=float,
        default=0.2,
        help="agent mode: share of turns the caller talks over the reply",
    )
    parser.add_argument(
        "--delivery",
        choices=sorted(DELIVERY_PRESETS),
        default="default",
        help="agent mode: the simulator's TTS delivery pattern ('observed' = real Hamsa's "
        "small first frame then 1-2 s frames at 3x real time, 'observed-slow' the same at 2x; "
        "see gateway sim-hamsa --delivery)",
    )
    parser.add_argument(
        "--stt-script",
        metavar="FILE",
        help="agent mode: the simulator's transcripts, one per line (the echo agent speaks "
        "them back: e.g. two sentences per line to measure gaps between sentences)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the spawned gateway (repeatable), e.g. PLAYOUT_SAFETY_MS=40",
    )
    parser.add_argument("--json", dest="json_path", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[bytes]] = []
    record_path = ""
    if args.url:
        if args.pid is None:
            parser.error("--pid is required with --url (CPU is read from /proc/<pid>)")
        url, pid = args.url.rstrip("/"), args.pid
    else:
        port = _free_port()
        extra: dict[str, str] = {}
        if args.mode in ("agent", "burst"):
            sim_port = _free_port()
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gateway",
                        "sim-hamsa",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(sim_port),
                        "--first-audio-delay",
                        "0.28",
                        "--delivery",
                        args.delivery,
                        *(["--stt-script", args.stt_script] if args.stt_script else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            record_path = os.path.join(tempfile.gettempdir(), f"loadtest-{os.getpid()}.jsonl")
            extra = {
                "AGENT": "echo",
                "HAMSA_API_KEY": "loadtest",
                "HAMSA_BASE_URL": f"http://127.0.0.1:{sim_port}",
                "HAMSA_POOL_MIN_IDLE": str(min(64, 2 * args.calls)),
                "CALL_RECORD_PATH": record_path,
                "REPROMPT_AFTER": "0",
            }
            if args.mode == "burst":  # the pool as configured by default: that is the test
                del extra["HAMSA_POOL_MIN_IDLE"]
        for item in args.gateway_env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                parser.error(f"--gateway-env wants NAME=VALUE, got {item!r}")
            extra[name] = value
        proc = _spawn_gateway(port, extra)
        procs.append(proc)
        url, pid = f"http://127.0.0.1:{port}", proc.pid
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run  # type: ignore[assignment]
    try:
        run(_wait_healthy(url, 60.0, need_speech=args.mode != "parrot"))
        if args.mode == "burst":
            time.sleep(5.0)  # let the pool reach its target (it starts at once with 2)
            burst = run(run_burst(url, args.calls, args.ramp))
            print(json.dumps(burst, indent=2))
            if args.json_path:
                with open(args.json_path, "w", encoding="utf-8") as f:
                    json.dump(burst, f, indent=2)
            return 0
        result = run(
            run_load(
                url,
                pid,
                args.calls,
                args.duration,
                args.ramp,
                mode=args.mode,
                barge_rate=args.barge_rate,
                record_path=record_path,
            )
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        if record_path:
            with contextlib.suppress(OSError):
                os.unlink(record_path)
    print(format_table(result))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(asdict(result), f, indent=2)
    return 0
