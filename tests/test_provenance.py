"""Provenance: what a result records about the code, the libraries and the machine that
computed it, and how a regression report shows it beside the baseline's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from capacity_service import __version__, provenance
from capacity_service.reproduce.regress import Baseline, Suite, SuiteRun, markdown, provenance_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    provenance.git_commit.cache_clear()
    yield
    provenance.git_commit.cache_clear()


def test_provenance_names_the_versions_the_commit_and_the_machine() -> None:
    record = provenance.provenance("cpu")
    assert record.package_version == __version__
    assert record.torch == metadata.version("torch")
    assert record.numpy == metadata.version("numpy")
    assert record.scikit_optimize == metadata.version("scikit-optimize")
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout here to compare the commit with")
    head = subprocess.run([git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert record.git_commit == head.stdout.strip()
    assert record.device_name and record.device_name != "unknown"
    assert record.threads >= 1
    assert provenance.provenance("cuda:0").device_name  # no torch.cuda here: never fails


def test_an_api_process_gets_provenance_without_importing_torch() -> None:
    probe = (
        "import os, sys; from capacity_service.provenance import provenance; "
        "record = provenance('cpu'); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert record.threads == os.cpu_count(); print(record.torch)"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == metadata.version("torch")  # the version, read from metadata


def test_no_commit_outside_a_checkout_or_without_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)
    assert provenance.git_commit() is None  # not a git checkout
    provenance.git_commit.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert provenance.git_commit() is None


def test_no_commit_for_a_package_installed_inside_another_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    names = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")
    environment = os.environ | dict.fromkeys(names, "t")
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True)
    subprocess.run([git, "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True, env=environment)  # fmt: skip
    installed = tmp_path / ".venv" / "site-packages" / "capacity_service"
    installed.mkdir(parents=True)
    monkeypatch.setattr(provenance, "PACKAGE_DIR", installed)
    assert provenance.git_commit() is None  # that repository's HEAD is not this code's
    checkout = tmp_path / "capacity_service"
    checkout.mkdir()
    monkeypatch.setattr(provenance, "PACKAGE_DIR", checkout)
    provenance.git_commit.cache_clear()
    assert provenance.git_commit() is not None


def test_merged_keeps_what_agrees_and_lists_what_differs() -> None:
    one = provenance.provenance("cpu")
    other = one.model_copy(update={"device_name": "NVIDIA H100", "threads": 1})
    assert provenance.merged([one, one]) == one.model_dump()
    both = provenance.merged([one, None, other])
    assert both is not None and both["torch"] == one.torch
    assert both["device_name"] == f"{one.device_name}, NVIDIA H100"
    assert provenance.merged([None, None]) is None  # results from before provenance


def test_the_regression_report_shows_the_baselines_provenance_beside_this_runs() -> None:
    suite = Suite.model_validate({
        "name": "s", "cases": [{"name": "c", "kind": "capacity",
                                "spec": {"model": {"kind": "fcdnn", "width": 4}},
                                "metrics": {"bits_per_param": {"abs": 0.1}}}],
    })  # fmt: skip
    now = provenance.provenance("cpu").model_dump()
    before = now | {"torch": "2.12.0", "git_commit": "0123abc"}
    cases = {"c": {"bits_per_param": {"value": 2.0, "values": [2.0]}}}
    baseline = Baseline.model_validate({"suite": "s", "code_version": "0.1.0", "device": "cpu",
                                        "provenance": before, "cases": cases})  # fmt: skip
    run = SuiteRun(baseline.cases, now)
    text = markdown(suite, [], "in this process (cpu)", provenance_rows(baseline, run))
    assert "| provenance | baseline | now |" in text
    assert f"| torch | 2.12.0 | {now['torch']} |" in text
    assert f"| git_commit | 0123abc | {now['git_commit'] or '-'} |" in text
    assert f"| threads | {now['threads']} | {now['threads']} |" in text
    # an older baseline has none: its column says so
    old = baseline.model_copy(update={"provenance": None})
    assert f"| numpy | - | {now['numpy']} |" in markdown(
        suite, [], "here", provenance_rows(old, run)
    )
