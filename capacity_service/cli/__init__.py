"""The `capacity` command."""

from __future__ import annotations

import argparse
import logging
import sys

from capacity_service import __version__
from capacity_service.cli import (
    experiments,
    jobs,
    measure,
    plot,
    regress,
    search,
    serve,
    sweep,
)
from capacity_service.cli.common import EXIT_BAD_INPUT, UsageError
from capacity_service.client import ApiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capacity",
        description="Measure the memorization capacity of neural networks and how weight "
        "quantization erodes it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    measure.add_parser(subparsers)
    search.add_parser(subparsers)
    sweep.add_parser(subparsers)
    jobs.add_parsers(subparsers)
    serve.add_parsers(subparsers)
    plot.add_parsers(subparsers)
    regress.add_parser(subparsers)
    experiments.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except UsageError as error:
        print(f"capacity: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ApiError as error:  # the API refused the request (4xx: bad input) or is down
        print(f"capacity: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT if 400 <= error.status < 500 else 1
    except KeyboardInterrupt:
        print("capacity: interrupted", file=sys.stderr)
        return 130
