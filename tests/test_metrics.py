"""/metrics as Prometheus scrapes it from a running app (issue 12 item 7).

Every closed-set label combination exists at 0 from the first scrape, the process and Python
collectors and ``gateway_build_info`` are there, no ``_created`` series, the latency buckets
resolve 1.0-1.5 s, and ``promtool check metrics`` accepts the whole exposition. The closed sets
in ``gateway/metrics.py`` are checked against the code that produces the label values.
"""

from __future__ import annotations

import ast
import asyncio
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway import __version__, metrics
from gateway.agent.webhook import ERROR_KINDS
from gateway.config import AgentMode
from gateway.server import keys
from gateway.server.app import create_app
from gateway.speech.hamsa.protocol import ErrorKind
from gateway.telephony.events import Transport
from tests.conftest import TIMEOUT, make_settings

GATEWAY = Path(metrics.__file__).resolve().parent


def promtool() -> str:
    """The promtool binary; `make test` installs it (scripts/install-test-tools.sh).

    Missing on a developer machine: skip. Missing in CI: fail, the check must run there.
    """
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: scripts/install-test-tools.sh should install it")
        pytest.skip("promtool not installed (make test installs it)")
    return path


async def scrape(client: TestClient) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name{labels}``, or None when the series does not exist."""
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


@pytest.fixture
async def client(aiohttp_client) -> TestClient:  # type: ignore[no-untyped-def]
    # The parrot agent: a real app without the speech backend (nothing here needs it).
    return await aiohttp_client(create_app(make_settings(agent=AgentMode.PARROT)))  # type: ignore[no-any-return]


# ---------------------------------------------------------------- pre-initialised series


async def test_every_closed_set_label_combination_exists_at_zero(client: TestClient) -> None:
    text = await scrape(client)
    expected: list[tuple[str, dict[str, str]]] = []
    for transport in metrics.TRANSPORTS:
        expected.append(("gateway_active_calls", {"transport": transport}))
        expected.append(("gateway_interruptions_total", {"transport": transport}))
        for outcome in metrics.CALL_OUTCOMES:
            expected.append(("gateway_calls_total", {"transport": transport, "outcome": outcome}))
        for direction in metrics.DIRECTIONS:
            labels = {"transport": transport, "direction": direction}
            expected.append(("gateway_frames_total", labels))
        for reason in metrics.MALFORMED_REASONS.get(transport, ()):
            labels = {"transport": transport, "reason": reason}
            expected.append(("gateway_malformed_input_total", labels))
        for reason in metrics.IGNORED_REASONS.get(transport, ()):
            labels = {"transport": transport, "reason": reason}
            expected.append(("gateway_ignored_input_total", labels))
    for stage in metrics.STAGES:
        expected.append(("gateway_stage_latency_seconds_count", {"stage": stage}))
        expected.append(("gateway_stage_latency_seconds_bucket", {"stage": stage, "le": "+Inf"}))
    for kind in metrics.AGENT_ERROR_KINDS:
        expected.append(("gateway_agent_errors_total", {"kind": kind}))
    for kind in metrics.HAMSA_ERROR_KINDS:
        expected.append(("gateway_hamsa_errors_total", {"kind": kind}))
    for outcome in metrics.TURN_OUTCOMES:
        expected.append(("gateway_turns_total", {"outcome": outcome}))
    for result in metrics.HAMSA_CONNECTION_RESULTS:
        expected.append(("gateway_hamsa_connections_total", {"result": result}))
    for endpoint in metrics.TWILIO_ENDPOINTS:
        expected.append(("gateway_twilio_signature_failures_total", {"endpoint": endpoint}))
    for transport in metrics.AUTH_TRANSPORTS:
        expected.append(("gateway_auth_failures_total", {"transport": transport}))
    for name, labels in expected:
        assert value(text, name, **labels) == 0.0, (name, labels)
    # Spot checks the issue names, spelled out (not derived from the sets above).
    assert value(text, "gateway_calls_total", transport="twilio", outcome="completed") == 0.0
    assert (
        value(text, "gateway_malformed_input_total", transport="twilio", reason="bad_base64") == 0.0
    )
    assert value(text, "gateway_stage_latency_seconds_count", stage="heard") == 0.0


async def test_series_count_stays_bounded(client: TestClient) -> None:
    """Pre-initialising is bounded by the closed sets: a few hundred series, not thousands."""
    count = len(samples(await scrape(client)))
    assert 300 < count < 1000, count


# ---------------------------------------------------------------- process, build, _created


async def test_process_and_python_collectors_are_on_the_app_registry(client: TestClient) -> None:
    text = await scrape(client)
    names = {s.name for s in samples(text)}
    assert "python_info" in names
    assert "python_gc_collections_total" in names
    if platform.system() == "Linux":  # ProcessCollector reads /proc
        for name in (
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ):
            assert name in names, name
        rss = value(text, "process_resident_memory_bytes")
        assert rss is not None and rss > 1_000_000


async def test_build_info_names_version_and_python(client: TestClient) -> None:
    text = await scrape(client)
    build = [s for s in samples(text) if s.name == "gateway_build_info"]
    assert len(build) == 1
    assert build[0].labels == {"version": __version__, "python": platform.python_version()}
    assert build[0].value == 1.0


async def test_no_created_series(client: TestClient) -> None:
    text = await scrape(client)
    assert "_created" not in text


async def test_asyncio_tasks_gauge_counts_live_tasks(client: TestClient) -> None:
    """The leak detector behind the dashboard's leaked-tasks panel sees tasks come and go."""
    before = value(await scrape(client), "gateway_asyncio_tasks")
    assert before is not None and before >= 1  # at least the scrape's own handler task
    stop = asyncio.Event()
    extra = [asyncio.create_task(stop.wait()) for _ in range(7)]
    during = value(await scrape(client), "gateway_asyncio_tasks")
    stop.set()
    await asyncio.wait_for(asyncio.gather(*extra), TIMEOUT)
    after = value(await scrape(client), "gateway_asyncio_tasks")
    assert during is not None and after is not None
    assert during >= before + 7
    assert after <= during - 7


