"""`capacity sweep`: quantize a trained model to falling precisions and retrain at each."""

from __future__ import annotations

import argparse
import json
from typing import Any

from capacity_service.cli.common import (
    ProgressBar,
    add_output_arguments,
    add_spec_arguments,
    check_device,
    describe_model,
    fail,
    load_json_file,
    print_table,
    spec_document,
    validate,
)
from capacity_service.specs import SweepPoint, SweepResult, SweepSpec

SWEEP_FLAGS = {
    "n": "n",
    "regime": "regime",
    "capacity_n": "capacity_n",
    "bits": "bits",
    "tolerance": "tolerance",
    "retrain_epochs": "retrain.epochs",
    "retrain_lr": "retrain.lr",
    "retrain_batch_size": "retrain.batch_size",
    "retrain_method": "retrain.method",
    "retrain_stages": "retrain.stages",
    "code_search": "retrain.code_search",
    "search_rounds": "retrain.search_rounds",
}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="quantize a trained model to falling precisions, retrain, find the boundary",
        description="Train a model in floating point on N random samples, then quantize its "
        "weights to each precision in turn (Lloyd-Max step per group; incremental or "
        "straight-through retraining) and report the accuracy and I before and after "
        "retraining, and the precision boundary. N is given (--n) or taken from a capacity "
        "result (--regime).",
    )
    add_spec_arguments(parser)
    sweep = parser.add_argument_group("sweep (override the spec file)")
    sweep.add_argument("--n", type=_int_list, help="N, or a comma-separated list of N")
    sweep.add_argument("--regime", choices=("full", "half"), help="N relative to capacity")
    sweep.add_argument("--capacity-n", type=int, help="the N that gave the capacity")
    sweep.add_argument(
        "--capacity-result",
        help="a capacity result JSON (from `capacity measure --json`) to take capacity_n from",
    )
    sweep.add_argument("--bits", type=_int_list, help="precisions, falling: 8,6,5,4,3,2")
    sweep.add_argument("--tolerance", type=float, help="accuracy drop allowed (fraction)")
    sweep.add_argument("--retrain-epochs", type=int, help="retraining epochs per precision")
    sweep.add_argument("--retrain-lr", type=float, help="retraining learning rate")
    sweep.add_argument("--retrain-batch-size", type=int, help="retraining batch size")
    sweep.add_argument(
        "--retrain-method",
        choices=("incremental", "straight_through"),
        help="incremental (default): fix a growing share of the weights, retrain the rest; "
        "straight_through: retrain all quantized (thesis)",
    )
    sweep.add_argument(
        "--retrain-stages", type=_float_list,
        help="incremental: the share fixed after each stage, rising to 1: 0.5,0.75,0.875,1",
    )  # fmt: skip
    sweep.add_argument(
        "--code-search",
        action=argparse.BooleanOptionalAction,
        help="FCDNN: after retraining, search the last hidden layer's codes (default: on)",
    )
    sweep.add_argument(
        "--search-rounds",
        type=int,
        help="FCDNN, after the code search: rounds that retrain the last hidden layer "
        "again, the others fixed, and search again (default: 2; 0: none)",
    )
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


def _int_list(text: str) -> int | list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None
    return values[0] if len(values) == 1 and "," not in text else values


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def build_spec(args: argparse.Namespace) -> SweepSpec:
    if isinstance(args.bits, int):
        args.bits = [args.bits]
    if args.capacity_result is not None:
        result = load_json_file(args.capacity_result, what="capacity result")
        capacity_n = result.get("n")
        if not isinstance(capacity_n, int):
            fail(f"{args.capacity_result}: a capacity result needs an integer field 'n'")
        if args.capacity_n is None:
            args.capacity_n = capacity_n
    document = spec_document(args, SWEEP_FLAGS)
    return validate(SweepSpec, document, args.spec or "flags")


def run(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    check_device(spec.device)
    from capacity_service.provenance import provenance, summary
    from capacity_service.science.sweep import sweep

    bar = None if args.quiet else ProgressBar()

    def on_point(n: int, point: SweepPoint) -> None:
        if bar is not None:
            bar.prefix = (
                f"N {n}: {point.bits} bits {point.accuracy_quantized:.4f} -> "
                f"{point.accuracy_retrained:.4f} "
            )

    result = sweep(spec, on_epoch=None if bar is None else bar.on_epoch, on_point=on_point)
    if bar is not None:
        bar.close()
    computed = provenance(result.device)
    result = result.model_copy(update={"provenance": computed})
    document = sweep_document(result)
    if args.json:
        print(json.dumps(document))
        return 0
    print_table(
        [
            ("model", describe_model(spec.model)),
            ("parameters", f"{result.params:,} ({result.quantized_params:,} quantized)"),
            ("tolerance", f"{result.tolerance:.2%}"),
            ("device", result.device),
            ("wall seconds", f"{result.wall_seconds:.1f}"),
            ("computed with", summary(computed)),
        ]
    )
    for curve in result.curves:
        print(
            f"\nN = {curve.n:,}: float accuracy {curve.float_accuracy:.4%}, "
            f"I = {curve.float_mutual_information_bits:,.1f} bits"
        )
        header = f"  {'bits':>4}  {'quantized':>9}  {'retrained':>9}  {'I (bits)':>10}"
        print(header + f"  {'codes changed':>13}  {'rounds kept':>11}")
        for p in curve.points:
            changed = "-" if p.code_changes is None else f"{p.code_changes:,}"
            kept = "-" if p.search_rounds_kept is None else str(p.search_rounds_kept)
            print(
                f"  {p.bits:>4}  {p.accuracy_quantized:>9.4f}  {p.accuracy_retrained:>9.4f}  "
                f"{p.mutual_information_bits:>10,.1f}  {changed:>13}  {kept:>11}"
            )
        boundary = curve.precision_boundary
        print(f"  precision boundary: {boundary if boundary is not None else 'none'} bits")
    print("\n" + json.dumps(document))
    return 0


# the first curve's fields a reader of one-N sweeps finds at the top level
_FIRST_CURVE_FIELDS = {"n", "float_accuracy", "float_mutual_information_bits", "points",
                       "precision_boundary"}  # fmt: skip


def sweep_document(result: SweepResult) -> dict[str, object]:
    """The whole result, with the first (or only) curve's fields also at the top level."""
    first = result.curves[0].model_dump(mode="json", include=_FIRST_CURVE_FIELDS)
    return result.model_dump(mode="json") | first
