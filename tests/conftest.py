"""Shared test helpers: one timeout constant, settings builders, free ports."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from gateway.config import Settings

# The single time constant for test timeouts (design guide, habit 8).
TIMEOUT = 10.0


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: unsigned Twilio allowed unless a token is given, parrot delay 0."""
    base: dict[str, Any] = {
        "port": 0,
        "public_url": "https://gw.example.com",
        "twilio_allow_unsigned": "twilio_auth_token" not in overrides,
        "parrot_delay_ms": 0,
    }
    base.update(overrides)
    return Settings(**base)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def settings() -> Settings:
    return make_settings()
