"""The three figures of the thesis as files (matplotlib): a capacity curve (Fig. 2.2a),
capacity against parameters (Fig. 2.2b) and quantization curves (Fig. 2.3). The dashboard
draws the same figures in the browser."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only: no display
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from capacity_service.specs import CapacityResult, SweepResult

FORMATS = (".png", ".svg", ".pdf")
REFERENCES = (
    (2.0, "2 bits/param (perceptron)"),
    (2.3, "2.3 (thesis FCDNN)"),
    (3.0, "3.0 (thesis CNN conv)"),
    (3.7, "3.7 (thesis LSTM)"),
)
MEMORIZED = 0.99


class CapacityPoint(NamedTuple):
    """One stored capacity, as capacity_vs_params plots it."""

    model_kind: str
    params: int
    capacity_bits: float


def capacity_curve(result: CapacityResult, title: str = "") -> Figure:
    """I and accuracy against N, the maximum marked, and the over-parameterized /
    maximum / under-parameterized regions shaded."""
    curve = result.curve
    best_n = result.best.n
    ns = [p.n for p in curve]
    figure, bits_axis = plt.subplots(figsize=(7, 4.2))
    accuracy_axis = bits_axis.twinx()
    bits_axis.plot(ns, [p.mutual_information_bits for p in curve], "o-", label="I (bits)")
    accuracy_axis.plot(ns, [p.accuracy for p in curve], "s:", color="tab:green", label="accuracy")
    bits_axis.plot(
        [best_n],
        [result.capacity_bits],
        "*",
        markersize=16,
        color="tab:red",
        label=f"capacity {result.capacity_bits:,.0f} bits at N = {best_n:,}",
    )
    memorized = [p.n for p in curve if p.accuracy >= MEMORIZED]
    all_fit = max(memorized, default=ns[0])
    edges = [
        (ns[0], all_fit, "tab:green", "over-parameterized"),
        (all_fit, max(best_n, all_fit), "tab:blue", "maximum"),
        (max(best_n, all_fit), ns[-1], "tab:red", "under-parameterized"),
    ]
    for start, end, color, name in edges:
        if end > start:
            bits_axis.axvspan(start, end, color=color, alpha=0.08)
            bits_axis.text(
                (start + end) / 2,
                1.01,
                name,
                transform=bits_axis.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    bits_axis.set_xlabel("N (samples)")
    bits_axis.set_ylabel("I (bits)")
    accuracy_axis.set_ylabel("accuracy")
    accuracy_axis.set_ylim(0.45, 1.02)
    lines = bits_axis.get_legend_handles_labels()
    more = accuracy_axis.get_legend_handles_labels()
    bits_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    figure.suptitle(
        title or f"{result.params:,} parameters: {result.bits_per_param:.2f} bits/param",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def capacity_vs_params(capacities: Sequence[CapacityPoint]) -> Figure:
    """Stored capacities against parameter counts by model kind, with the fitted bits
    per parameter of each kind and the reference slopes."""
    figure, axis = plt.subplots(figsize=(7, 4.6))
    params = [point.params for point in capacities]
    span = [min(params) / 1.5, max(params) * 1.5]
    for kind in sorted({point.model_kind for point in capacities}):
        own = [point for point in capacities if point.model_kind == kind]
        xs = [point.params for point in own]
        ys = [point.capacity_bits for point in own]
        slope = sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
        (points,) = axis.plot(xs, ys, "o", label=kind)
        axis.plot(
            span,
            [slope * x for x in span],
            "-",
            color=points.get_color(),
            label=f"{kind} fit: {slope:.2f} bits/param",
        )
    for slope, name in REFERENCES:
        axis.plot(span, [slope * x for x in span], ":", color="grey", linewidth=0.8, label=name)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("parameters")
    axis.set_ylabel("capacity (bits)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def quantization_curves(sweeps: Sequence[SweepResult | tuple[str, SweepResult]]) -> Figure:
    """Accuracy against precision, directly quantized (dashed) and retrained (solid),
    per N (full / half capacity), the precision boundary starred. A sweep is named by
    its regime, or by the label given with it."""
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for given in sweeps:
        name, sweep = given if isinstance(given, tuple) else (given.regime, given)
        for curve in sweep.curves:
            label = f"{name} N={curve.n:,}"
            bits = [p.bits for p in curve.points]
            (line,) = axis.plot(
                bits,
                [p.accuracy_retrained for p in curve.points],
                "o-",
                label=f"{label} retrained",
            )
            axis.plot(
                bits,
                [p.accuracy_quantized for p in curve.points],
                "x--",
                color=line.get_color(),
                label=f"{label} direct",
            )
            axis.axhline(curve.float_accuracy, color=line.get_color(), linewidth=0.6)
            boundary = curve.precision_boundary
            at = next((p for p in curve.points if p.bits == boundary), None)
            if boundary is not None and at is not None:
                axis.plot(
                    [boundary],
                    [at.accuracy_retrained],
                    "*",
                    markersize=15,
                    color=line.get_color(),
                    label=f"{label} boundary {boundary} bits",
                )
    axis.invert_xaxis()
    axis.set_xlabel("precision (bits)")
    axis.set_ylabel("accuracy")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def save(figure: Figure, path: Path) -> None:
    """Write `figure` as PNG, SVG or PDF by the file's extension."""
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: give a file ending in {', '.join(FORMATS)}")
    figure.savefig(path, dpi=130)
    plt.close(figure)
