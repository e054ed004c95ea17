from __future__ import annotations

from typing import Any

import pytest
import torch

from capacity_service.science.data import make_dataset
from capacity_service.science.engine import TrialConfig, train_trials
from capacity_service.science.metrics import mutual_information
from capacity_service.science.models import count_parameters
from capacity_service.science.schedule import TrainOutcome
from capacity_service.science.search import assess, prior_n, search_capacity
from capacity_service.science.search_plan import SearchPlan, known_beyond_chance
from capacity_service.science.search_space import first_rung
from capacity_service.science.seeds import derive_seed
from capacity_service.specs import CapacitySpec, TrainSpec, TrialRecord
from capacity_service.stopping import Stopped

TINY = {"kind": "fcdnn", "width": 8, "n_in": 10}  # 106 parameters


def _spec(**search: Any) -> CapacitySpec:
    budget = {"budget_trials": 14, "batch": 7, "epochs": 150, "patience": 30,
              "batch_sizes": [8, 16], "lr": [0.02, 0.5]} | search  # fmt: skip
    return CapacitySpec.model_validate({"model": TINY, "search": budget, "seed": 2})


def test_stages_and_a_consistent_result() -> None:
    result = search_capacity(_spec())
    stages = [t.stage for t in result.trials]
    # the design takes at most half the trial budget; widening and Bayes take the rest
    assert stages[:7] == ["prior"] * 7 and "bayes" in stages
    assert set(stages[7:]) <= {"widen", "refine", "bayes"}
    # a refine trial repeats a finished trial's settings at its N or 3-6% above
    for trial in (t for t in result.trials if t.stage == "refine"):
        earlier = [t for t in result.trials[: trial.index] if t.ended == "schedule"]
        assert any(
            (t.lr, t.momentum, t.lr_decay, t.batch_size) == (trial.lr, trial.momentum,
                                                          trial.lr_decay, trial.batch_size)
            and t.n <= trial.n <= round(1.06 * t.n)
            for t in earlier
        )  # fmt: skip
    assert len(result.trials) == 14
    assert [t.index for t in result.trials] == list(range(14))
    assert result.capacity_bits == max(t.mutual_information_bits for t in result.trials)
    assert result.bits_per_param == pytest.approx(result.capacity_bits / 106)
    assert result.best.mutual_information_bits == result.capacity_bits
    assert [p.n for p in result.curve] == sorted({t.n for t in result.trials})
    assert result.engine == "batched"
    # the prior N: 106 parameters x 2.3 bits (FCDNN) = 243.8
    assert result.quality is not None and result.quality.prior_n == 244
    assert {t.n for t in result.trials if t.stage == "prior"} == {
        round(244 * f) for f in (0.6, 0.8, 1.0, 1.25, 1.6)
    } or len(result.trials) < 25
    assert result.quality.trials == 14 and result.quality.verdict
    assert all(t.ended in ("schedule", "rung") for t in result.trials)  # no deadline here
    # values that cross into JSON are plain Python types
    for trial in result.trials:
        assert type(trial.n) is int and type(trial.lr) is float and type(trial.batch_size) is int


def test_resume_takes_stored_trials_as_they_are_and_trains_none_again() -> None:
    finished: list[TrialRecord] = []
    with pytest.raises(Stopped):  # each trial it finished was handed on before
        search_capacity(_spec(), on_trial=finished.append, should_stop=lambda: len(finished) >= 5)
    assert 5 <= len(finished) < 14
    rerun: list[TrialRecord] = []
    resumed = search_capacity(_spec(), completed=finished, on_trial=rerun.append)
    # new trials are numbered after the stored ones (an index lost mid-run is not reused)
    assert min(t.index for t in rerun) > max(t.index for t in finished)
    assert len(resumed.trials) == 14  # the stored trials count against the budget
    stored = {t.index for t in finished}
    assert [t for t in resumed.trials if t.index in stored] == sorted(
        finished, key=lambda t: t.index
    )
    # no design point is tried twice
    design = [(t.n, t.lr, t.batch_size) for t in resumed.trials if t.stage == "prior"]
    assert len(design) == len(set(design))


def test_a_resumed_search_counts_the_time_its_stored_trials_took() -> None:
    finished: list[TrialRecord] = []
    with pytest.raises(Stopped):
        search_capacity(_spec(), on_trial=finished.append, should_stop=lambda: len(finished) >= 3)
    clocks = [t.search_seconds for t in finished]
    assert all(c is not None for c in clocks) and clocks == sorted(clocks)  # type: ignore[type-var]
    # as if the first attempt had run for the whole budget: nothing new may start
    spent = [t.model_copy(update={"search_seconds": 100.0}) for t in finished]
    rerun: list[TrialRecord] = []
    resumed = search_capacity(_spec(budget_seconds=100), completed=spent, on_trial=rerun.append)
    assert rerun == [] and resumed.trials == tuple(sorted(spent, key=lambda t: t.index))
    assert resumed.wall_seconds >= 100 and resumed.quality is not None
    assert resumed.quality.budget_used >= 1.0


