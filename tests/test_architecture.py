"""Import direction between the gateway's layers (issue 12 item 10).

The layers, bottom up: ``telecodecs`` (pure codecs); the shared vocabulary (``audio_format``,
``config``, ``logs``, ``metrics``, ``readiness``); ``telephony`` (carrier adapters and the call
runner, with ``calls``); ``speech`` (Hamsa); ``agent`` (what a call says); ``server`` (the
one place that wires them, :mod:`gateway.server.app`). ``sim`` holds stand-ins and tools
that drive a gateway from outside. A layer imports only from below it; the wiring decides
the rest. Every ``import`` counts, including those inside functions (a lazy import is
still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> packages (under gateway.) it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "audio_format": frozenset({"telephony", "speech", "agent", "server", "sim", "calls"}),
    "telephony": frozenset({"speech", "agent", "server", "sim"}),
    "calls": frozenset({"speech", "agent", "server", "sim"}),
    "speech": frozenset({"telephony", "agent", "server", "sim"}),
    "agent": frozenset({"server", "sim"}),
    "sim": frozenset({"server", "agent", "speech"}),
}


def gateway_imports(path: Path) -> set[tuple[str, int]]:
    """``(top-level package under gateway, line)`` for every absolute gateway import."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "gateway" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def layer_of(path: Path) -> str:
    relative = path.relative_to(ROOT / "gateway").parts
    return relative[0] if len(relative) > 1 else Path(relative[0]).stem


def test_the_scanner_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import gateway.speech.hamsa\n"
        "def f():\n    from gateway.server import keys\n"
        "from . import relative\nimport aiohttp\n"
    )
    assert gateway_imports(sample) == {("speech", 1), ("server", 3)}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    files = [p for p in (ROOT / "gateway").rglob("*.py") if layer_of(p) == layer]
    assert files, f"no gateway/{layer} modules: did the layout change?"
    offences = [
        f"{p.relative_to(ROOT)}:{line} imports gateway.{target}"
        for p in files
        for target, line in sorted(gateway_imports(p))
        if target in FORBIDDEN[layer]
    ]
    assert not offences, "\n".join(offences)


def test_codecs_depend_on_nothing_of_the_gateway() -> None:
    offences = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in (ROOT / "codecs").rglob("*.py")
        for _, line in gateway_imports(p)
    ]
    assert not offences, offences


def test_only_the_server_reaches_into_the_apps_state() -> None:
    """``gateway.server.keys`` (the app's typed state) is the wiring's business alone."""
    offences = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "gateway").rglob("*.py")
        if layer_of(p) not in {"server", "__main__"}
        and "gateway.server" in p.read_text(encoding="utf-8")
        and any(target == "server" for target, _ in gateway_imports(p))
    ]
    assert not offences, offences
