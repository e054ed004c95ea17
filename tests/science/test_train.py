from __future__ import annotations

import pytest

from capacity_service.science.data import make_dataset
from capacity_service.science.measure import measure
from capacity_service.science.models import build_model
from capacity_service.science.train import EpochProgress, accuracy, train_memorization
from capacity_service.specs import FCDNNSpec, MeasureSpec, RNNSpec, TrainSpec

SMALL = {"kind": "fcdnn", "width": 16, "depth": 1}


def test_small_fcdnn_memorizes_64_samples() -> None:
    result = measure(
        MeasureSpec.model_validate(
            {"model": SMALL, "n": 64, "train": {"lr": 0.05, "epochs": 400, "batch_size": 8}}
        )
    )
    assert result.accuracy == 1.0
    assert result.mutual_information_bits == 64.0
    assert result.params == 16 * 16 + 16 + 16 * 2 + 2
    assert result.bits_per_param == pytest.approx(64 / result.params)
    assert not result.diverged
    assert result.device == "cpu"


def test_same_seed_same_trained_accuracy() -> None:
    spec = MeasureSpec.model_validate(
        {"model": SMALL, "n": 600, "train": {"epochs": 30}, "seed": 5, "device": "cpu"}
    )
    first, second = measure(spec), measure(spec)
    assert first.accuracy == second.accuracy
    assert first.epochs == second.epochs


def test_reported_accuracy_is_that_of_the_kept_weights() -> None:
    spec = FCDNNSpec(width=8, n_in=16)
    data = make_dataset(spec, 800, seed=0)
    model = build_model(spec, seed=0)
    outcome = train_memorization(model, data, TrainSpec(epochs=40, patience=5), seed=0)
    assert outcome.accuracy == accuracy(model, data)
    assert 0.5 < outcome.accuracy < 1.0  # 8 units cannot memorize 800 samples


def test_progress_goes_through_the_callback_only(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[EpochProgress] = []
    spec = FCDNNSpec(width=8)
    train_memorization(
        build_model(spec, seed=0),
        make_dataset(spec, 200, seed=0),
        TrainSpec(epochs=7, patience=100),
        seed=0,
        on_epoch=seen.append,
    )
    assert [p.epoch for p in seen] == list(range(1, len(seen) + 1))
    assert 1 <= len(seen) <= 7
    assert all(p.epochs == 7 and 0.0 <= p.accuracy <= 1.0 for p in seen)
    assert seen[-1].best_accuracy == max(p.accuracy for p in seen)
    assert capsys.readouterr() == ("", "")


def test_learning_rate_decays_on_a_plateau_and_training_stops() -> None:
    spec = FCDNNSpec(width=4)
    seen: list[EpochProgress] = []
    outcome = train_memorization(
        build_model(spec, seed=0),
        make_dataset(spec, 16, seed=0),
        TrainSpec(lr=1e-6, epochs=500, patience=2, lr_decay=0.5, max_decays=2),
        seed=0,
        on_epoch=seen.append,
    )
    # lr 1e-6 cannot move the weights: every 2 epochs a plateau, 2 decays, then stop.
    assert outcome.final_lr == pytest.approx(1e-6 * 0.25)
    assert outcome.epochs < 20
    assert sorted({p.lr for p in seen}, reverse=True) == pytest.approx([1e-6, 5e-7, 2.5e-7])


def test_a_diverging_run_is_flagged_with_zero_information() -> None:
    result = measure(
        MeasureSpec.model_validate({"model": SMALL, "n": 256, "train": {"lr": 1e12, "epochs": 50}})
    )
    assert result.diverged
    assert result.mutual_information_bits == 0.0
    assert result.bits_per_param == 0.0


def test_rnn_and_cnn_train_and_report() -> None:
    lstm = measure(
        MeasureSpec(model=RNNSpec(hidden=8, n_in=8, steps=3), n=64, train=TrainSpec(epochs=5))
    )
    assert lstm.params == 4 * (8 * 8 + 8 * 8 + 8) + 8 * 2 + 2
    cnn = measure(
        MeasureSpec.model_validate(
            {"model": {"kind": "cnn", "channels": 2}, "n": 32, "train": {"epochs": 3}}
        )
    )
    assert cnn.conv_bits_per_param is not None
    assert 0.0 <= cnn.accuracy <= 1.0


def test_training_ends_at_the_deadline_keeping_the_best_weights() -> None:
    spec = FCDNNSpec(width=4)
    data = make_dataset(spec, 16, seed=0)
    model = build_model(spec, seed=0)
    outcome = train_memorization(
        model, data, TrainSpec(lr=0.05, epochs=500, patience=500), seed=0, deadline=0.0
    )
    assert outcome.epochs == 1
    assert outcome.accuracy == accuracy(model, data)