def test_a_diverging_trial_counts_zero_and_the_search_goes_on() -> None:
    result = search_capacity(_spec(lr=(1e11, 1e13)))
    diverged = [t for t in result.trials if t.diverged]
    assert diverged and all(t.mutual_information_bits == 0.0 for t in diverged)
    assert len(result.trials) == 14  # every trial ran: divergence did not stop the search


def test_the_search_reaches_what_brute_force_over_n_reaches() -> None:
    result = search_capacity(_spec(budget_trials=40, batch=20))
    best = result.best
    # brute force: every N from 20 to 600 in steps of 20, at the best trial's settings
    spec = _spec()
    pool = make_dataset(spec.model, 600, derive_seed(spec.seed, "data"))
    train = TrainSpec(lr=best.lr, momentum=best.momentum, lr_decay=best.lr_decay,
                      batch_size=best.batch_size, epochs=150, patience=30)  # fmt: skip
    configs = [
        TrialConfig(n=n, train=train, init_seed=derive_seed(2, f"init-{i}"),
                    shuffle_seed=derive_seed(2, f"shuffle-{i}"))
        for i, n in enumerate(range(20, 601, 20))
    ]  # fmt: skip
    outcomes = train_trials(spec.model, pool, configs).outcomes
    brute = max(
        mutual_information(c.n, o.accuracy)
        for c, o in zip(configs, outcomes, strict=True)
        if o is not None
    )
    # one seed per N is noisy near capacity; the search's best is within 10% of it or above
    assert result.capacity_bits >= 0.9 * brute
    assert result.quality is not None and result.quality.bracketed


def test_a_budget_too_short_for_the_first_rung_is_refused() -> None:
    with pytest.raises(ValueError, match=r"search\.budget_seconds: .* use at least \d+ s"):
        search_capacity(_spec(budget_seconds=1e-6))


def test_quality_by_hand() -> None:
    def trial(index: int, n: int, accuracy: float, ended: str = "schedule") -> TrialRecord:
        return TrialRecord(index=index, stage="bayes", n=n, lr=0.1, momentum=0.9, lr_decay=0.3,
                           batch_size=8, seed=index, accuracy=accuracy,
                           mutual_information_bits=mutual_information(n, accuracy), epochs=9,
                           wall_seconds=1.0, device="cpu", diverged=False,
                           ended=ended)  # fmt: skip

    search = _spec(budget_seconds=100).search
    # I(100, 1.0) = 100 < I(200, 0.99) = 183.8 > I(300, 0.9) = 159.4: bracketed, finished
    tight = assess([trial(0, 100, 1.0), trial(1, 200, 0.99), trial(2, 300, 0.9)], search, 50, 200)
    assert tight.bracketed and tight.best_finished and tight.budget_used == 0.5
    assert tight.verdict.startswith("tight lower bound") and tight.trials == 3
    # the trial above the best was stopped at a rung: it does not bracket the maximum
    open_above = assess([trial(0, 100, 1.0), trial(1, 200, 0.99), trial(2, 300, 0.6, "rung")],
                        search, 100, 200)  # fmt: skip
    assert not open_above.bracketed
    assert "further above" in open_above.verdict and "--budget-seconds 200" in open_above.verdict
    # the best trial was cut by the deadline
    cut = assess([trial(0, 100, 1.0), trial(1, 200, 0.99, "deadline"), trial(2, 300, 0.9)],
                 search, 100, 200)  # fmt: skip
    assert cut.bracketed and not cut.best_finished and "stopped (deadline)" in cut.verdict


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"kind": "fcdnn", "width": 32}, round(2.3 * 1_122)),
        ({"kind": "lstm", "hidden": 32}, round(3.7 * 8_386)),
    ],
)
def test_the_prior_n_is_parameters_times_the_kinds_bits(
    model: dict[str, Any], expected: int
) -> None:
    assert prior_n(CapacitySpec.model_validate({"model": model})) == expected


def test_the_prior_n_of_a_cnn_counts_its_conv_layers_at_3_bits() -> None:
    spec = CapacitySpec.model_validate({"model": {"kind": "cnn", "kernel": 3}})
    counted = count_parameters(spec.model)
    conv = counted.count_layers("conv")
    assert prior_n(spec) == round(3.0 * conv + 2.3 * (counted.total - conv))