def test_asyncio_tasks_gauge_is_nan_outside_a_loop() -> None:
    text = metrics.Metrics().render().decode()
    got = value(text, "gateway_asyncio_tasks")
    assert got is not None and math.isnan(got)


# ---------------------------------------------------------------- buckets


async def test_turn_buckets_resolve_one_to_one_and_a_half_seconds(client: TestClient) -> None:
    m = client.app[keys.METRICS]  # type: ignore[index]
    m.observe_stage("turn", 1.25)
    m.observe_stage("heard", 1.45)
    text = await scrape(client)
    turn = {
        s.labels["le"]: s.value
        for s in samples(text)
        if s.name == "gateway_stage_latency_seconds_bucket" and s.labels["stage"] == "turn"
    }
    for le in ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5"):
        assert le in turn, le
    # 1.25 s lands between 1.2 and 1.3: a p50 of "somewhere in 1.0-1.5 s" is no longer all we see.
    assert turn["1.2"] == 0.0 and turn["1.3"] == 1.0
    heard = {
        s.labels["le"]: s.value
        for s in samples(text)
        if s.name == "gateway_stage_latency_seconds_bucket" and s.labels["stage"] == "heard"
    }
    assert heard["1.4"] == 0.0 and heard["1.5"] == 1.0


# ---------------------------------------------------------------- promtool


