"""Settings: parsed once from the environment, validated, immutable.

This module is the only reader of ``os.environ``. :func:`load_settings` returns a frozen
:class:`Settings`; a missing or bad value raises :class:`ConfigError` naming the variable and
what it expected, and ``gateway serve`` prints that one line and exits 2.

Every variable is listed in ``ENV_VARS`` (name, default, meaning), which README's
configuration table mirrors (a test keeps them in step).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable is missing or malformed. ``str()`` is the user message."""

    def __init__(self, variable: str, expected: str, got: str | None = None) -> None:
        self.variable = variable
        self.expected = expected
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"configuration error: {variable} must be {expected}{shown}")


class AgentMode(StrEnum):
    ECHO = "echo"  # built-in: repeats the caller's transcript
    PARROT = "parrot"  # plays the caller's audio back: audio-path test, no speech services
    WEBHOOK = "webhook"  # the user's agent over HTTP (AGENT_WEBHOOK_URL)
    LLM = "llm"  # built-in: an OpenAI-compatible chat-completions server (LLM_BASE_URL)


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class BusyMode(StrEnum):
    SAY = "say"  # <Say>message</Say><Hangup/>
    REJECT = "reject"  # <Reject reason="busy"/>


class HamsaAuthMode(StrEnum):
    HEADER = "header"  # X-Api-Key header (default)
    QUERY = "query"  # ?api_key= query parameter


# The built-in LLM agent's default system prompt (Arabic, as the product's callers speak it).
DEFAULT_LLM_SYSTEM_PROMPT = (
    "أنت مساعد صوتي ودود يجيب على المكالمات الهاتفية باللغة العربية. "
    "أجب بجمل قصيرة وواضحة تصلح للنطق، "
    "بلا رموز ولا قوائم ولا تنسيق. "
    "إذا أراد المتصل إنهاء المكالمة فودّعه ثم استخدم الأداة end_call، "
    "وإذا طلب التحدث إلى موظف فاستخدم الأداة transfer_call."
)

