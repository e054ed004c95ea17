from __future__ import annotations

from capacity_service.science.search import capacity_curve, search_n
from capacity_service.specs import MeasureResult, MeasureSpec, TrainSpec

TINY = {"kind": "fcdnn", "width": 4, "n_in": 12}  # 4*12+4 + 4*2+2 = 62 parameters


def test_search_n_brackets_the_peak_of_information() -> None:
    spec = MeasureSpec.model_validate(
        {"model": TINY, "train": {"epochs": 60, "lr": 0.05, "batch_size": 16}, "seed": 1}
    )
    found = search_n(spec, max_trials=5)
    assert found.params == 62
    assert 2 <= len(found.trials) <= 5
    ns = [t.n for t in found.trials]
    assert ns[0] == 62 and ns[1] == 124  # grows from the parameter count by 2x
    assert len(set(ns)) == len(ns)  # no N trained twice
    assert found.best.mutual_information_bits == max(
        t.mutual_information_bits for t in found.trials
    )
    assert [p.n for p in found.curve] == sorted(ns)
    # the peak is bracketed: some N larger than the best was tried and gave less I
    assert any(t.n > found.best.n for t in found.trials)


def _trial(n: int, p: float, bits: float) -> MeasureResult:
    return MeasureResult(
        params=10,
        n=n,
        accuracy=p,
        mutual_information_bits=bits,
        bits_per_param=bits / 10,
        epochs=1,
        wall_seconds=0.0,
        device="cpu",
        seed=0,
        diverged=False,
        train=TrainSpec(),
    )


def test_curve_keeps_the_best_trial_per_n() -> None:
    curve = capacity_curve([_trial(200, 0.9, 100), _trial(100, 1.0, 100), _trial(200, 0.95, 140)])
    assert [(p.n, p.mutual_information_bits) for p in curve] == [(100, 100), (200, 140)]
