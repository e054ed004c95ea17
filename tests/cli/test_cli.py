"""`capacity measure`: JSON output and exit codes, through the real console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capacity_service.cli import main

MEASURE_KEYS = {
    "params", "n", "accuracy", "mutual_information_bits", "bits_per_param", "epochs",
    "wall_seconds", "device", "seed", "diverged",
}  # fmt: skip


def capacity_command() -> list[str]:
    script = shutil.which("capacity", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "capacity_service.cli"]


def test_measure_json_through_the_console_script() -> None:
    completed = subprocess.run(
        [*capacity_command(), "measure", "--model", "fcdnn", "--width", "8", "--n", "40",
         "--epochs", "30", "--seed", "3", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document.keys() >= MEASURE_KEYS
    assert document["params"] == 8 * 8 + 8 + 8 * 2 + 2
    assert document["n"] == 40 and document["seed"] == 3
    assert document["device"] == "cpu"
    assert document["diverged"] is False
    assert 0.5 <= document["accuracy"] <= 1.0


def test_spec_file_with_flag_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": {"kind": "lstm", "hidden": 4, "n_in": 6, "steps": 2},
                                "n": 30, "train": {"epochs": 2}}))  # fmt: skip
    assert main(["measure", str(spec), "--n", "20", "--hidden", "5", "--json", "--quiet"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["n"] == 20
    assert document["params"] == 4 * (5 * 6 + 5 * 5 + 5) + 5 * 2 + 2
    assert document["train"]["epochs"] == 2


def test_search_n_reports_the_curve(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["measure", "--model", "fcdnn", "--width", "2", "--n-in", "10", "--epochs", "20",
                 "--search-n", "--max-trials", "3", "--json", "--quiet"])  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document.keys() >= MEASURE_KEYS
    assert len(document["trials"]) == 3
    assert [p["n"] for p in document["curve"]] == sorted(t["n"] for t in document["trials"])
    assert document["mutual_information_bits"] == max(
        t["mutual_information_bits"] for t in document["trials"]
    )


def test_human_output_is_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", "--model", "fcdnn", "--width", "4", "--n", "10", "--epochs", "2",
                 "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "bits/param" in out and "accuracy p" in out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--model", "fcdnn", "--width", "0"], "model.width"),
        (["--model", "fcdnn", "--depth", "0"], "model.depth"),
        (["--model", "rnn", "--hidden", "0"], "model.hidden"),
        (["--model", "cnn", "--kernel", "4"], "model.kernel: Input should be 3 or 5"),
        (["--model", "cnn", "--conv-layers", "2"], "model.conv_layers"),
        (["--model", "cnn", "--conv-layers", "10"], "model.conv_layers"),
        (["--model", "fcdnn", "--n", "1"], "n: Input should be greater than or equal to 2"),
        (["--model", "fcdnn", "--width", "4", "--n", "17"], "n: n = 17 exceeds the 2^4"),
        (["--model", "gru", "--steps", "0"], "model.steps"),
        (["--model", "fcdnn", "--lr", "0"], "train.lr"),
        (["--model", "fcdnn", "--lr", "-1"], "train.lr"),
        (["--model", "fcdnn", "--momentum", "1"], "train.momentum"),
        (["--model", "fcdnn", "--momentum", "-0.1"], "train.momentum"),
        (["--model", "fcdnn", "--kernel", "3"], "model.kernel: unknown field"),
        (["--model", "fcdnn", "--device", "tpu"], "device"),
        (["--model", "fcdnn", "--max-trials", "0", "--search-n"], "--max-trials"),
        ([], "no model given"),
    ],
)
def test_bad_input_names_the_field_and_exits_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["measure", *argv, "--quiet"]) == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert captured.out == ""  # nothing trained, nothing printed


def test_unknown_kind_lists_the_allowed_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["measure", "--model", "transformer"])
    assert exited.value.code == 2
    assert "fcdnn" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"model": {"kind": "mlp"}}', "'fcdnn', 'cnn', 'lstm', 'gru', 'rnn'"),
        ('{"model": {"kind": "fcdnn"}, "n": 100, "epochs": 3}', "epochs: unknown field"),
        ('{"model": {"kind": "fcdnn"}, "train": {"lrr": 0.1}}', "train.lrr: unknown field"),
        ('{"model": {"kind": "fcdnn"}', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_spec_files(
    tmp_path: Path, content: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(content)
    assert main(["measure", str(spec)]) == 2
    assert named in capsys.readouterr().err


def test_missing_spec_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", "/nonexistent/spec.json"]) == 2
    assert "cannot read the spec file" in capsys.readouterr().err
