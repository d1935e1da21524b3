"""Every Prometheus metric of the gateway, declared once, with bounded labels only.

One :class:`Metrics` instance per application owns its own ``CollectorRegistry`` (no module
globals, so tests and several apps in one process never collide). Label values come from
closed sets (transport, direction, stage, outcome, reason tokens chosen in code); a call id,
phone number or free text is never a label: per-call detail goes to logs and call records.

Names follow the Prometheus naming guide: base units in names (``_seconds``), ``_total`` for
counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The gateway's metric catalogue. Attributes are prometheus-client metric objects."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
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

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record one stage latency; ``stage`` must be one of :data:`STAGES`."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.stage_latency.labels(stage).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
