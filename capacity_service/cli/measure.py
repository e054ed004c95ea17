"""`capacity measure`: train one model on N random samples (or search N) and report I."""

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
    print_table,
    spec_document,
    validate,
)
from capacity_service.specs import CurvePoint, MeasureResult, MeasureSpec, NSearchResult


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "measure",
        help="train one model on N random samples and report the bits it memorized",
        description="Train a model to memorize N random binary samples and report the "
        "accuracy p and the mutual information I = N (1 - H2(p)). The spec comes from "
        "SPEC.json, from flags, or both (flags override the file).",
    )
    add_spec_arguments(parser)
    parser.add_argument("--n", type=int, help="number of random samples N")
    search = parser.add_argument_group("search over N")
    search.add_argument(
        "--search-n",
        action="store_true",
        help="grow N from the parameter count and bisect to the N with the largest I",
    )
    search.add_argument("--max-trials", type=int, default=12, help="trainings at most")
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


def build_spec(args: argparse.Namespace) -> MeasureSpec:
    document = spec_document(args, {"n": "n"})
    return validate(MeasureSpec, document, args.spec or "flags")


def run(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    if args.max_trials < 1:
        fail(f"--max-trials must be >= 1, got {args.max_trials}")
    check_device(spec.device)
    bar = None if args.quiet else ProgressBar()
    on_epoch = None if bar is None else bar.on_epoch
    curve: tuple[CurvePoint, ...] = ()
    if args.search_n:
        from capacity_service.science.search import search_n

        def on_trial(result: MeasureResult) -> None:
            if bar is not None:
                bar.prefix = f"N search, {result.n} done (I {result.mutual_information_bits:.0f}) "

        found = search_n(spec, max_trials=args.max_trials, on_trial=on_trial, on_epoch=on_epoch)
        if bar is not None:
            bar.close()
        document = search_document(found)
        best, curve = found.best, found.curve
    else:
        from capacity_service.science.measure import measure

        best = measure(spec, on_epoch)
        if bar is not None:
            bar.close()
        document = best.model_dump(mode="json")
    if args.json:
        print(json.dumps(document))
        return 0
    rows = [
        ("model", describe_model(spec.model)),
        ("parameters", f"{best.params:,}"),
        ("N", f"{best.n:,}"),
        ("accuracy p", f"{best.accuracy:.4%}"),
        ("I (bits)", f"{best.mutual_information_bits:,.1f}"),
        ("bits/param", f"{best.bits_per_param:.3f}"),
        ("epochs", str(best.epochs)),
        ("wall seconds", f"{best.wall_seconds:.1f}"),
        ("device", best.device),
    ]
    if best.conv_bits_per_param is not None:
        rows.append(("conv bits/param", f"{best.conv_bits_per_param:.3f}"))
    if best.diverged:
        rows.append(("diverged", "yes: the loss became NaN or inf; lower --lr"))
    print_table(rows)
    if curve:
        print("\ncurve (N, accuracy, I):")
        for point in curve:
            bits = point.mutual_information_bits
            print(f"  {point.n:>9,}  {point.accuracy:.4f}  {bits:,.1f}")
    print("\n" + json.dumps(document))
    return 0


def search_document(found: NSearchResult) -> dict[str, object]:
    """The best trial's fields at the top level, plus the curve and every trial."""
    document = found.best.model_dump(mode="json")
    document["curve"] = [point.model_dump(mode="json") for point in found.curve]
    document["trials"] = [trial.model_dump(mode="json") for trial in found.trials]
    document["search_wall_seconds"] = found.wall_seconds
    return document
