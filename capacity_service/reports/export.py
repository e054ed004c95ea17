"""Results as CSV: the capacity curve (one row per N) or the quantization curves (one row
per N and precision, the float training first). Torch-free: the API serves it."""

from __future__ import annotations

import csv
import io

from pydantic import BaseModel

from capacity_service.specs import CapacityResult, SweepResult

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


def result_csv(result: BaseModel) -> str:
    """CSV of a capacity result (its curve) or a sweep result (its curves)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if isinstance(result, CapacityResult):
        writer.writerow(CAPACITY_COLUMNS)
        for point in result.curve:
            writer.writerow([point.n, point.accuracy, point.mutual_information_bits,
                             int(point.n == result.best.n)])  # fmt: skip
        return out.getvalue()
    if not isinstance(result, SweepResult):
        raise ValueError(f"no CSV form for a {type(result).__name__}")
    writer.writerow(SWEEP_COLUMNS)
    for curve in result.curves:
        boundary = curve.precision_boundary
        accuracy, information = curve.float_accuracy, curve.float_mutual_information_bits
        writer.writerow([curve.n, "float", accuracy, accuracy, information, information,
                         curve.float_epochs, boundary])  # fmt: skip
        for quantized in curve.points:
            writer.writerow(
                [
                    curve.n,
                    quantized.bits,
                    quantized.accuracy_quantized,
                    quantized.accuracy_retrained,
                    quantized.mutual_information_quantized_bits,
                    quantized.mutual_information_bits,
                    quantized.retrain_epochs,
                    boundary,
                ]
            )
    return out.getvalue()
