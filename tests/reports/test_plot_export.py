"""`capacity plot` and `capacity export`, and the API's CSV, on real stored results."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from capacity_service.cli import main
from capacity_service.specs import CapacityResult
from capacity_service.store.queries import Store


def jobs_by_kind(url: str) -> dict[str, list[int]]:
    store = Store(url)
    found: dict[str, list[int]] = {}
    for job in reversed(store.list_jobs(limit=100)):
        found.setdefault(job.kind, []).append(job.id)
    store.close()
    return found


def test_export_capacity_and_sweep_csv(
    results_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = jobs_by_kind(results_database)
    store = Store(results_database)
    capacity = store.result(ids["capacity"][0])
    store.close()
    assert isinstance(capacity, CapacityResult)
    assert main(["export", str(ids["capacity"][0]), "--database-url", results_database]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["n"]) for r in rows] == [p.n for p in capacity.curve]
    assert [int(r["n"]) for r in rows if r["best"] == "1"] == [capacity.best.n]

    assert main(["export", str(ids["quant_sweep"][0]), "--database-url", results_database]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["bits"] for r in rows] == ["float", "8", "4", "2"]
    assert float(rows[0]["accuracy_retrained"]) >= float(rows[-1]["accuracy_quantized"]) - 1


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_each_figure(results_database: str, tmp_path: Path, suffix: str) -> None:
    ids = jobs_by_kind(results_database)
    targets = {
        "curve": ["plot", str(ids["capacity"][0])],
        "sweep": ["plot", str(ids["quant_sweep"][0])],
        "params": ["plot", "--capacity-vs-params"],
    }
    for name, command in targets.items():
        out = tmp_path / f"{name}{suffix}"
        assert main([*command, "--out", str(out), "--database-url", results_database]) == 0
        head = out.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in out.read_bytes()


def test_plot_and_export_refuse_bad_input(
    results_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--database-url", results_database]
    assert main(["plot", "999", "--out", str(tmp_path / "x.png"), *db]) == 2
    assert "no job with id 999" in capsys.readouterr().err
    assert main(["plot", "1", "--out", str(tmp_path / "x.txt"), *db]) == 2
    assert ".png, .svg, .pdf" in capsys.readouterr().err
    assert main(["plot", "--out", str(tmp_path / "x.png"), *db]) == 2
    assert "job id, or --capacity-vs-params" in capsys.readouterr().err
    assert (
        main(
            [
                "plot",
                "--capacity-vs-params",
                "--model-kind",
                "lstm",
                "--out",
                str(tmp_path / "x.png"),
                *db,
            ]
        )
        == 2
    )
    assert "no stored capacity results" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
