"""Results as CSV: the capacity curve (one row per N) or the quantization curves (one row
per N and precision, the float training first). Torch-free: the API serves it."""

from __future__ import annotations

import csv
import io
from typing import Any

CAPACITY_COLUMNS = ("n", "accuracy", "mutual_information_bits", "best")
SWEEP_COLUMNS = (
    "n",
    "bits",
    "accuracy_quantized",
    "accuracy_retrained",
    "mutual_information_quantized_bits",
    "mutual_information_bits",
    "retrain_epochs",
    "precision_boundary",
)


def result_csv(result: dict[str, Any]) -> str:
    """CSV of a capacity result (it has `curve`) or a sweep result (it has `curves`)."""
    out = io.StringIO()
    if "curve" in result:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CAPACITY_COLUMNS)
        best_n = (result.get("best") or {}).get("n")
        for point in result["curve"]:
            writer.writerow(
                [
                    point["n"],
                    point["accuracy"],
                    point["mutual_information_bits"],
                    int(point["n"] == best_n),
                ]
            )
        return out.getvalue()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SWEEP_COLUMNS)
    for curve in result["curves"]:
        boundary = curve.get("precision_boundary")
        accuracy, information = curve["float_accuracy"], curve["float_mutual_information_bits"]
        writer.writerow(
            [
                curve["n"],
                "float",
                accuracy,
                accuracy,
                information,
                information,
                curve.get("float_epochs", ""),
                boundary,
            ]
        )
        for point in curve["points"]:
            writer.writerow(
                [
                    curve["n"],
                    point["bits"],
                    point["accuracy_quantized"],
                    point["accuracy_retrained"],
                    point["mutual_information_quantized_bits"],
                    point["mutual_information_bits"],
                    point["retrain_epochs"],
                    boundary,
                ]
            )
    return out.getvalue()
