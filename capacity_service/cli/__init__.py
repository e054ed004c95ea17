"""The `capacity` command."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

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
from capacity_service.logs import configure_logging
from capacity_service.settings import Settings


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
    try:
        settings = Settings()  # refuse a bad CAPACITY_* variable before anything runs
    except ValidationError as error:
        print(f"capacity: error: {describe_settings_error(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    configure_logging(settings.log_format, logging.DEBUG if args.verbose else logging.WARNING)
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


def describe_settings_error(error: ValidationError) -> str:
    """Each refused setting by its environment variable, e.g. "CAPACITY_LOG_FORMAT: Input
    should be 'text' or 'json' (got 'xml')"."""
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        given = f" (got {item['input']!r})" if isinstance(item.get("input"), str) else ""
        problems.append(f"CAPACITY_{field.upper()}: {item['msg']}{given}")
    return "; ".join(problems)
