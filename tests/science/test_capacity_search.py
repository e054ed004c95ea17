from __future__ import annotations

import contextlib
from typing import Any

import pytest

from capacity_service.science.data import make_dataset
from capacity_service.science.engine import TrialConfig, train_trials
from capacity_service.science.search import search_capacity
from capacity_service.science.seeds import derive_seed
from capacity_service.specs import CapacitySpec, TrainSpec, TrialRecord

TINY = {"kind": "fcdnn", "width": 8, "n_in": 10}  # 106 parameters


def _spec(**search: Any) -> CapacitySpec:
    budget = {"budget_trials": 14, "batch": 7, "epochs": 150, "patience": 30,
              "batch_sizes": [8, 16], "lr": [0.02, 0.5]} | search  # fmt: skip
    return CapacitySpec.model_validate({"model": TINY, "search": budget, "seed": 2})


def test_three_stages_and_a_consistent_result() -> None:
    result = search_capacity(_spec())
    stages = [t.stage for t in result.trials]
    assert stages[0] == "bracket" and "grid" in stages and stages[-1] == "bayes"
    assert stages == sorted(stages, key=["bracket", "grid", "bayes"].index)
    assert len(result.trials) == 14
    assert [t.index for t in result.trials] == list(range(14))
    assert result.capacity_bits == max(t.mutual_information_bits for t in result.trials)
    assert result.bits_per_param == pytest.approx(result.capacity_bits / 106)
    assert result.best.mutual_information_bits == result.capacity_bits
    assert [p.n for p in result.curve] == sorted({t.n for t in result.trials})
    assert result.engine == "batched"
    # values that cross into JSON are plain Python types
    for trial in result.trials:
        assert type(trial.n) is int and type(trial.lr) is float and type(trial.batch_size) is int


def test_resume_replays_finished_trials_and_runs_none_again() -> None:
    uninterrupted = search_capacity(_spec())
    finished: list[TrialRecord] = []
    with contextlib.suppress(RuntimeError):  # raised if it stopped before any trial
        search_capacity(_spec(), on_trial=finished.append, should_stop=lambda: len(finished) >= 5)
    assert 5 <= len(finished) < 14
    rerun: list[TrialRecord] = []
    resumed = search_capacity(_spec(), completed=finished, on_trial=rerun.append)
    assert {t.index for t in rerun}.isdisjoint({t.index for t in finished})
    assert len(resumed.trials) == len(uninterrupted.trials) == 14
    assert sorted(t.index for t in resumed.trials) == list(range(14))
    by_index = sorted(finished, key=lambda t: t.index)
    assert [t for t in resumed.trials if t.index in {f.index for f in finished}] == by_index


def test_a_diverging_trial_counts_zero_and_the_search_goes_on() -> None:
    result = search_capacity(_spec(lr=(1e11, 1e13)))
    diverged = [t for t in result.trials if t.diverged]
    assert diverged and all(t.mutual_information_bits == 0.0 for t in diverged)
    assert len(result.trials) == 14  # every trial ran: divergence did not stop the search


def test_bracketing_lands_where_brute_force_does() -> None:
    result = search_capacity(_spec(budget_trials=40, batch=20))
    bracket = [t for t in result.trials if t.stage == "bracket"]
    settings = bracket[-1]  # round 2 ran at the rate the bracket settled on
    # brute force: every N from 10 to 300 in steps of 10, at those settings
    spec = _spec()
    pool = make_dataset(spec.model, 300, derive_seed(spec.seed, "data"))
    train = TrainSpec(lr=settings.lr, momentum=settings.momentum, lr_decay=settings.lr_decay,
                      batch_size=settings.batch_size, epochs=150, patience=30)  # fmt: skip
    configs = [
        TrialConfig(n=n, train=train, init_seed=derive_seed(2, f"init-{i}"),
                    shuffle_seed=derive_seed(2, f"shuffle-{i}"))
        for i, n in enumerate(range(10, 301, 10))
    ]  # fmt: skip
    outcomes = train_trials(spec.model, pool, configs).outcomes
    memorized = {
        c.n: bool(o and o.accuracy >= 0.99) for c, o in zip(configs, outcomes, strict=True)
    }
    # near its edge memorization is noisy: brute force sees an edge band from the first N
    # it fails to the last N it memorizes; the bracket lands in that band, within a rung
    first_failure = min(n for n, ok in memorized.items() if not ok)
    last_success = max(n for n, ok in memorized.items() if ok)
    assert first_failure / 2 <= result.bracket_n <= last_success * 2


def test_resume_trains_a_trial_lost_mid_batch_and_keeps_the_rest() -> None:
    finished: list[TrialRecord] = []
    with contextlib.suppress(RuntimeError):
        search_capacity(_spec(), on_trial=finished.append, should_stop=lambda: len(finished) >= 5)
    lost = min(finished, key=lambda t: t.index)  # as if its worker died before storing it
    kept = [t for t in finished if t is not lost]
    rerun: list[TrialRecord] = []
    resumed = search_capacity(_spec(), completed=kept, on_trial=rerun.append)
    assert lost.index in {t.index for t in rerun}
    assert {t.index for t in rerun}.isdisjoint({t.index for t in kept})
    assert sorted(t.index for t in resumed.trials) == list(range(14))
