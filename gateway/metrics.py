"""Every Prometheus metric of the gateway, declared once, with bounded labels only.

One :class:`Metrics` instance per application owns its own ``CollectorRegistry`` (no module
globals, so tests and several apps in one process never collide). Label values come from
closed sets (transport, direction, stage, outcome, reason tokens chosen in code); a call id,
phone number or free text is never a label: per-call detail goes to logs and call records.

Names follow the Prometheus naming guide: base units in names (``_seconds``), ``_total`` for
counters.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway import __version__
from gateway.telephony.events import Transport

# Voice-scale latency buckets: 5 ms (one carrier frame is 20 ms) up to 30 s (a slow agent).
VOICE_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    # 100 ms steps where a voice turn lives (a reply that starts 1.0-1.5 s after the caller
    # stops speaking feels slow but acceptable; the alert and the dashboard need to see where).
    1.1,
    1.2,
    1.3,
    1.4,
    1.5,
    2.0,
    3.0,
    5.0,
    8.0,
    13.0,
    20.0,
    30.0,
)

# The closed set of per-stage latencies (label `stage` of gateway_stage_latency_seconds).
STAGES: tuple[str, ...] = (
    "endpointing",  # caller stops speaking -> utterance closed
    "stt",  # utterance sent -> transcript
    "agent_first_text",  # request -> first reply text
    "agent_total",  # request -> reply complete
    "tts_first_audio",  # TTS request -> first audio chunk
    "tts_total",  # TTS request -> end of audio
    "turn",  # end of caller speech -> first reply audio sent to the carrier
    "heard",  # end of caller speech -> first-frame mark echoed (caller hears it)
    "barge_in_reaction",  # caller speech onset during playout -> clear sent
    "mark_round_trip",  # mark sent -> echoed by the carrier (playback delay)
    "hamsa_connect",  # opening a Hamsa realtime socket
    "playout_hold",  # first TTS audio -> reply start, held by the playout scheduler
)
# The stages a caller feels (the dashboard's first latency panel, the latency alerts) and the
# internal ones that explain them. Together they are exactly STAGES (tests/test_metrics.py).
CALLER_STAGES: tuple[str, ...] = ("turn", "heard", "stt", "agent_first_text", "tts_first_audio")
INTERNAL_STAGES: tuple[str, ...] = tuple(s for s in STAGES if s not in CALLER_STAGES)

# ---------------------------------------------------------------- closed label sets
# Every combination below exists at 0 from the first scrape (Metrics._preinitialise), so
# `rate()` and `increase()` see the first event instead of a series appearing from nowhere.
# tests/test_metrics.py checks each set against the code that produces the values; a value
# missing here still works (the series appears when first used), it just starts late.
TRANSPORTS: tuple[str, ...] = tuple(t.value for t in Transport)
DIRECTIONS: tuple[str, ...] = ("in", "out")
CALL_OUTCOMES: tuple[str, ...] = (
    "completed",
    "error",
    "max_duration",
    "caller_silent",
    "transferred",
    "agent_hangup",
    "speech_unavailable",  # no working speech service for SPEECH_OUTAGE_HANGUP_SECONDS
    "drained",
    "refused_draining",  # CallRegistry.refusal_reason(), prefixed "refused_"
    "refused_at_capacity",
    "refused_speech_unavailable",  # the speech probe (Hamsa circuit) is down: server/health.py
)
# Reasons per transport (a transport missing here gets no pre-initialised reasons).
# Reasons shared by the WebSocket transports (telephony/driver.py).
_WS_MALFORMED: tuple[str, ...] = ("message_too_large", "second_start", "start_timeout")
MALFORMED_REASONS: Mapping[str, tuple[str, ...]] = {
    "twilio": (
        *_WS_MALFORMED,
        "bad_base64",
        "bad_payload_size",
        "binary_frame",
        "invalid_json",
        "media_before_start",
        "missing_field",
        "not_an_object",
        "stream_mismatch",
        "unsupported_media_format",
    ),
    "asterisk_ws": (
        *_WS_MALFORMED,
        "asterisk_error",
        "audio_before_start",
        "bad_control",
        "bad_dtmf",
        "bad_json",
        "bad_media_start",
        "before_start",
        "duplicate_start",
        "oversized_message",
        "partial_sample",
        "unsupported_codec",
    ),
    "audiosocket": (
        "start_timeout",
        "bad_dtmf",
        "bad_uuid",
        "duplicate_uuid",
        "empty_audio",
        "format_change",
        "missing_uuid",
        "not_slin",
        "oversized_frame",
        "partial_sample",
        "text_message",
        "truncated_frame",
        "unknown_kind",
    ),
    "browser": (  # telephony/browser.py, a WebSocket transport
        *_WS_MALFORMED,
        "bad_payload_size",
        "invalid_json",
        "media_before_start",
        "missing_field",
        "not_an_object",
        "unsupported_format",
    ),
}
IGNORED_REASONS: Mapping[str, tuple[str, ...]] = {
    "twilio": (
        "after_stop",
        "duplicate_connected",
        "outbound_track",
        "unknown_event",
        "unknown_mark",
        "unknown_track",
    ),
    "asterisk_ws": (
        "buffering_completed",
        "empty_audio",
        "status",
        "unknown_event",
        "unknown_mark",
    ),
    "audiosocket": (),
    "browser": ("after_hangup", "unknown_mark", "unknown_type"),
}
TURN_OUTCOMES: tuple[str, ...] = (
    "ok",
    "interrupted",
    "superseded",
    "cancelled",
    "stt_error",
    "empty",
    "agent_error",
    "tts_error",
)
PROMPT_CACHE_RESULTS: tuple[str, ...] = ("hit", "miss")  # agent/prompt_cache.py
DROP_REASONS: tuple[str, ...] = (  # agent/voice.py bounds
    "dtmf_buffer_full",  # digits beyond MAX_DTMF_DIGITS in one open entry
    "job_queue_full",  # turns beyond MAX_QUEUED_JOBS waiting for the turn loop
)
AGENT_ERROR_KINDS: tuple[str, ...] = (  # agent.webhook.ERROR_KINDS
    "timeout",
    "http_status",
    "connect",
    "malformed",
    "empty",
    "agent_error",
    "too_large",
)
HAMSA_ERROR_KINDS: tuple[str, ...] = (  # speech.hamsa.protocol.ErrorKind
    "auth",
    "quota",
    "rate_limit",
    "bad_request",
    "aborted",
    "server",
    "closed",
    "connect",
    "timeout",
    "short_response",
    "protocol",
    "circuit_open",
)
HAMSA_CONNECTION_RESULTS: tuple[str, ...] = ("created", "reused", "failed")
HAMSA_OPERATIONS: tuple[str, ...] = ("tts", "stt")
TWILIO_ENDPOINTS: tuple[str, ...] = ("voice", "stream_status", "media")
TWILIO_STREAM_EVENTS: tuple[str, ...] = (
    "stream-started",
    "stream-stopped",
    "stream-error",
    "other",
)
CARRIER_OPERATIONS: Mapping[str, tuple[str, ...]] = {"twilio": ("hangup", "transfer")}
AUTH_TRANSPORTS: tuple[str, ...] = ("asterisk_ws", "audiosocket")  # the ones with credentials

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The gateway's metric catalogue. Attributes are prometheus-client metric objects."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `_created` series double the series count and no dashboard or alert reads them. The
        # switch is process-wide in prometheus-client (read at every scrape), so it covers this
        # registry whatever created it; PROMETHEUS_DISABLE_CREATED_SERIES=true does the same.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # --- the process: CPU, memory, file descriptors (process_*), interpreter and GC
        # (python_info, python_gc_*), on this registry rather than prometheus-client's global one.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(
            "gateway_build_info",
            "Always 1; the labels say which gateway version runs on which Python.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.asyncio_tasks = Gauge(
            "gateway_asyncio_tasks",
            "asyncio tasks alive in the event loop at scrape time (calls' own and the server's);"
            " growing while gateway_active_calls does not is a task leak.",
            registry=r,
        )
        self.asyncio_tasks.set_function(_asyncio_task_count)
        # --- calls
        self.active_calls = Gauge(
            "gateway_active_calls", "Calls in progress.", ["transport"], registry=r
        )
        self.calls = Counter(
            "gateway_calls_total",
            "Finished or refused calls.",
            ["transport", "outcome"],
            registry=r,
        )
        self.frames = Counter(
            "gateway_frames_total",
            "Media messages carried.",
            ["transport", "direction"],
            registry=r,
        )
        self.malformed_input = Counter(
            "gateway_malformed_input_total",
            "Carrier input that could not be understood.",
            ["transport", "reason"],
            registry=r,
        )
        self.ignored_input = Counter(
            "gateway_ignored_input_total",
            "Carrier input understood and deliberately dropped.",
            ["transport", "reason"],
            registry=r,
        )
        self.draining = Gauge(
            "gateway_draining", "1 while the process drains after SIGTERM.", registry=r
        )
        # --- latency
        self.stage_latency = Histogram(
            "gateway_stage_latency_seconds",
            "Latency of one pipeline stage.",
            ["stage"],
            buckets=VOICE_LATENCY_BUCKETS,
            registry=r,
        )
        # --- twilio
        self.signature_failures = Counter(
            "gateway_twilio_signature_failures_total",
            "Twilio requests refused: bad signature.",
            ["endpoint"],
            registry=r,
        )
        self.stream_callbacks = Counter(
            "gateway_twilio_stream_callbacks_total",
            "Twilio stream status callbacks.",
            ["event"],
            registry=r,
        )
        self.carrier_api_errors = Counter(
            "gateway_carrier_api_errors_total",
            "Failed carrier REST calls.",
            ["transport", "operation"],
            registry=r,
        )
        # --- asterisk
        self.auth_failures = Counter(
            "gateway_auth_failures_total",
            "Refused connections: bad credentials or source.",
            ["transport"],
            registry=r,
        )
        self.pacing_lateness = Histogram(
            "gateway_audiosocket_pacing_lateness_seconds",
            "How late each AudioSocket pacer tick ran after its 20 ms frame deadline.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08),
            registry=r,
        )
        # --- playout (gateway/agent/playout.py)
        self.playout_underruns = Counter(
            "gateway_playout_underruns_total",
            "Times the carrier ran out of reply audio inside a sentence (a dropout heard).",
            ["transport"],
            registry=r,
        )
        self.playout_underrun_seconds = Counter(
            "gateway_playout_underrun_seconds_total",
            "Silence inserted inside sentences by playout underruns.",
            ["transport"],
            registry=r,
        )
        self.prompt_cache = Counter(
            "gateway_prompt_cache_total",
            "Greeting and re-prompt sentences played from the prompt cache (hit) or "
            "synthesised (miss).",
            ["result"],
            registry=r,
        )
        # --- hamsa
        self.hamsa_connections = Counter(
            "gateway_hamsa_connections_total",
            "Hamsa realtime connections by result.",
            ["result"],
            registry=r,
        )
        self.hamsa_pool_idle = Gauge(
            "gateway_hamsa_pool_idle", "Warm idle Hamsa connections.", registry=r
        )
        self.hamsa_errors = Counter(
            "gateway_hamsa_errors_total", "Hamsa failures by kind.", ["kind"], registry=r
        )
        self.hamsa_short_responses = Counter(
            "gateway_hamsa_short_responses_total",
            "TTS responses with implausibly short audio (the 640-byte failure).",
            registry=r,
        )
        self.hamsa_rest_fallbacks = Counter(
            "gateway_hamsa_rest_fallbacks_total",
            "Requests served by the REST fallback.",
            ["operation"],
            registry=r,
        )
        self.hamsa_circuit_open = Gauge(
            "gateway_hamsa_circuit_open", "1 while the Hamsa circuit breaker is open.", registry=r
        )
        # --- agent
        self.agent_errors = Counter(
            "gateway_agent_errors_total", "Agent webhook failures by kind.", ["kind"], registry=r
        )
        self.turns = Counter(
            "gateway_turns_total", "Conversation turns by outcome.", ["outcome"], registry=r
        )
        self.dropped_input = Counter(
            "gateway_dropped_input_total",
            "Caller input dropped by a per-call bound (DTMF digits, queued turns).",
            ["reason"],
            registry=r,
        )
        self.interruptions = Counter(
            "gateway_interruptions_total",
            "Barge-ins: caller spoke over the agent.",
            ["transport"],
            registry=r,
        )
        self.call_record_failures = Counter(
            "gateway_call_record_failures_total",
            "Call records that could not be written.",
            registry=r,
        )
        self.tasks_leaked = Counter(
            "gateway_call_tasks_leaked_total",
            "Tasks still running after a call ended (must stay 0).",
            registry=r,
        )
        self._preinitialise()

    def _preinitialise(self) -> None:
        """Create every closed-set label combination at 0, so each series exists from start."""
        for transport in TRANSPORTS:
            self.active_calls.labels(transport)
            self.interruptions.labels(transport)
            self.playout_underruns.labels(transport)
            self.playout_underrun_seconds.labels(transport)
            for outcome in CALL_OUTCOMES:
                self.calls.labels(transport, outcome)
            for direction in DIRECTIONS:
                self.frames.labels(transport, direction)
            for reason in MALFORMED_REASONS.get(transport, ()):
                self.malformed_input.labels(transport, reason)
            for reason in IGNORED_REASONS.get(transport, ()):
                self.ignored_input.labels(transport, reason)
        for transport in AUTH_TRANSPORTS:
            self.auth_failures.labels(transport)
        for transport, operations in CARRIER_OPERATIONS.items():
            for operation in operations:
                self.carrier_api_errors.labels(transport, operation)
        for stage in STAGES:
            self.stage_latency.labels(stage)
        for endpoint in TWILIO_ENDPOINTS:
            self.signature_failures.labels(endpoint)
        for event in TWILIO_STREAM_EVENTS:
            self.stream_callbacks.labels(event)
        for result in HAMSA_CONNECTION_RESULTS:
            self.hamsa_connections.labels(result)
        for kind in HAMSA_ERROR_KINDS:
            self.hamsa_errors.labels(kind)
        for operation in HAMSA_OPERATIONS:
            self.hamsa_rest_fallbacks.labels(operation)
        for kind in AGENT_ERROR_KINDS:
            self.agent_errors.labels(kind)
        for outcome in TURN_OUTCOMES:
            self.turns.labels(outcome)
        for reason in DROP_REASONS:
            self.dropped_input.labels(reason)
        for result in PROMPT_CACHE_RESULTS:
            self.prompt_cache.labels(result)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record one stage latency; ``stage`` must be one of :data:`STAGES`."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.stage_latency.labels(stage).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _asyncio_task_count() -> float:
    """Tasks alive in this thread's running event loop; NaN when no loop runs (scraped elsewhere).

    Called by prometheus-client at scrape time only (``/metrics`` runs in the loop): O(tasks),
    nothing on the per-frame path.
    """
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # no running event loop in this thread
        return float("nan")
