"""`capacity plot` (the thesis's figures as PNG/SVG/PDF) and `capacity export` (a job's
curve as CSV), from the database or through the API (a Backend, backend.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from capacity_service.cli.backend import backend_from
from capacity_service.cli.common import fail
from capacity_service.cli.sources import add_source_arguments
from capacity_service.specs import MODEL_KINDS, CapacityResult, SweepResult

if TYPE_CHECKING:
    from capacity_service.api.schemas import CurveItem


def add_parsers(subparsers: Any) -> None:
    plot = subparsers.add_parser(
        "plot",
        help="draw a job's capacity or quantization curve, or capacity against "
        "parameters across stored results, to a PNG, SVG or PDF file",
    )
    plot.add_argument("id", type=int, nargs="?", help="a succeeded capacity or quant_sweep job")
    plot.add_argument("--out", required=True, help="FILE.png, FILE.svg or FILE.pdf")
    plot.add_argument(
        "--capacity-vs-params",
        action="store_true",
        help="every stored capacity result, by model kind (thesis Fig. 2.2b)",
    )
    plot.add_argument("--model-kind", choices=MODEL_KINDS, help="with --capacity-vs-params")
    plot.add_argument("--min-params", type=int, help="with --capacity-vs-params")
    plot.add_argument("--max-params", type=int, help="with --capacity-vs-params")
    add_source_arguments(plot, api=True)
    plot.set_defaults(handler=run_plot)

    export = subparsers.add_parser("export", help="a job's curve as CSV")
    export.add_argument("id", type=int, help="a succeeded capacity or quant_sweep job")
    export.add_argument("--out", help="file to write (default: standard output)")
    add_source_arguments(export, api=True)
    export.set_defaults(handler=run_export)


def _result(args: argparse.Namespace) -> BaseModel:
    """The result of job `args.id`, or a UsageError saying why there is none."""
    with backend_from(args) as backend:
        job = backend.job(args.id)
        result = backend.result(args.id)
    if result is None:
        fail(
            f"job {args.id} has no result: it is {job.state}"
            + (f" ({job.error})" if job.error else "")
        )
    return result


def _capacity_items(args: argparse.Namespace) -> list[CurveItem]:
    with backend_from(args) as backend:
        return backend.curves(
            model_kind=args.model_kind, min_params=args.min_params, max_params=args.max_params
        )


def run_plot(args: argparse.Namespace) -> int:
    from capacity_service.reports import plots

    out = Path(args.out)
    if out.suffix.lower() not in plots.FORMATS:
        fail(f"--out {args.out}: give a file ending in {', '.join(plots.FORMATS)}")
    if args.capacity_vs_params == (args.id is not None):
        fail("give a job id, or --capacity-vs-params (not both)")
    if args.capacity_vs_params:
        items = _capacity_items(args)
        if not items:
            fail("no stored capacity results match; run capacity jobs first")
        points = [plots.CapacityPoint(i.model_kind, i.params, i.capacity_bits) for i in items]
        figure = plots.capacity_vs_params(points)
    else:
        result = _result(args)
        if isinstance(result, CapacityResult):
            figure = plots.capacity_curve(
                result, title=f"job {args.id}: {result.bits_per_param:.2f} bits/param"
            )
        elif isinstance(result, SweepResult):
            figure = plots.quantization_curves([result])
        else:
            fail(f"job {args.id}'s {type(result).__name__} has no figure")
    plots.save(figure, out)
    print(f"wrote {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from capacity_service.reports.export import result_csv

    text = result_csv(_result(args))
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
