"""Command line: ``gateway serve | demo | call | loadtest | sim-hamsa``. Argument parsing only."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from gateway.config import ConfigError, load_settings
from gateway.logs import setup_logging


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:
        settings = load_settings(None, **overrides)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format.value == "json", settings.secrets)
    from gateway.server.serve import serve

    try:
        import uvloop
    except ImportError:  # uvloop is optional: plain asyncio works, a little slower
        return int(asyncio.run(serve(settings)))
    return int(uvloop.run(serve(settings)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Telephony voice gateway: Twilio and Asterisk calls to Hamsa speech and "
        "your agent. Settings come from environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (settings from the environment)")
    serve.add_argument("--host", help="listen address (env HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (env PORT, default 8080)")
    serve.set_defaults(func=_serve)
    tools = (
        (
            "loadtest",
            "concurrent simulated calls against a gateway, measured",
            "gateway.sim.loadtest",
            "loadtest_main",
        ),
        (
            "call",
            "one simulated call (Twilio, chan_websocket or AudioSocket) with a latency waterfall",
            "gateway.sim.caller_cli",
            "call_main",
        ),
        (
            "demo",
            "start a gateway with embedded defaults and call it once",
            "gateway.sim.caller_cli",
            "demo_main",
        ),
        (
            "sim-hamsa",
            "run the Hamsa simulator (realtime WebSocket + REST)",
            "gateway.sim.hamsa_sim",
            "sim_main",
        ),
    )
    for name, summary, module, function in tools:
        tool = sub.add_parser(name, help=summary, add_help=False)
        tool.set_defaults(func=lambda a, m=module, f=function: _delegate(m, f, a))
    return parser


def _delegate(module: str, function: str, args: argparse.Namespace) -> int:
    """Hand the remaining arguments to a tool's own parser."""
    import importlib

    entry = getattr(importlib.import_module(module), function)
    return int(entry(list(args.rest)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command == "serve":
        parser.error("unrecognized arguments: " + " ".join(rest))
    args.rest = rest
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
