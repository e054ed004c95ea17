"""The thesis reproduction suite: its specs validate, the runner is resumable, and the
report builds from stored results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from capacity_service.cli import main
from capacity_service.reproduce.experiments import load_experiments
from capacity_service.reproduce.targets import load_targets
from capacity_service.science.measure import measure
from capacity_service.science.sweep import sweep as run_sweep
from capacity_service.specs import MeasureSpec, ModelSpec, SweepSpec, parameter_total

SUITE = Path(__file__).resolve().parents[2] / "experiments" / "thesis"


def test_the_thesis_suite_validates_and_covers_the_issue() -> None:
    experiments = {e.name: e for e in load_experiments(SUITE)}
    cpu_fcdnn = {
        (e.spec["model"]["width"], e.spec["model"].get("depth", 1))
        for e in experiments.values()
        if e.figure == "fcdnn" and e.size == "cpu"
    }
    assert cpu_fcdnn == {(32, 1), (32, 2), (64, 1), (64, 2)}
    gpu = {e.name for e in experiments.values() if e.size == "gpu"}
    assert {"fcdnn-128x3", "fcdnn-256x4"} <= gpu
    lstm = TypeAdapter(ModelSpec).validate_python(experiments["lstm-32"].spec["model"])
    assert parameter_total(lstm) == 8_386 and experiments["lstm-32"].thesis["bits_per_param"] == 3.7
    assert {"gru-38", "rnn-75", "cnn-3x3", "cnn-5x5"} <= set(experiments)
    sweeps = [e for e in experiments.values() if e.kind == "quant_sweep"]
    assert {e.capacity_from for e in sweeps} == {"fcdnn-64x2", "cnn-3x3", "lstm-32"}
    assert {e.spec["regime"] for e in sweeps} == {"full", "half"}
    # the issue's precisions, and above them where the thesis's boundary lies higher
    assert all({8, 6, 5, 4, 3, 2, 1} <= set(e.spec["bits"]) for e in sweeps)
    assert all(max(e.spec["bits"]) > e.thesis.get("precision_boundary", 0) for e in sweeps)
    assert all(len(e.seeds) >= 3 for e in experiments.values() if e.kind == "capacity")
    targets = load_targets(SUITE, set(experiments))  # every target of the issue
    assert {t.rule for t in targets} == {
        "each_at_least", "mean_at_least", "within_of_thesis", "memorizes_at_bits"
    }  # fmt: skip
    assert [t.value for t in targets if t.experiments == ["lstm-32"]] == [3.5]


TINY = {"kind": "fcdnn", "width": 6, "n_in": 10}


def tiny_folder(folder: Path) -> Path:
    search = {
        "budget_trials": 4,
        "budget_seconds": 3600,
        "batch": 4,
        "epochs": 30,
        "batch_sizes": [8],
    }
    experiments = [
        {
            "name": "tiny",
            "figure": "fcdnn",
            "kind": "capacity",
            "size": "cpu",
            "spec": {"model": TINY, "search": search},
            "seeds": [0, 1, 2],
            "thesis": {"bits_per_param": 2.3},
        },
        {
            "name": "tiny-half",
            "figure": "quantization",
            "kind": "quant_sweep",
            "size": "cpu",
            "spec": {
                "model": TINY,
                "regime": "half",
                "bits": [8, 4],
                "train": {"epochs": 20},
                "retrain": {"epochs": 2},
            },
            "capacity_from": "tiny",
            "seeds": [0],
            "thesis": {"precision_boundary": 4},
        },
        {
            "name": "big",
            "figure": "fcdnn",
            "kind": "capacity",
            "size": "gpu",
            "spec": {"model": {"kind": "fcdnn", "width": 256, "depth": 4}},
            "seeds": [0, 1, 2],
        },
    ]
    targets = [
        {"thesis": "t1", "target": "at least 0", "experiments": ["tiny"],
         "rule": "each_at_least", "value": 0},
        {"thesis": "t2", "target": "average 100", "experiments": ["tiny"],
         "rule": "mean_at_least", "value": 100},
        {"thesis": "t3", "target": "all at 8 bits", "experiments": ["tiny-half"],
         "rule": "memorizes_at_bits", "value": 8},
        {"thesis": "t4", "target": "big too", "experiments": ["tiny", "big"],
         "rule": "each_at_least", "value": 0},
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.json").write_text(json.dumps(experiments))
    (folder / "targets.json").write_text(json.dumps(targets))
    (folder / "discussion.md").write_text("## Discussion\n\nWritten by hand.\n")
    return folder


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tiny_folder(tmp_path_factory.mktemp("experiments") / "thesis")
    assert main(["experiments", "run", str(folder), "--device", "cpu"]) == 0
    return folder


def test_the_runner_stores_results_and_skips_finished_ones(
    ran: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = sorted(p.name for p in (ran / "results").glob("*.json"))
    assert results == [
        "tiny-half.seed0.json",
        "tiny.seed0.json",
        "tiny.seed1.json",
        "tiny.seed2.json",
    ]
    record = json.loads((ran / "results" / "tiny.seed1.json").read_text())
    assert record["seed"] == 1 and record["trials"] == 4 and record["device"] == "cpu"
    sweep = json.loads((ran / "results" / "tiny-half.seed0.json").read_text())
    capacity = json.loads((ran / "results" / "tiny.seed0.json").read_text())
    best = capacity["result"]["best"]
    assert sweep["result"]["curves"][0]["n"] == best["n"] // 2
    # trained as the capacity's best trial was, with the experiment's own epochs
    train = sweep["spec"]["train"]
    assert train["lr"] == best["lr"] and train["batch_size"] == best["batch_size"]
    assert train["epochs"] == 20
    before = {p.name: p.stat().st_mtime_ns for p in (ran / "results").iterdir()}
    capsys.readouterr()
    assert main(["experiments", "run", str(ran), "--device", "cpu"]) == 0
    assert "ran 0, skipped 4" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (ran / "results").iterdir()} == before


def test_seed_filter_runs_only_those_seeds(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path / "thesis")
    assert main(["experiments", "run", str(folder), "--device", "cpu", "--seed", "1"]) == 0
    assert sorted(p.name for p in (folder / "results").glob("*.json")) == ["tiny.seed1.json"]
    assert main(["experiments", "run", str(folder), "--seed", "7"]) == 2


def test_the_report_builds_from_stored_results(ran: Path, tmp_path: Path) -> None:
    followups = ran / "followups"
    followups.mkdir()
    point = measure(MeasureSpec.model_validate({"model": TINY, "n": 40, "train": {"epochs": 5}}))
    (followups / "tiny-n40.json").write_text(point.model_dump_json())
    curve = run_sweep(SweepSpec.model_validate({"model": TINY, "n": 40, "bits": [8, 4]}))
    (followups / "tiny-sweep.json").write_text(curve.model_dump_json())
    # a search's result as `capacity search --json` prints it: seed 0's, stored by the run
    searched = json.loads((ran / "results" / "tiny.seed0.json").read_text())["result"]
    (followups / "tiny-search.json").write_text(json.dumps(searched))
    out = tmp_path / "docs" / "results.md"
    assert main(["experiments", "report", str(ran), "--out", str(out)]) == 0
    text = out.read_text()
    records = [json.loads((ran / "results" / f"tiny.seed{s}.json").read_text()) for s in range(3)]
    mean = sum(r["result"]["bits_per_param"] for r in records) / 3
    assert f"| tiny | {mean:.2f} |" in text and "| 2.30 |" in text
    assert "3/3" in text and "big: 0/3 seeds; GPU-sized" in text
    assert (tmp_path / "docs" / "results-capacity.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "docs" / "results-quantization.png").exists()
    # the targets, judged from the stored results
    assert f"| t1 | at least 0 | tiny {mean:.2f} | met |" in text
    assert (
        f"| t2 | average 100 | mean {mean:.2f} (tiny {mean:.2f}) | missed by {100 - mean:.2f} |"
        in text
    )
    sweep = json.loads((ran / "results" / "tiny-half.seed0.json").read_text())
    eight = next(p for p in sweep["result"]["curves"][0]["points"] if p["bits"] == 8)
    verdict = "met" if eight["accuracy_retrained"] == 1.0 else "missed"
    t3 = next(line for line in text.splitlines() if line.startswith("| t3 |"))
    assert f"{eight['accuracy_retrained']:.2%} (1 runs) | {verdict}" in t3
    assert "| t4 | big too | tiny" in text and "(not every experiment has run) |" in text
    assert text.rstrip().endswith("## Discussion\n\nWritten by hand.")
    # the follow-ups, one row per file, from what each file holds
    assert f"| tiny-n40 | 40 | 0.02 | 32 | {point.epochs}/5 | {point.accuracy:.2%} |" in text
    retrained = [p.accuracy_retrained for p in curve.curves[0].points]
    assert f"| 8: {retrained[0]:.2%}, 4: {retrained[1]:.2%} |" in text
    best, quality = searched["best"], searched["quality"]
    trust = (
        "tight lower bound" if quality["bracketed"] and quality["best_finished"] else "lower bound"
    )
    assert (
        f"| tiny-search | {best['n']} | {best['accuracy']:.2%} | {best['epochs']} "
        f"| {searched['capacity_bits']:.0f} | {searched['bits_per_param']:.2f} "
        f"| {len(searched['trials'])} | {trust} |"
    ) in text


def test_the_report_shows_an_earlier_run_and_each_result_s_quality(
    ran: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "thesis"
    shutil.copytree(ran, folder)
    # an earlier run of the suite, moved aside: it gave 1.0, 1.1, 1.2 bits/param
    before = folder / "results-before"
    shutil.copytree(folder / "results", before)
    for seed in range(3):
        path = before / f"tiny.seed{seed}.json"
        record = json.loads(path.read_text())
        record["result"]["bits_per_param"] = 1.0 + seed / 10
        path.write_text(json.dumps(record))
    sweep = json.loads((folder / "results" / "tiny-half.seed0.json").read_text())
    eight = next(p for p in sweep["result"]["curves"][0]["points"] if p["bits"] == 8)
    kept = eight["accuracy_retrained"]
    # the half-capacity target allows a loss: met at exactly the accuracy kept, missed above
    targets = [
        {"thesis": "t1", "target": "at least 0", "experiments": ["tiny"],
         "rule": "each_at_least", "value": 0},
        {"thesis": "t3", "target": "kept", "experiments": ["tiny-half"],
         "rule": "memorizes_at_bits", "value": 8, "accuracy": kept},
        {"thesis": "t5", "target": "more", "experiments": ["tiny-half"],
         "rule": "memorizes_at_bits", "value": 8, "accuracy": 1.0},
    ]  # fmt: skip
    (folder / "targets.json").write_text(json.dumps(targets))
    out = tmp_path / "results.md"
    assert main(["experiments", "report", str(folder), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    results = folder / "results"
    records = [json.loads((results / f"tiny.seed{s}.json").read_text()) for s in range(3)]
    mean = sum(r["result"]["bits_per_param"] for r in records) / 3
    qualities = [r["result"]["quality"] for r in records]
    tight = sum(q["bracketed"] and q["best_finished"] for q in qualities)
    row = next(line for line in lines if line.startswith("| tiny |")).split(" | ")
    # experiment, ours, spread, before, thesis, difference, quality
    assert row[1] == f"{mean:.2f}" and row[3] == "1.10" and row[4] == "2.30"
    assert row[6] == f"{tight}/3 tight"
    half = next(line for line in lines if line.startswith("| tiny-half |")).split(" | ")
    assert half[6] == "-"  # a sweep has no search quality
    t1 = next(line for line in lines if line.startswith("| t1 |"))
    assert t1.endswith(f"| tiny {mean:.2f} | met | tiny 1.10 | met |")
    t3 = next(line for line in lines if line.startswith("| t3 |"))
    assert f"{kept:.2%} (1 runs) | met |" in t3
    t5 = next(line for line in lines if line.startswith("| t5 |"))
    if kept < 1.0:
        assert f"| missed: {1 - kept:.2%} of the samples are lost |" in t5
    else:
        assert "(1 runs) | met |" in t5


def test_a_target_naming_an_unknown_experiment_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tiny_folder(tmp_path / "thesis")
    target = {"thesis": "t", "target": "t", "experiments": ["nope"], "rule": "each_at_least"}
    (folder / "targets.json").write_text(json.dumps([target | {"value": 1}]))
    assert main(["experiments", "report", str(folder), "--out", str(tmp_path / "r.md")]) == 2
    assert "no experiment named nope" in capsys.readouterr().err


def test_bad_experiment_folders_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiments", "run", str(tmp_path / "nothing")]) == 2
    assert "no such experiment folder" in capsys.readouterr().err
    (tmp_path / "x.json").write_text(
        json.dumps(
            {
                "name": "a",
                "figure": "fcdnn",
                "kind": "capacity",
                "size": "cpu",
                "spec": {"model": {"kind": "fcdnn"}},
                "seeds": [0],
            }
        )
    )
    assert main(["experiments", "report", str(tmp_path)]) == 2
    assert "at least 3 seeds" in capsys.readouterr().err
