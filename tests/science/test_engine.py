from __future__ import annotations

import pytest

from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.engine import TrialConfig, train_trials
from capacity_service.science.models import build_model
from capacity_service.science.train import train_memorization
from capacity_service.specs import FCDNNSpec, RNNSpec, TrainSpec

SPEC = FCDNNSpec(width=12, depth=2, n_in=14)


def _config(
    n: int, lr: float, momentum: float, batch: int, seed: int, epochs: int = 25, patience: int = 4
) -> TrialConfig:
    train = TrainSpec(lr=lr, momentum=momentum, batch_size=batch, epochs=epochs,
                      patience=patience, lr_decay=0.5, max_decays=2)  # fmt: skip
    return TrialConfig(n=n, train=train, init_seed=seed, shuffle_seed=seed + 1000)


def test_batched_trials_match_the_sequential_trainer() -> None:
    pool = make_dataset(SPEC, 500, seed=3)
    configs = [
        _config(500, 0.02, 0.9, 32, 1),
        _config(260, 0.05, 0.8, 64, 2),
        _config(410, 0.01, 0.95, 16, 3),
        _config(90, 0.03, 0.9, 128, 4),
    ]
    run = train_trials(SPEC, pool, configs)
    assert run.engine == "batched"
    for config, outcome in zip(configs, run.outcomes, strict=True):
        assert outcome is not None
        data = Dataset(x=pool.x[: config.n], y=pool.y[: config.n])
        model = build_model(SPEC, config.init_seed)
        alone = train_memorization(model, data, config.train, config.shuffle_seed)
        # pinned tolerance: float reassociation in batched products may flip a sample
        assert outcome.accuracy == pytest.approx(alone.accuracy, abs=2 / config.n)
        assert abs(outcome.epochs - alone.epochs) <= 1
        assert outcome.final_lr == pytest.approx(alone.final_lr)


def test_finished_trials_stop_and_others_go_on() -> None:
    pool = make_dataset(SPEC, 400, seed=0)
    easy = _config(8, 0.05, 0.9, 8, 1, epochs=200)  # memorizes 8 samples in a few epochs
    hard = _config(400, 0.01, 0.9, 32, 2, epochs=30, patience=100)
    run = train_trials(SPEC, pool, [easy, hard])
    done_easy, done_hard = run.outcomes
    assert done_easy is not None and done_hard is not None
    assert done_easy.accuracy == 1.0 and done_easy.epochs < 30
    assert done_hard.epochs == 30


def test_a_diverging_trial_is_flagged_and_the_rest_train() -> None:
    pool = make_dataset(SPEC, 200, seed=0)
    run = train_trials(SPEC, pool, [_config(200, 1e12, 0.9, 32, 1), _config(200, 0.02, 0.9, 32, 2)])
    wild, calm = run.outcomes
    assert wild is not None and wild.diverged
    assert calm is not None and not calm.diverged and calm.accuracy > 0.6


def test_other_kinds_fall_back_to_sequential_and_say_so() -> None:
    spec = RNNSpec(kind="gru", hidden=4, n_in=5, steps=2)
    pool = make_dataset(spec, 40, seed=0)
    run = train_trials(spec, pool, [_config(40, 0.02, 0.9, 8, 1, epochs=2)])
    assert run.engine == "sequential"
    assert run.outcomes[0] is not None and run.outcomes[0].epochs <= 2


def test_n_beyond_the_pool_is_refused() -> None:
    pool = make_dataset(SPEC, 50, seed=0)
    with pytest.raises(ValueError, match="exceeds the data pool"):
        train_trials(SPEC, pool, [_config(51, 0.02, 0.9, 8, 1)])


def test_a_stop_abandons_unfinished_trials_instead_of_reporting_them() -> None:
    pool = make_dataset(SPEC, 400, seed=0)
    quick = _config(8, 0.05, 0.9, 8, 1, epochs=200)
    slow = _config(400, 0.01, 0.9, 32, 2, epochs=500, patience=1000)
    heard: list[int] = []
    run = train_trials(SPEC, pool, [quick, slow], should_stop=lambda: bool(heard),
                       on_outcome=lambda position, _outcome: heard.append(position))  # fmt: skip
    assert heard == [0]
    assert run.outcomes[0] is not None and run.outcomes[1] is None


def test_sequential_trials_end_at_the_deadline_with_what_they_reached() -> None:
    spec = RNNSpec(kind="gru", hidden=4, n_in=5, steps=2)
    pool = make_dataset(spec, 30, seed=0)
    slow = _config(30, 1e-6, 0.0, 8, 1, epochs=1000, patience=1000)
    # A deadline already past: the first trial stops after one epoch, the second never starts.
    run = train_trials(spec, pool, [slow, slow], deadline=0.0)
    first = run.outcomes[0]
    assert first is not None and first.epochs == 1 and not first.diverged
    assert run.outcomes[1] is None
