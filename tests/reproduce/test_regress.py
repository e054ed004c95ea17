"""`capacity regress`: a run against its own fresh baseline passes; a weakened run fails
naming the metric; bad suite and baseline files exit 2 naming the file and field."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from capacity_service.cli import main

MODEL = {"kind": "fcdnn", "width": 6, "n_in": 10}


def tiny_suite(epochs: int = 60) -> dict[str, Any]:
    search = {
        "budget_trials": 4,
        "budget_seconds": 3600,
        "batch": 4,
        "epochs": epochs,
        "batch_sizes": [8],
    }
    sweep = {
        "model": MODEL,
        "n": 40,
        "bits": [8, 4, 2],
        "train": {"epochs": epochs},
        "retrain": {"epochs": 2},
    }
    return {
        "name": "tiny",
        "cases": [
            {
                "name": "fcdnn-capacity",
                "kind": "capacity",
                "spec": {"model": MODEL, "search": search},
                "seeds": [0, 1],
                "metrics": {
                    "bits_per_param": {"abs": 0.02, "rel": 0.05},
                    "capacity_bits": {"rel": 0.05},
                },
            },
            {
                "name": "fcdnn-sweep",
                "kind": "quant_sweep",
                "spec": sweep,
                "metrics": {"precision_boundary": {"abs": 0}},
            },
        ],
    }


def write(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return str(path)


def regress(suite: str, baseline: Path, out: Path) -> int:
    """`capacity regress` of `suite` against `baseline` on the CPU, reporting into `out`."""
    return main(["regress", suite, "--baseline", str(baseline), "--out-dir", str(out),
                 "--device", "cpu"])  # fmt: skip


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("regress")
    suite = write(folder / "suite.json", tiny_suite())
    path = folder / "baseline.json"
    assert (
        main(["regress", suite, "--baseline", str(path), "--update-baseline", "--device", "cpu"])
        == 0
    )
    return path


def test_a_run_against_its_own_baseline_passes(
    baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = json.loads(baseline.read_text())
    assert stored["suite"] == "tiny" and stored["device"] == "cpu"
    assert len(stored["cases"]["fcdnn-capacity"]["bits_per_param"]["values"]) == 2
    assert stored["provenance"]["torch"] == metadata.version("torch")  # where it was measured
    suite = write(tmp_path / "suite.json", tiny_suite())
    out = tmp_path / "report"
    assert regress(suite, baseline, out) == 0
    printed = capsys.readouterr().out
    assert "0 regression(s) in 3 checks" in printed
    summary = (out / "summary.md").read_text()
    assert "**no regression**" in summary
    # this run's provenance beside the baseline's, printed and in the summary
    torch = metadata.version("torch")
    assert re.search(rf"^torch +{re.escape(torch)} +{re.escape(torch)}\b", printed, re.M)
    assert "| provenance | baseline | now |" in summary
    assert f"| torch | {torch} | {torch} |" in summary
    report = ElementTree.parse(out / "junit.xml").getroot()
    assert report.get("tests") == "3" and report.get("failures") == "0"


def test_a_weakened_run_is_flagged(
    baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write(tmp_path / "suite.json", tiny_suite(epochs=1))  # one epoch: learns little
    out = tmp_path / "report"
    assert regress(suite, baseline, out) == 1
    printed = capsys.readouterr().out
    failing = [line for line in printed.splitlines() if "REGRESSION" in line]
    assert any("fcdnn-capacity" in line and "bits_per_param" in line for line in failing)
    assert "fcdnn-capacity bits_per_param" in (out / "summary.md").read_text()
    report = ElementTree.parse(out / "junit.xml").getroot()
    assert int(report.get("failures") or 0) >= 1
    assert report.find("testcase[@name='bits_per_param']/failure") is not None


def one_case_suite(model: dict[str, Any], metric: str) -> dict[str, Any]:
    case = {
        "name": "a",
        "kind": "capacity",
        "spec": {"model": model},
        "metrics": {metric: {"abs": 1}},
    }
    return {"name": "x", "cases": [case]}


@pytest.mark.parametrize(
    ("suite", "words"),
    [
        (None, ["suite.json", "cannot read the suite"]),
        ("{not json", ["suite.json", "not valid JSON"]),
        (one_case_suite(MODEL, "speed"), ["unknown metric 'speed'"]),
        (one_case_suite(MODEL, "precision_boundary"), ["belongs to quant_sweep"]),
        (one_case_suite({"kind": "fcdnn", "width": -1}, "bits_per_param"), ["width"]),
        ({"name": "x", "cases": []}, ["cases"]),
    ],
)
def test_bad_suites_exit_2(
    suite: Any, words: list[str], baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "suite.json"
    if suite is not None:
        write(path, suite)
    assert main(["regress", str(path), "--baseline", str(baseline)]) == 2
    error = capsys.readouterr().err
    for word in words:
        assert word in error


def test_bad_baselines_exit_2(
    baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write(tmp_path / "suite.json", tiny_suite())
    assert main(["regress", suite, "--baseline", str(tmp_path / "none.json")]) == 2
    assert "none.json: cannot read the baseline" in capsys.readouterr().err
    stored = json.loads(baseline.read_text())
    del stored["cases"]["fcdnn-sweep"]
    partial = write(tmp_path / "partial.json", stored)
    assert main(["regress", suite, "--baseline", partial]) == 2
    assert "cases.fcdnn-sweep.precision_boundary" in capsys.readouterr().err
    stored["extra"] = 1
    assert main(["regress", suite, "--baseline", write(tmp_path / "x.json", stored)]) == 2
    assert "extra" in capsys.readouterr().err


def test_the_default_suite_and_baseline_agree() -> None:
    root = Path(__file__).resolve().parents[2] / "regression"
    from capacity_service.reproduce.regress import Baseline, Suite, check_baseline

    suite = Suite.model_validate_json((root / "suite.json").read_text())
    baseline = Baseline.model_validate_json((root / "baseline.json").read_text())
    assert check_baseline(suite, baseline) == []


def test_a_case_can_require_its_searches_to_bracket_the_maximum() -> None:
    from capacity_service.reproduce.regress import Case, metric_values
    from capacity_service.specs import SearchQuality
    from tests.factories import capacity_result

    case = Case.model_validate({
        "name": "bracketed", "kind": "capacity", "spec": {"model": MODEL},
        "metrics": {"bracketed": {}, "best_finished": {}},
    })  # fmt: skip
    quality = SearchQuality(bracketed=True, best_finished=False, trials=9, budget_used=0.5,
                            prior_n=40, verdict="lower bound: ...")  # fmt: skip
    result = capacity_result(10, 1.0)
    with_quality = result.model_copy(update={"quality": quality})
    assert metric_values(case, with_quality) == {"bracketed": 1.0, "best_finished": 0.0}
    # a result stored before searches had a quality: not known to bracket anything
    assert metric_values(case, result) == {"bracketed": 0.0, "best_finished": 0.0}


def test_the_workflow_installs_the_torch_make_installs() -> None:
    """A regression after a torch upgrade must not pass for one in the code."""
    root = Path(__file__).resolve().parents[2]
    pinned = re.search(r"^TORCH_CPU \?= (\S+)$", (root / "Makefile").read_text(), re.M)
    assert pinned is not None
    workflow = (root / ".github" / "workflows" / "regression.yml").read_text()
    installs = re.findall(r"pip install \"?(torch\S*?)\"? ", workflow)
    assert installs == [pinned.group(1)]
