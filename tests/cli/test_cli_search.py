"""`capacity search`: JSON output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capacity_service.cli import main

SMALL = ["--model", "fcdnn", "--width", "6", "--n-in", "10", "--epochs", "30",
         "--budget-trials", "8", "--batch", "8"]  # fmt: skip


def test_search_json_has_the_promised_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", *SMALL, "--json", "--quiet"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {"capacity_bits", "bits_per_param", "best", "curve", "trials"} <= document.keys()
    assert {"n", "accuracy", "lr", "momentum", "lr_decay", "batch_size"} <= document["best"].keys()
    assert len(document["trials"]) == 8
    assert document["capacity_bits"] == max(
        t["mutual_information_bits"] for t in document["trials"]
    )
    quality = document["quality"]
    assert {"bracketed", "best_finished", "trials", "budget_used", "prior_n"} <= quality.keys()
    assert quality["trials"] == 8 and quality["verdict"]


def test_search_from_a_spec_file_with_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "capacity.json"
    spec.write_text(json.dumps({"model": {"kind": "fcdnn", "width": 6, "n_in": 10},
                                "search": {"budget_trials": 6, "batch": 6, "epochs": 20},
                                "seed": 1}))  # fmt: skip
    assert main(["search", str(spec)]) == 0
    captured = capsys.readouterr()
    assert "bits/param" in captured.out and "curve" in captured.out
    assert "quality" in captured.out and "lower bound" in captured.out
    assert "stage" in captured.err and "best I" in captured.err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--budget-trials", "0"], "search.budget_trials"),
        (["--budget-seconds", "0"], "search.budget_seconds"),
        (["--batch", "0"], "search.batch"),
        (["--lr-range", "0.05,0.001"], "search.lr: low must be < high"),
        (["--lr-range", "0.01,0.01"], "search.lr: low must be < high"),
        (["--n-range", "100,50"], "search.n_range: low must be < high"),
        (["--n-range", "10,5000"], "search.n_range: n = 5000 exceeds the 2^10"),
        # valid, but too short to train any trial to its first rung on any machine
        (["--budget-seconds", "0.000001"], "search.budget_seconds: 1e-06 s is too short"),
    ],
)
def test_bad_search_input_exits_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", *SMALL, *argv, "--quiet"]) == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert captured.out == ""


def test_training_flags_belong_to_measure_not_search(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["search", *SMALL, "--lr", "0.1"])
    assert exited.value.code == 2