# (name, default, meaning). Defaults are strings exactly as a user would type them.
ENV_VARS: tuple[tuple[str, str, str], ...] = (
    ("HOST", "0.0.0.0", "address `gateway serve` listens on"),
    ("PORT", "8080", "HTTP/WebSocket port"),
    (
        "PUBLIC_URL",
        "",
        "public https base URL the carrier reaches (e.g. https://gw.example.com); "
        "defaults to http://localhost:PORT",
    ),
    ("LOG_FORMAT", "text", "`text` (one line per event) or `json` (JSON lines)"),
    ("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    ("MAX_CALLS", "200", "concurrent calls accepted; beyond it callers are turned away politely"),
    ("DRAIN_TIMEOUT", "30", "seconds live calls get to finish after SIGTERM"),
    ("MAX_CALL_SECONDS", "3600", "a call is hung up after this long"),
    ("MAX_MESSAGE_BYTES", "65536", "largest WebSocket message accepted from a carrier"),
    (
        "TWILIO_AUTH_TOKEN",
        "",
        "Twilio auth token: signs webhooks and media sockets (required "
        "for Twilio traffic unless TWILIO_ALLOW_UNSIGNED=true)",
    ),
    ("TWILIO_ACCOUNT_SID", "", "Twilio account SID: enables REST hang-up and transfer"),
    ("TWILIO_ALLOW_UNSIGNED", "false", "development only: accept unsigned Twilio requests"),
    ("TWILIO_API_BASE_URL", "https://api.twilio.com", "Twilio REST base URL"),
    ("TWILIO_STREAM_PARAMETERS", "", "extra <Parameter>s for the stream, `name=value,name=value`"),
    ("TWILIO_BUSY_MODE", "say", "how callers are turned away at capacity: `say` or `reject`"),
    (
        "TWILIO_BUSY_MESSAGE",
        "All our lines are busy. Please call again later.",
        "what `say` busy mode says",
    ),
    ("TWILIO_CHUNK_MS", "100", "largest outbound media message in ms (20-200)"),
    (
        "AGENT",
        "echo",
        "`echo` (built-in), `parrot` (audio loopback), `webhook` or `llm` (built-in LLM agent)",
    ),
    ("AGENT_WEBHOOK_URL", "", "the agent's URL, required when AGENT=webhook"),
    (
        "LLM_BASE_URL",
        "https://api.openai.com/v1",
        "AGENT=llm: OpenAI-compatible base URL (vLLM, Ollama `http://host:11434/v1`, llama.cpp "
        "server); the gateway POSTs to {base}/chat/completions",
    ),
    ("LLM_API_KEY", "", "AGENT=llm: bearer key (empty: no Authorization header); never logged"),
    ("LLM_MODEL", "gpt-4o-mini", "AGENT=llm: the `model` sent with every request"),
    (
        "LLM_SYSTEM_PROMPT",
        DEFAULT_LLM_SYSTEM_PROMPT,
        "AGENT=llm: the system message that starts every call's history",
    ),
    (
        "LLM_TOOLS",
        "true",
        "AGENT=llm: declare the `end_call` and `transfer_call` tools (turn off for servers "
        "without tool support, e.g. llama.cpp server without `--jinja`)",
    ),
    (
        "AGENT_TIMEOUT",
        "8",
        "seconds to wait for the agent's first speakable sentence (not just any text) before "
        "the fallback; a greeting (call.started) that times out stays silent",
    ),
    (
        "AGENT_FALLBACK_TEXT",
        "عذرا، حدث خطأ. هل يمكنك الإعادة؟",
        "spoken when the agent fails or times out; when TTS fails a clip plays instead (the "
        "shipped default apology, or this text rendered through Hamsa at start-up)",
    ),
    (
        "AGENT_MAX_REPLY_BYTES",
        "1048576",
        "largest agent reply body read; a bigger reply is an error (`too_large`) and the "
        "fallback plays",
    ),
    (
        "SPEECH_OUTAGE_HANGUP_SECONDS",
        "15",
        "a call without working speech service (STT and TTS failing) this long hears the "
        "fallback clip and is hung up (outcome `speech_unavailable`); 0 disables",
    ),
    ("GREETING_TEXT", "", "spoken when a call starts (empty: ask the agent, or stay silent)"),
    ("PARROT_DELAY_MS", "500", "parrot mode: how long the caller's audio is held back"),
    ("VAD_AGGRESSIVENESS", "2", "WebRTC VAD aggressiveness, 0 (lenient) to 3 (strict)"),
    ("ENDPOINT_SILENCE_MS", "600", "trailing silence that ends a caller utterance"),
    ("MIN_SPEECH_MS", "200", "shorter voiced sounds are dropped as noise"),
    ("MAX_UTTERANCE_MS", "15000", "an utterance is cut (and sent to STT) after this long"),
    ("BARGE_IN", "true", "caller speech during playout interrupts the agent"),
    ("BARGE_IN_MIN_MS", "300", "sustained speech needed to interrupt (a cough does not)"),
    ("REPROMPT_AFTER", "8", "seconds of caller silence before a re-prompt; 0 = never"),
    ("REPROMPT_TEXT", "هل ما زلت معي؟ تفضل بالكلام من فضلك.", "the re-prompt"),
    ("REPROMPT_MAX", "2", "re-prompts without an answer before hanging up"),
    (
        "PLAYOUT_ADAPTIVE",
        "true",
        "hold each sentence's start only as long as the learned TTS delivery rate requires "
        "for gap-free playout (false: send audio as it arrives)",
    ),
    (
        "PLAYOUT_SAFETY_MS",
        "30",
        "adaptive playout: margin kept between predicted TTS arrival and playback",
    ),
    (
        "PLAYOUT_LEAD_SPLIT",
        "true",
        "adaptive playout: synthesize a reply's first words (~0.6 s) and the rest of its first "
        "sentence on two sockets at once, so its start is not held (a seam inside the sentence)",
    ),
    (
        "PROMPT_CACHE_MB",
        "16",
        "memory for the audio of greetings and re-prompts, which then play without TTS "
        "(no wait, no warm socket; replies are never cached); 0 = off",
    ),
    (
        "PLAYOUT_MAX_AHEAD_SECONDS",
        "10",
        "stop reading TTS while more than this much reply audio is queued ahead of playback",
    ),
    (
        "PLAYOUT_PREBUFFER_MS",
        "0",
        "with PLAYOUT_ADAPTIVE=false: hold a reply's first audio up to this long for the next "
        "TTS chunk (costs that much latency)",
    ),
    ("DTMF_TIMEOUT_MS", "1500", "digits pressed within this gap are sent to the agent together"),
    ("HAMSA_API_KEY", "", "Hamsa API key; empty runs the embedded Hamsa simulator"),
    (
        "HAMSA_BASE_URL",
        "https://api.tryhamsa.com",
        "Hamsa base URL (the realtime socket is derived from it)",
    ),
    ("HAMSA_AUTH_MODE", "header", "`header` (X-Api-Key) or `query` (?api_key=)"),
    ("HAMSA_SPEAKER", "Majd", "TTS speaker name or cloned-voice id"),
    ("HAMSA_DIALECT", "ksa", "TTS dialect code"),
    ("HAMSA_LANGUAGE", "ar", "language id for TTS and STT"),
    (
        "HAMSA_TTS_MULAW",
        "false",
        "ask Hamsa for μ-law 8 kHz TTS on μ-law calls (skips "
        "transcoding; off by default: the PCM path resamples with a real anti-alias filter)",
    ),
    ("HAMSA_POOL_MIN_IDLE", "2", "warm Hamsa connections kept ready at least; 0 = no pool"),
    (
        "HAMSA_POOL_BURST_CALLS",
        "20",
        "calls that may arrive at once and each still find a warm socket for the greeting "
        "(the pool keeps this many idle, at most MAX_CALLS; more while calls arrive faster)",
    ),
    (
        "HAMSA_POOL_MAX_CONNECTING",
        "16",
        "Hamsa sockets opened at once at most (no connect "
        "storms; with ~1.2 s per connect, 16 refill ~13 sockets per second)",
    ),
    ("HAMSA_POOL_MAX_AGE", "1800", "seconds after which an idle warm connection is recycled"),
    ("HAMSA_CONNECT_TIMEOUT", "10", "seconds to open a Hamsa socket"),
    ("HAMSA_TTS_FIRST_AUDIO_TIMEOUT", "5", "seconds to the first TTS audio before retrying"),
    ("HAMSA_TTS_GAP_TIMEOUT", "5", "seconds between TTS audio frames before retrying"),
    ("HAMSA_STT_TIMEOUT", "10", "seconds for a transcript before retrying"),
    (
        "HAMSA_SHORT_AUDIO_MS_PER_CHAR",
        "20",
        "TTS audio shorter than this per text character counts as a failed (short) response",
    ),
    ("HAMSA_RETRIES", "2", "retries of a failed TTS/STT request on a fresh connection"),
    ("HAMSA_RETRY_DELAY", "1.0", "first retry delay in seconds (doubles, jittered)"),
    ("HAMSA_REST_FALLBACK_AFTER", "3", "consecutive WebSocket failures before using REST"),
    ("ASTERISK_WS_PATH", "/asterisk/media", "chan_websocket endpoint path"),
    ("ASTERISK_WS_USERNAME", "", "Basic user expected from websocket_client.conf"),
    ("ASTERISK_WS_PASSWORD", "", "Basic password expected from websocket_client.conf"),
    (
        "ASTERISK_FORWARD_VARIABLES",
        "",
        "chan_websocket channel variables passed to the agent (comma list; v() parameters "
        "always are); empty = none",
    ),
    ("AUDIOSOCKET_PORT", "", "TCP port for Asterisk AudioSocket; empty = off"),
    ("AUDIOSOCKET_ALLOW", "127.0.0.1/32,::1/128", "source networks allowed to use AudioSocket"),
    (
        "BROWSER_PHONE",
        "false",
        "serve the browser softphone (`GET /phone`, `/browser/media`); off: both answer 404",
    ),
    ("BROWSER_TOKEN_TTL", "60", "seconds a softphone call token stays valid (5-3600)"),
    (
        "BROWSER_ALLOWED_ORIGINS",
        "",
        "origins besides the gateway's own allowed to open `/browser/media`, "
        "`https://a.example.com,https://b.example.com`",
    ),
    (
        "BROWSER_PHONE_SECRET",
        "",
        "HMAC key for softphone tokens (set the same value on every replica); empty = random "
        "per process",
    ),
    ("CALL_RECORD_PATH", "", "append one JSON line per finished call here; empty = off"),
)
_DEFAULTS = {name: default for name, default, _ in ENV_VARS}


@dataclass(frozen=True, slots=True)
class Settings:
    """All gateway settings. Build with :func:`load_settings` (or directly in tests)."""

    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str = ""
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "INFO"
    max_calls: int = 200
    drain_timeout: float = 30.0
    max_call_seconds: float = 3600.0
    max_message_bytes: int = 65536

    twilio_auth_token: str = field(default="", repr=False)
    twilio_account_sid: str = ""
    twilio_allow_unsigned: bool = False
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_stream_parameters: tuple[tuple[str, str], ...] = ()
    twilio_busy_mode: BusyMode = BusyMode.SAY
    twilio_busy_message: str = "All our lines are busy. Please call again later."
    twilio_chunk_ms: int = 100

    agent: AgentMode = AgentMode.ECHO
    agent_webhook_url: str = ""
    llm_base_url: str = "https://api.openai.com/v1"
    llm_api_key: str = field(default="", repr=False)
    llm_model: str = "gpt-4o-mini"
    llm_system_prompt: str = DEFAULT_LLM_SYSTEM_PROMPT
    llm_tools: bool = True
    agent_timeout: float = 8.0
    agent_fallback_text: str = "عذرا، حدث خطأ. هل يمكنك الإعادة؟"
    agent_max_reply_bytes: int = 1 << 20
    speech_outage_hangup_seconds: float = 15.0
    greeting_text: str = ""
    parrot_delay_ms: int = 500
    vad_aggressiveness: int = 2
    endpoint_silence_ms: int = 600
    min_speech_ms: int = 200
    max_utterance_ms: int = 15000
    barge_in: bool = True
    barge_in_min_ms: int = 300
    reprompt_after: float = 8.0
    reprompt_text: str = "هل ما زلت معي؟ تفضل بالكلام من فضلك."
    reprompt_max: int = 2
    dtmf_timeout_ms: int = 1500
    playout_prebuffer_ms: int = 0
    playout_adaptive: bool = True
    playout_safety_ms: int = 30
    playout_lead_split: bool = True
    playout_max_ahead_seconds: float = 10.0
    prompt_cache_mb: float = 16.0

    hamsa_api_key: str = field(default="", repr=False)
    hamsa_base_url: str = "https://api.tryhamsa.com"
    hamsa_auth_mode: HamsaAuthMode = HamsaAuthMode.HEADER
    hamsa_speaker: str = "Majd"
    hamsa_dialect: str = "ksa"
    hamsa_language: str = "ar"
    hamsa_tts_mulaw: bool = False
    hamsa_pool_min_idle: int = 2
    hamsa_pool_burst_calls: int = 20
    hamsa_pool_max_age: float = 1800.0
    hamsa_pool_max_connecting: int = 16
    hamsa_connect_timeout: float = 10.0
    hamsa_tts_first_audio_timeout: float = 5.0
    hamsa_tts_gap_timeout: float = 5.0
    hamsa_stt_timeout: float = 10.0
    hamsa_short_audio_ms_per_char: float = 20.0
    hamsa_retries: int = 2
    hamsa_retry_delay: float = 1.0
    hamsa_rest_fallback_after: int = 3

    asterisk_ws_path: str = "/asterisk/media"
    asterisk_ws_username: str = ""
    asterisk_ws_password: str = field(default="", repr=False)
    asterisk_forward_variables: tuple[str, ...] = ()
    audiosocket_port: int | None = None
    audiosocket_allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

    browser_phone: bool = False
    browser_token_ttl: int = 60
    browser_allowed_origins: tuple[str, ...] = ()
    browser_phone_secret: str = field(default="", repr=False)

    call_record_path: str = ""

    @property
    def public_base(self) -> str:
        """The public base URL without a trailing slash."""
        base = self.public_url or f"http://localhost:{self.port}"
        return base.rstrip("/")

    @property
    def public_ws_base(self) -> str:
        """The public base with ws/wss scheme (Twilio only connects to wss:// in production)."""
        base = self.public_base
        if base.startswith("https://"):
            return "wss://" + base[len("https://") :]
        if base.startswith("http://"):
            return "ws://" + base[len("http://") :]
        return base

    @property
    def uses_hamsa_simulator(self) -> bool:
        """No key configured: the embedded Hamsa simulator serves speech."""
        return not self.hamsa_api_key

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line (see gateway.logs.SecretFilter)."""
        values = (
            self.twilio_auth_token,
            self.hamsa_api_key,
            self.asterisk_ws_password,
            self.llm_api_key,
            self.browser_phone_secret,
        )
        return tuple(v for v in values if v)


# ------------------------------------------------------------------------- parsers


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError
        return value

    parse.expected = f"an integer from {lo} to {hi}"  # type: ignore[attr-defined]
    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not lo <= value <= hi:
            raise ValueError
        return value

    parse.expected = f"a number from {lo:g} to {hi:g}"  # type: ignore[attr-defined]
    return parse


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


_bool.expected = "true or false"  # type: ignore[attr-defined]


def _enum(kind: type[T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        return kind(raw.strip().lower())  # type: ignore[call-arg]

    names = ", ".join(f"`{m.value}`" for m in kind)  # type: ignore[attr-defined]
    parse.expected = f"one of {names}"  # type: ignore[attr-defined]
    return parse


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw.strip())
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError
        return raw.strip().rstrip("/")

    parse.expected = "a URL starting with " + " or ".join(  # type: ignore[attr-defined]
        f"{s}://" for s in schemes
    )
    return parse


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError
    return level


_log_level.expected = "DEBUG, INFO, WARNING or ERROR"  # type: ignore[attr-defined]


def _pairs(raw: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError
        out.append((name.strip(), value.strip()))
    return tuple(out)


_pairs.expected = "a list like `name=value,name=value`"  # type: ignore[attr-defined]


def _networks(raw: str) -> tuple[str, ...]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    return tuple(str(ipaddress.ip_network(p, strict=False)) for p in parts)


_networks.expected = "comma-separated CIDR networks, e.g. 10.0.0.0/8,127.0.0.1/32"  # type: ignore[attr-defined]


def _variable_names(raw: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not all(_VARIABLE_NAME.fullmatch(n) for n in names):
        raise ValueError
    return names


_VARIABLE_NAME = re.compile(r"[A-Za-z0-9_]{1,80}")
_variable_names.expected = "comma-separated Asterisk variable names, e.g. CALLERID_NUM,LANG"  # type: ignore[attr-defined]


def _optional_port(raw: str) -> int | None:
    if not raw.strip():
        return None
    return _int(1, 65535)(raw)


_optional_port.expected = "empty (off) or a port from 1 to 65535"  # type: ignore[attr-defined]


def _text(raw: str) -> str:
    return raw


_text.expected = "text"  # type: ignore[attr-defined]


def _path(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError
    return raw


_path.expected = "a path starting with /"  # type: ignore[attr-defined]


def _optional_url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    inner = _url(schemes)

    def parse(raw: str) -> str:
        return "" if not raw.strip() else inner(raw)

    parse.expected = "empty or " + inner.expected  # type: ignore[attr-defined]
    return parse


def _origins(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        parts = urlsplit(part)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError
        # Browsers send Origin as scheme://host[:port], lower case, no path (RFC 6454 §6.1).
        out.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(out)


_origins.expected = "comma-separated origins like https://app.example.com"  # type: ignore[attr-defined]


# field name -> (variable, parser)
_PARSERS: dict[str, tuple[str, Callable[[str], object]]] = {
    "host": ("HOST", _text),
    "port": ("PORT", _int(1, 65535)),
    "public_url": ("PUBLIC_URL", _optional_url(("https", "http"))),
    "log_format": ("LOG_FORMAT", _enum(LogFormat)),
    "log_level": ("LOG_LEVEL", _log_level),
    "max_calls": ("MAX_CALLS", _int(1, 100_000)),
    "drain_timeout": ("DRAIN_TIMEOUT", _float(0, 86_400)),
    "max_call_seconds": ("MAX_CALL_SECONDS", _float(1, 86_400)),
    "max_message_bytes": ("MAX_MESSAGE_BYTES", _int(1024, 16 * 1024 * 1024)),
    "twilio_auth_token": ("TWILIO_AUTH_TOKEN", _text),
    "twilio_account_sid": ("TWILIO_ACCOUNT_SID", _text),
    "twilio_allow_unsigned": ("TWILIO_ALLOW_UNSIGNED", _bool),
    "twilio_api_base_url": ("TWILIO_API_BASE_URL", _url(("https", "http"))),
    "twilio_stream_parameters": ("TWILIO_STREAM_PARAMETERS", _pairs),
    "twilio_busy_mode": ("TWILIO_BUSY_MODE", _enum(BusyMode)),
    "twilio_busy_message": ("TWILIO_BUSY_MESSAGE", _text),
    "twilio_chunk_ms": ("TWILIO_CHUNK_MS", _int(20, 200)),
    "agent": ("AGENT", _enum(AgentMode)),
    "agent_webhook_url": ("AGENT_WEBHOOK_URL", _optional_url(("https", "http"))),
    "llm_base_url": ("LLM_BASE_URL", _url(("https", "http"))),
    "llm_api_key": ("LLM_API_KEY", _text),
    "llm_model": ("LLM_MODEL", _text),
    "llm_system_prompt": ("LLM_SYSTEM_PROMPT", _text),
    "llm_tools": ("LLM_TOOLS", _bool),
    "agent_timeout": ("AGENT_TIMEOUT", _float(0.1, 600)),
    "agent_fallback_text": ("AGENT_FALLBACK_TEXT", _text),
    "agent_max_reply_bytes": ("AGENT_MAX_REPLY_BYTES", _int(1024, 64 << 20)),
    "speech_outage_hangup_seconds": ("SPEECH_OUTAGE_HANGUP_SECONDS", _float(0, 3600)),
    "greeting_text": ("GREETING_TEXT", _text),
    "parrot_delay_ms": ("PARROT_DELAY_MS", _int(0, 10_000)),
    "vad_aggressiveness": ("VAD_AGGRESSIVENESS", _int(0, 3)),
    "endpoint_silence_ms": ("ENDPOINT_SILENCE_MS", _int(100, 10_000)),
    "min_speech_ms": ("MIN_SPEECH_MS", _int(20, 10_000)),
    "max_utterance_ms": ("MAX_UTTERANCE_MS", _int(1000, 120_000)),
    "barge_in": ("BARGE_IN", _bool),
    "barge_in_min_ms": ("BARGE_IN_MIN_MS", _int(20, 10_000)),
    "reprompt_after": ("REPROMPT_AFTER", _float(0, 3600)),
    "reprompt_text": ("REPROMPT_TEXT", _text),
    "reprompt_max": ("REPROMPT_MAX", _int(0, 100)),
    "dtmf_timeout_ms": ("DTMF_TIMEOUT_MS", _int(100, 60_000)),
    "playout_prebuffer_ms": ("PLAYOUT_PREBUFFER_MS", _int(0, 5_000)),
    "playout_adaptive": ("PLAYOUT_ADAPTIVE", _bool),
    "playout_safety_ms": ("PLAYOUT_SAFETY_MS", _int(0, 2_000)),
    "playout_lead_split": ("PLAYOUT_LEAD_SPLIT", _bool),
    "playout_max_ahead_seconds": ("PLAYOUT_MAX_AHEAD_SECONDS", _float(1, 600)),
    "prompt_cache_mb": ("PROMPT_CACHE_MB", _float(0, 1024)),
    "hamsa_api_key": ("HAMSA_API_KEY", _text),
    "hamsa_base_url": ("HAMSA_BASE_URL", _url(("https", "http"))),
    "hamsa_auth_mode": ("HAMSA_AUTH_MODE", _enum(HamsaAuthMode)),
    "hamsa_speaker": ("HAMSA_SPEAKER", _text),
    "hamsa_dialect": ("HAMSA_DIALECT", _text),
    "hamsa_language": ("HAMSA_LANGUAGE", _text),
    "hamsa_tts_mulaw": ("HAMSA_TTS_MULAW", _bool),
    "hamsa_pool_min_idle": ("HAMSA_POOL_MIN_IDLE", _int(0, 1000)),
    "hamsa_pool_burst_calls": ("HAMSA_POOL_BURST_CALLS", _int(0, 1000)),
    "hamsa_pool_max_age": ("HAMSA_POOL_MAX_AGE", _float(1, 3500)),
    "hamsa_pool_max_connecting": ("HAMSA_POOL_MAX_CONNECTING", _int(1, 256)),
    "hamsa_connect_timeout": ("HAMSA_CONNECT_TIMEOUT", _float(0.1, 120)),
    "hamsa_tts_first_audio_timeout": ("HAMSA_TTS_FIRST_AUDIO_TIMEOUT", _float(0.1, 120)),
    "hamsa_tts_gap_timeout": ("HAMSA_TTS_GAP_TIMEOUT", _float(0.1, 120)),
    "hamsa_stt_timeout": ("HAMSA_STT_TIMEOUT", _float(0.1, 120)),
    "hamsa_short_audio_ms_per_char": ("HAMSA_SHORT_AUDIO_MS_PER_CHAR", _float(0, 1000)),
    "hamsa_retries": ("HAMSA_RETRIES", _int(0, 10)),
    "hamsa_retry_delay": ("HAMSA_RETRY_DELAY", _float(0, 60)),
    "hamsa_rest_fallback_after": ("HAMSA_REST_FALLBACK_AFTER", _int(1, 100)),
    "asterisk_ws_path": ("ASTERISK_WS_PATH", _path),
    "asterisk_ws_username": ("ASTERISK_WS_USERNAME", _text),
    "asterisk_ws_password": ("ASTERISK_WS_PASSWORD", _text),
    "asterisk_forward_variables": ("ASTERISK_FORWARD_VARIABLES", _variable_names),
    "audiosocket_port": ("AUDIOSOCKET_PORT", _optional_port),
    "audiosocket_allow": ("AUDIOSOCKET_ALLOW", _networks),
    "browser_phone": ("BROWSER_PHONE", _bool),
    "browser_token_ttl": ("BROWSER_TOKEN_TTL", _int(5, 3600)),
    "browser_allowed_origins": ("BROWSER_ALLOWED_ORIGINS", _origins),
    "browser_phone_secret": ("BROWSER_PHONE_SECRET", _text),
    "call_record_path": ("CALL_RECORD_PATH", _text),
}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Parse and validate settings from ``environ`` (default ``os.environ``).

    ``overrides`` (field name -> already-typed value) win over the environment; the CLI uses
    them for ``--host``/``--port``. Raises :class:`ConfigError` on the first bad variable.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field_name, (var, parse) in _PARSERS.items():
        if field_name in overrides:
            values[field_name] = overrides[field_name]
            continue
        raw = env.get(var, _DEFAULTS[var])
        try:
            values[field_name] = parse(raw)
        except (ValueError, TypeError):
            shown = "<hidden>" if "TOKEN" in var or "KEY" in var or "PASSWORD" in var else raw
            raise ConfigError(var, parse.expected, shown) from None  # type: ignore[attr-defined]
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.agent is AgentMode.WEBHOOK and not settings.agent_webhook_url:
        raise ConfigError("AGENT_WEBHOOK_URL", "set when AGENT=webhook")
    if settings.agent is AgentMode.LLM and not settings.llm_model.strip():
        raise ConfigError("LLM_MODEL", "set when AGENT=llm")
    if bool(settings.asterisk_ws_username) != bool(settings.asterisk_ws_password):
        raise ConfigError("ASTERISK_WS_PASSWORD", "set together with ASTERISK_WS_USERNAME")
    return settings
