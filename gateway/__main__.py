"""Command line: ``gateway serve | dev | demo | call | loadtest | sim-hamsa``; parsing only."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from gateway import __version__
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


def _dev(args: argparse.Namespace) -> int:
    """``gateway dev``: serve with every transport on and development-only credentials."""
    from gateway.sim.caller_cli import dev_environment

    for line in dev_environment(args.port, args.audiosocket_port):
        print(line)
    sys.stdout.flush()
    return _serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Telephony voice gateway: Twilio and Asterisk calls to Hamsa speech and "
        "your agent. Settings come from environment variables (see README); each command "
        "has its own --help.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} (hamsa-voice-gateway)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    serve = sub.add_parser(
        "serve",
        help="run the gateway (settings from the environment)",
        description="Run the gateway. Settings come from environment variables (README, "
        "Configuration); a bad value stops it with exit status 2. SIGTERM drains.",
    )
    serve.add_argument("--host", help="listen address (overrides env HOST; default 0.0.0.0)")
    serve.add_argument(
        "--port", type=int, help="listen TCP port (overrides env PORT; default 8080)"
    )
    serve.set_defaults(func=_serve)
    dev = sub.add_parser(
        "dev",
        help="`make dev`: serve with every transport on and dev-only credentials",
        description="Development only: serve on 127.0.0.1 with a well-known Twilio auth "
        "token, chan_websocket user and password, AudioSocket on and call records in "
        "./calls.jsonl (variables already set in the environment win), and print one "
        "`gateway call` line per transport that works as pasted.",
    )
    dev.add_argument("--host", default=None, help="listen address (env HOST; default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8080, help="listen TCP port (default 8080)")
    dev.add_argument(
        "--audiosocket-port",
        type=int,
        default=9092,
        help="AudioSocket TCP port (env AUDIOSOCKET_PORT; default 9092)",
    )
    dev.set_defaults(func=_dev)
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
