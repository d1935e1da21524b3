"""Command line: ``gateway serve | sim-hamsa | call | loadtest``. Argument parsing only."""

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
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (settings from the environment)")
    serve.add_argument("--host", help="listen address (env HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (env PORT, default 8080)")
    serve.set_defaults(func=_serve)
    load = sub.add_parser(
        "loadtest", help="concurrent simulated calls against a gateway", add_help=False
    )
    load.set_defaults(func=lambda a: _delegate("gateway.sim.loadtest", "loadtest_main", a))
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
