"""Search rounds after the code search (sweep.search_rounds) and the fixing of every
other group (fixed_point.fix_other_groups) they rest on."""

from __future__ import annotations

import pytest
import torch

from capacity_service.science.code_search import CodeSearchOutcome, search_codes
from capacity_service.science.data import Dataset, make_dataset
from capacity_service.science.fixed_point import (
    apply_precision,
    current_steps,
    fix_other_groups,
    float_weight,
    freeze_share,
    quantizer_of,
)
from capacity_service.science.models import FCDNN, build_model
from capacity_service.science.quantize import quantize
from capacity_service.science.sweep import search_rounds
from capacity_service.science.train import accuracy, snapshot, train_memorization
from capacity_service.specs import FCDNNSpec, RetrainSpec
from capacity_service.stopping import Stopped

GROUPS = ("hidden.0.weight", "hidden.1.weight")
BITS = 3
THREE_ROUNDS = RetrainSpec(epochs=30, patience=10, stages=(0.5, 0.875, 1.0), search_rounds=3)


def _searched_network() -> tuple[FCDNN, Dataset, CodeSearchOutcome]:
    """A 12x2 FCDNN trained on 400 samples, quantized, its codes searched to the end."""
    spec = FCDNNSpec(width=12, depth=2, n_in=10)
    data = make_dataset(spec, 400, seed=3)
    model = build_model(spec, seed=3)
    assert isinstance(model, FCDNN)
    train_memorization(model, data, RetrainSpec(lr=0.05, epochs=60, patience=60), seed=0)
    apply_precision(model, BITS)
    searched = search_codes(model, data)
    assert searched.accuracy < 1.0  # rounds have samples to win
    return model, data, searched


def test_fix_other_groups_fixes_all_but_the_named_group() -> None:
    model = build_model(FCDNNSpec(width=6, depth=2, n_in=5), seed=0)
    apply_precision(model, 4)
    fix_other_groups(model, "hidden.0.weight")
    first, second = (quantizer_of(model, name) for name in GROUPS)
    assert first is not None and second is not None
    assert first.frozen is None
    assert second.frozen is not None and bool(second.frozen.all())
    freeze_share(model, 0.5)  # the incremental retraining's first stage
    assert first.frozen is not None and int(first.frozen.sum()) == 15  # half of 6 x 5
    assert bool(second.frozen.all())
    with pytest.raises(ValueError, match=r"output\.weight is not a quantized group"):
        fix_other_groups(model, "output.weight")


def test_rounds_never_lose_a_sample_and_leave_every_weight_fixed() -> None:
    model, data, searched = _searched_network()
    steps = current_steps(model)
    refined = search_rounds(model, data, THREE_ROUNDS, seed=5, searched=searched)
    # here the first round holds 24 more of the 400 samples (76.5 -> 82.5%)
    assert refined.accuracy > searched.accuracy
    assert refined.accuracy == accuracy(model, data)
    assert 1 <= refined.rounds_kept <= 3 and refined.epochs > 0
    assert refined.code_changes >= searched.changes
    assert current_steps(model) == steps  # D as quantized
    for name in GROUPS:
        quantizer = quantizer_of(model, name)
        assert quantizer is not None and quantizer.frozen is None  # plain fixed point again
    last = float_weight(model, "hidden.1.weight")  # the search wrote its codes back
    assert torch.equal(last, quantize(last, BITS, steps["hidden.1.weight"]))


def test_a_round_that_holds_no_more_is_undone() -> None:
    """At a round rate of 1e-12 (the retraining's own 0.05 is not the round's) a round's
    retraining moves nothing that counts: the stages fix the same codes again, the search
    finds what it found, so the round is undone, the rounds end, and the network is
    bitwise what it was (the float rest's 1e-12 steps included)."""
    model, data, searched = _searched_network()
    before = snapshot(model)
    retrain = RetrainSpec(lr=0.05, search_round_lr=1e-12, epochs=2, stages=(0.5, 1.0),
                          search_rounds=2)  # fmt: skip
    refined = search_rounds(model, data, retrain, seed=5, searched=searched)
    assert (refined.accuracy, refined.rounds_kept) == (searched.accuracy, 0)
    assert refined.code_changes == searched.changes and refined.epochs > 0
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    once = retrain.model_copy(update={"search_rounds": 1})
    assert search_rounds(model, data, once, seed=5, searched=searched).epochs == refined.epochs


def test_no_rounds_where_every_sample_is_held_or_none_are_asked() -> None:
    model, data, searched = _searched_network()
    before = snapshot(model)
    none = search_rounds(model, data, RetrainSpec(search_rounds=0), seed=5, searched=searched)
    assert (none.accuracy, none.rounds_kept, none.epochs) == (searched.accuracy, 0, 0)
    held = CodeSearchOutcome(accuracy=1.0, changes=searched.changes, sweeps=searched.sweeps)
    done = search_rounds(model, data, RetrainSpec(search_rounds=2), seed=5, searched=held)
    assert (done.rounds_kept, done.epochs) == (0, 0)
    assert all(torch.equal(model.state_dict()[name], before[name]) for name in before)


def test_a_stop_request_is_heard_before_each_round() -> None:
    model, data, searched = _searched_network()
    before = snapshot(model)
    with pytest.raises(Stopped, match="before search round 1"):
        search_rounds(model, data, THREE_ROUNDS, seed=5, searched=searched,
                      should_stop=lambda: True)  # fmt: skip
    assert all(torch.equal(model.state_dict()[name], before[name]) for name in before)
    answers = iter([False, True])  # round 1 runs (and is kept, as above), then a stop
    with pytest.raises(Stopped, match="before search round 2"):
        search_rounds(model, data, THREE_ROUNDS, seed=5, searched=searched,
                      should_stop=lambda: next(answers))  # fmt: skip
