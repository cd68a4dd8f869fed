"""Command line: ``python -m openai_lb demo`` (also installed as ``openai-lb``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openai-lb", description="openai_lb: balance Azure OpenAI deployments.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="offline demo on fake Azure OpenAI servers: PTU first, spill, return")
    demo.add_argument("--requests", type=int, default=36, help="how many requests to send (default 36)")
    demo.add_argument("--interval", type=float, default=0.1, help="seconds between requests (default 0.1)")
    demo.add_argument("--budget", type=int, default=5, help="PTU requests per window (default 5)")
    demo.add_argument("--window", type=float, default=1.5, help="PTU window in seconds (default 1.5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import DemoSettings, run_demo

        if args.requests < 1 or args.interval < 0 or args.budget < 1 or args.window <= 0:
            print(
                "openai-lb demo: --requests and --budget must be >= 1, --interval >= 0, --window > 0", file=sys.stderr
            )
            return 2
        settings = DemoSettings(args.requests, args.interval, args.budget, args.window)
        served = run_demo(settings)
        return 0 if sum(served.values()) == args.requests else 1
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
