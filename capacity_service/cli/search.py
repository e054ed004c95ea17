"""`capacity search`: the capacity search (a design around the prior N, widening, then
Bayesian optimization, with successive halving on the batched engine)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
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
from capacity_service.specs import DEFAULT_EPOCHS, DEFAULT_PATIENCE, CapacitySpec, TrialRecord

SEARCH_FLAGS = {
    "budget_trials": "search.budget_trials",
    "budget_seconds": "search.budget_seconds",
    "batch": "search.batch",
    "epochs": "search.epochs",
    "patience": "search.patience",
    "lr_range": "search.lr",
    "n_range": "search.n_range",
    "estimator": "search.estimator",
}


def _by_kind(defaults: Mapping[str, int]) -> str:
    """A per-kind default for a flag's help, read from its table (so the help cannot
    drift from it): the kinds that differ, then "the others" at the common value."""
    common = Counter(defaults.values()).most_common(1)[0][0]
    named = [f"{kind.upper()} {value}" for kind, value in defaults.items() if value != common]
    return ", ".join([*named, f"the others {common}"])


def _pair(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        parts = text.split(",")
        try:
            values = [kind(part) for part in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
        if len(values) != 2:
            raise argparse.ArgumentTypeError(f"expected two values LOW,HIGH, got {text!r}")
        return values

    return parse


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "search",
        help="measure capacity: search N and the training settings for the largest I",
        description="Maximizes I = N (1 - H2(p)) over N and the training settings: a "
        "design around the prior N (parameters x the kind's usual bits/param) at several "
        "learning rates, N widened until the maximum is bracketed, then Bayesian "
        "optimization (scikit-optimize) over learning rate, decay, momentum, batch size and "
        "N; K trials at a time on the batched engine, the worse ones stopped at rungs "
        "(successive halving) and their rows refilled. The result says how far to trust "
        "it (quality).",
    )
    add_spec_arguments(parser, training=False)
    search = parser.add_argument_group("search (override the spec file)")
    search.add_argument("--budget-trials", type=int, help="trainings at most (60)")
    search.add_argument("--budget-seconds", type=float, help="wall seconds at most (600)")
    search.add_argument(
        "--batch", type=int, help="K: trials trained together (8 on a CPU, 256 on a GPU)"
    )
    search.add_argument(
        "--epochs", type=int, help=f"epoch budget of each trial ({_by_kind(DEFAULT_EPOCHS)})"
    )
    search.add_argument(
        "--patience",
        type=int,
        help=f"plateau patience of each trial ({_by_kind(DEFAULT_PATIENCE)})",
    )
    search.add_argument(
        "--lr-range", type=_pair(float), help="LOW,HIGH (by kind: FCDNN 0.002,0.2; LSTM 0.04,1.2)"
    )
    search.add_argument(
        "--n-range",
        type=_pair(int),
        help="LOW,HIGH of N for the Bayesian stage (around the prior N)",
    )
    search.add_argument("--estimator", choices=("GP", "RF", "ET"), help="surrogate (GP)")
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


@dataclass
class SearchProgress:
    stage: str = "prior"
    done: int = 0
    best: float = 0.0


def run(args: argparse.Namespace) -> int:
    spec = validate(CapacitySpec, spec_document(args, SEARCH_FLAGS), args.spec or "flags")
    check_device(spec.device)
    from capacity_service.provenance import provenance, summary
    from capacity_service.science.search import search_capacity

    bar = None if args.quiet else ProgressBar(interval=2.0)
    progress = SearchProgress()

    def show() -> None:
        if bar is not None:
            bar.update(
                progress.done,
                spec.search.budget_trials,
                f"stage {progress.stage}: {progress.done} trials, best I {progress.best:,.0f} bits",
            )

    def on_stage(stage: str) -> None:
        progress.stage = stage
        show()

    def on_trial(record: TrialRecord) -> None:
        progress.done += 1
        progress.best = max(progress.best, record.mutual_information_bits)
        show()

    try:
        result = search_capacity(spec, on_trial=on_trial, on_stage=on_stage)
    except ValueError as error:  # a budget this device cannot use, a spec that does not fit
        if bar is not None:
            bar.close()
        fail(str(error))
    if bar is not None:
        bar.close()
    computed = provenance(result.device)
    result = result.model_copy(update={"provenance": computed})
    document = result.model_dump(mode="json")
    if args.json:
        print(json.dumps(document))
        return 0
    best = result.best
    rows = [
        ("model", describe_model(spec.model)),
        ("parameters", f"{result.params:,}"),
        ("capacity (bits)", f"{result.capacity_bits:,.1f}"),
        ("bits/param", f"{result.bits_per_param:.3f}"),
        ("best N", f"{best.n:,} at accuracy {best.accuracy:.4%}"),
        (
            "best settings",
            f"lr {best.lr:.4g}, momentum {best.momentum:.3f}, "
            f"decay {best.lr_decay:.2f}, batch {best.batch_size}",
        ),
        ("trials", f"{len(result.trials)} ({result.engine} engine)"),
        ("wall seconds", f"{result.wall_seconds:.1f}"),
        ("device", result.device),
        ("computed with", summary(computed)),
    ]
    if result.conv_bits_per_param is not None:
        rows.append(("conv bits/param", f"{result.conv_bits_per_param:.3f}"))
    if result.quality is not None:
        quality = result.quality
        rows.append(("quality", quality.verdict))
        rows.append((
            "bracketed / best finished",
            f"{'yes' if quality.bracketed else 'no'} / {'yes' if quality.best_finished else 'no'}"
            f" ({quality.budget_used:.0%} of the time budget)",
        ))  # fmt: skip
    print_table(rows)
    print("\ncurve (N, accuracy, I):")
    for point in result.curve:
        bits = point.mutual_information_bits
        print(f"  {point.n:>9,}  {point.accuracy:.4f}  {bits:,.1f}")
    return 0
