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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