async def test_real_scrape_passes_promtool_check_metrics(client: TestClient) -> None:
    binary = promtool()
    m = client.app[keys.METRICS]  # type: ignore[index]
    m.observe_stage("turn", 0.9)
    m.calls.labels("twilio", "completed").inc()
    text = await scrape(client)
    result = subprocess.run(  # noqa: ASYNC221 (a test: blocking the loop for promtool is fine)
        [binary, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    # promtool exits 0 for clean input and prints lint findings (e.g. counters without _total).
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "", result.stdout.decode()


# ---------------------------------------------------------------- closed sets vs the code


def test_stage_groups_partition_the_stages() -> None:
    assert set(metrics.CALLER_STAGES) | set(metrics.INTERNAL_STAGES) == set(metrics.STAGES)
    assert not set(metrics.CALLER_STAGES) & set(metrics.INTERNAL_STAGES)
    assert set(metrics.CALLER_STAGES) == {
        "turn",
        "heard",
        "stt",
        "agent_first_text",
        "tts_first_audio",
    }


def test_label_sets_match_the_enums_that_produce_them() -> None:
    assert set(metrics.TRANSPORTS) == {t.value for t in Transport}
    assert set(metrics.MALFORMED_REASONS) <= set(metrics.TRANSPORTS)
    assert set(metrics.IGNORED_REASONS) <= set(metrics.TRANSPORTS)
    assert set(metrics.HAMSA_ERROR_KINDS) == {k.value for k in ErrorKind}
    assert set(metrics.AGENT_ERROR_KINDS) == set(ERROR_KINDS)


def _literals(node: ast.AST) -> set[str]:
    return {
        c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)
    }


def _module_transport(path: Path) -> str | None:
    """The transport a telephony module speaks for, by its name; None for shared modules."""
    markers = {"asterisk_ws": "asterisk"}
    for transport in metrics.TRANSPORTS:
        if markers.get(transport, transport) in path.name:
            return transport
    return None


def _telephony_reasons(event_class: str) -> dict[Path, set[str]]:
    """Reason literals of every ``Malformed(...)`` / ``Ignored(...)`` in gateway/telephony."""
    found: dict[Path, set[str]] = {}
    for path in sorted((GATEWAY / "telephony").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == event_class
                and node.args
            ):
                found.setdefault(path, set()).update(_literals(node.args[0]))
    return found


@pytest.mark.parametrize(
    ("event_class", "closed_set"),
    [("Malformed", metrics.MALFORMED_REASONS), ("Ignored", metrics.IGNORED_REASONS)],
)
def test_every_reason_the_parsers_emit_is_preinitialised(
    event_class: str, closed_set: dict[str, tuple[str, ...]]
) -> None:
    found = _telephony_reasons(event_class)
    assert found, "no reasons found: did the parsers move?"
    every = {reason for reasons in closed_set.values() for reason in reasons}
    for path, reasons in found.items():
        transport = _module_transport(path)
        allowed = set(closed_set.get(transport, ())) if transport is not None else every
        assert reasons <= allowed, (path.name, sorted(reasons - allowed))


def test_call_and_turn_outcomes_in_the_code_are_preinitialised() -> None:
    """``outcome="..."`` keywords and ``<x>.outcome = "..."`` assignments across gateway/."""
    call_outcomes: set[str] = set()
    turn_outcomes: set[str] = set()
    for path in GATEWAY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "outcome" and isinstance(kw.value, ast.Constant):
                        call_outcomes.add(str(kw.value.value))
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr == "outcome":
                        owner = ast.unparse(target.value)
                        bucket = turn_outcomes if "record" in owner else call_outcomes
                        if isinstance(node.value.value, str):
                            bucket.add(node.value.value)
    assert {"error", "drained", "caller_silent"} <= call_outcomes  # the scan sees the code
    assert {"interrupted", "stt_error"} <= turn_outcomes
    assert call_outcomes <= set(metrics.CALL_OUTCOMES), sorted(
        call_outcomes - set(metrics.CALL_OUTCOMES)
    )
    assert turn_outcomes <= set(metrics.TURN_OUTCOMES), sorted(
        turn_outcomes - set(metrics.TURN_OUTCOMES)
    )
    # Refusals are counted as "refused_" + CallRegistry.refusal_reason().
    assert {"refused_draining", "refused_at_capacity"} <= set(metrics.CALL_OUTCOMES)
