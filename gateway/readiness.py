"""Readiness: what ``/readyz`` reports, gathered from every long-lived backend.

A backend registers a *probe*: a function returning a :class:`Probe` (is it ready, and a JSON-able
detail). ``/readyz`` is 200 only when the process is not draining and every required probe is ready;
otherwise 503 with a body saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Probe:
    ready: bool
    detail: dict[str, Any] = field(default_factory=dict)


class Readiness:
    """Collects readiness probes and the draining flag."""

    def __init__(self) -> None:
        self.draining = False
        self._probes: dict[str, tuple[Callable[[], Probe], bool]] = {}

    def register(self, name: str, probe: Callable[[], Probe], *, required: bool = True) -> None:
        self._probes[name] = (probe, required)

    def unregister(self, name: str) -> None:
        self._probes.pop(name, None)

    def probe_ready(self, name: str) -> bool:
        """True unless probe ``name`` is registered and reports not ready (or fails).

        Cheap enough to ask once per new call: the call registry refuses calls while the
        speech backend is down (circuit open), exactly when ``/readyz`` says so.
        """
        entry = self._probes.get(name)
        if entry is None:
            return True
        try:
            return entry[0]().ready
        except Exception:
            return False

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body) for /readyz."""
        reasons: list[str] = []
        checks: dict[str, Any] = {}
        if self.draining:
            reasons.append("draining")
        for name, (probe, required) in self._probes.items():
            try:
                result = probe()
            except Exception as exc:  # a broken probe must not break /readyz
                result = Probe(False, {"error": type(exc).__name__})
            checks[name] = {"ready": result.ready, "required": required, **result.detail}
            if required and not result.ready:
                reasons.append(f"{name}_not_ready")
        ready = not reasons
        return ready, {"ready": ready, "reasons": reasons, "checks": checks}