def test_batch_sizes_and_rates_default_by_kind_and_a_spec_s_own_are_kept() -> None:
    lstm = CapacitySpec.model_validate({"model": {"kind": "lstm", "hidden": 32}})
    assert lstm.batch_sizes == (256, 512) and lstm.lr_bounds == (0.04, 1.2)
    # the first rung is 24 epochs (an LSTM's) at the prior N and the largest batch, in steps
    assert first_rung(lstm) == 24 * -(-round(3.7 * 8_386) // 512)
    fcdnn = CapacitySpec.model_validate({"model": TINY})
    assert fcdnn.batch_sizes == (64, 128)
    assert first_rung(fcdnn) == 4 * -(-prior_n(fcdnn) // 128)  # 4 epochs for FCDNN
    # a CNN's is 12 epochs: CNN 3x3, prior N 1,307 (3 bits a conv weight, 2.3 the rest),
    # 11 steps an epoch at batch 128
    cnn = CapacitySpec.model_validate({"model": {"kind": "cnn", "kernel": 3, "channels": 4}})
    assert prior_n(cnn) == 1_307 and first_rung(cnn) == 12 * 11
    own = CapacitySpec.model_validate(
        {"model": {"kind": "lstm", "hidden": 32}, "search": {"batch_sizes": [128, 64, 128]}}
    )
    assert own.batch_sizes == (64, 128)


def test_a_trial_s_epoch_budget_defaults_by_kind_and_a_spec_s_own_is_kept() -> None:
    def first_trial_epochs(search: dict[str, Any], model: dict[str, Any] = TINY) -> int:
        spec = CapacitySpec.model_validate({"model": model, "search": search})
        plan = SearchPlan(spec, 4_000, torch.device("cpu"), (), None, None, None, 0.0)
        (config,) = plan.admit(1)  # the design's first point, at the prior N
        assert config.n == prior_n(spec) and config.train.epochs == spec.trial_epochs
        return config.train.epochs

    assert first_trial_epochs({}) == 3_000  # FCDNN: its best trials still climb at 1,500
    assert first_trial_epochs({}, {"kind": "lstm", "hidden": 4}) == 1_500
    assert first_trial_epochs({"epochs": 200}) == 200


def test_known_beyond_chance_by_hand() -> None:
    # N(2p - 1): 31,028 samples at 78% are 17,375.68 beyond the N/2 a guess gets
    assert known_beyond_chance(31_028, 0.78) == pytest.approx(17_375.68)
    assert known_beyond_chance(1_000, 0.5) == 0.0
    assert known_beyond_chance(1_000, 1.0) == 1_000.0
    # ... where I ranks the small, fast-learning trial first
    assert mutual_information(18_617, 0.92) > mutual_information(31_028, 0.78)
    assert known_beyond_chance(18_617, 0.92) < known_beyond_chance(31_028, 0.78)


def _stall_plan(model: dict[str, Any]) -> tuple[SearchPlan, int]:
    spec = CapacitySpec.model_validate({
        "model": model, "seed": 2,
        "search": {"budget_trials": 14, "batch": 2, "budget_seconds": 3_600},
    })  # fmt: skip
    plan = SearchPlan(spec, 4_000, torch.device("cpu"), (), None, None, None, 0.0)
    assert len(plan.admit(2)) == 2  # two design points at the prior N: one band
    return plan, first_rung(spec)


def test_a_cnn_trial_whose_accuracy_stalls_between_rungs_stops_from_rung_2() -> None:
    plan, rung = _stall_plan({"kind": "cnn", "kernel": 3, "channels": 2})
    # rungs 0 and 1: an unchanged accuracy is no reason to stop yet (a CNN sits near
    # chance for its first rungs)
    assert plan.keep(0, rung, 0.55) and plan.keep(0, 3 * rung, 0.55)
    assert plan.keep(1, rung, 0.60) and plan.keep(1, 3 * rung, 0.65)
    # rung 2: trial 0 holds the accuracy it had at rung 1, to the sample: it stops;
    # trial 1 gained and goes on; between rungs nothing is judged
    assert not plan.keep(0, 9 * rung, 0.55)
    assert plan.keep(1, 9 * rung - 1, 0.65) and plan.keep(1, 9 * rung, 0.70)
    # the stopped trial's record says which rung it reached
    plan.ended(0, TrainOutcome(accuracy=0.55, epochs=40, diverged=False, wall_seconds=1.0,
                               final_lr=0.01, ended="rung"))  # fmt: skip
    assert plan.records[-1].ended == "rung" and plan.records[-1].rung == 2


def test_a_stalled_trial_of_a_kind_without_the_rule_goes_on() -> None:
    plan, rung = _stall_plan(TINY)  # FCDNN: not measured, so not stopped for a stall
    assert plan.keep(0, 3 * rung, 0.55) and plan.keep(1, 3 * rung, 0.60)
    assert plan.keep(0, 9 * rung, 0.55)  # the first at rung 2, and no stall rule
