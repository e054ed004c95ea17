"""`capacity sweep`: JSON output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capacity_service.cli import main

SMALL = ["--model", "fcdnn", "--width", "8", "--epochs", "40", "--retrain-epochs", "2"]


def test_sweep_json_has_the_promised_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", *SMALL, "--n", "60", "--bits", "8,4,2", "--json", "--quiet"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {"float_accuracy", "points", "precision_boundary", "curves"} <= document.keys()
    assert [p["bits"] for p in document["points"]] == [8, 4, 2]
    for point in document["points"]:
        assert {"bits", "accuracy_quantized", "accuracy_retrained",
                "mutual_information_bits"} <= point.keys()  # fmt: skip
    assert document["n"] == 60


def test_sweep_takes_n_from_a_capacity_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["measure", "--model", "fcdnn", "--width", "8", "--n", "90", "--epochs", "5",
                 "--json", "--quiet"]) == 0  # fmt: skip
    result = tmp_path / "capacity.json"
    result.write_text(capsys.readouterr().out)
    assert main(["sweep", *SMALL, "--regime", "half", "--capacity-result", str(result),
                 "--bits", "4", "--json", "--quiet"]) == 0  # fmt: skip
    document = json.loads(capsys.readouterr().out)
    assert document["regime"] == "half" and document["n"] == 45


def test_code_search_is_on_by_default_and_the_flag_turns_it_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["sweep", *SMALL, "--n", "120", "--bits", "2", "--json", "--quiet"]
    assert main([*argv, "--no-code-search"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["points"][0]["code_changes"] is None
    assert main(argv) == 0  # on by default
    on = json.loads(capsys.readouterr().out)
    assert off["points"][0]["accuracy_retrained"] < 1.0  # so the search ran
    assert on["points"][0]["code_changes"] > 0
    assert on["points"][0]["accuracy_retrained"] > off["points"][0]["accuracy_retrained"]


def test_search_rounds_flag(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", *SMALL, "--n", "120", "--bits", "2", "--json", "--quiet"]
    assert main([*argv, "--search-rounds", "0"]) == 0
    none = json.loads(capsys.readouterr().out)["points"][0]
    assert none["search_rounds_kept"] == 0 and none["accuracy_retrained"] < 1.0
    assert main([*argv, "--search-rounds", "3"]) == 0
    three = json.loads(capsys.readouterr().out)["points"][0]
    assert 0 <= three["search_rounds_kept"] <= 3
    assert three["accuracy_retrained"] >= none["accuracy_retrained"]
    assert (three["search_rounds_kept"] > 0) == (
        three["accuracy_retrained"] > none["accuracy_retrained"]
    )


def test_sweep_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", *SMALL, "--n", "30,40", "--bits", "6,3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "N = 30:" in out and "N = 40:" in out and "precision boundary" in out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--n", "50", "--bits", "0"], "bits: each precision must be in 1..16"),
        (["--n", "50", "--bits", "17"], "bits: each precision must be in 1..16"),
        (["--n", "50", "--bits", "4,6"], "bits: precisions must fall strictly"),
        (["--n", "50", "--bits", "8,8"], "bits: precisions must fall strictly"),
        (["--n", "50", "--retrain-epochs", "-1"], "retrain.epochs"),
        (["--n", "50", "--search-rounds", "-1"], "retrain.search_rounds"),
        (["--n", "50", "--retrain-stages", "0.5,0.75"], "retrain.stages: must end at 1"),
        (["--regime", "half"], "capacity_n: regime 'half' needs"),
        (["--regime", "full", "--capacity-result", "/nonexistent.json"], "capacity result"),
        ([], "give either n"),
        (["--n", "50", "--tolerance", "2"], "tolerance"),
        (["--n", "300"], "n: n = 300 exceeds"),
    ],
)
def test_bad_sweep_input_exits_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", *SMALL, *argv, "--quiet"]) == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert captured.out == ""


def test_empty_precision_list_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"model": {"kind": "fcdnn"}, "n": 50, "bits": []}))
    assert main(["sweep", str(spec)]) == 2
    assert "bits: give at least one precision" in capsys.readouterr().err
